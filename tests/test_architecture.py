"""Structural rules of the code base, checked from the code's own imports and files.

The import graph is read from the source with :mod:`ast`, not by importing it: every ``import`` and
``from ... import`` statement counts, at module level and inside functions alike (a function-local
import is still a dependency, it only runs later), and so does ``importlib.import_module("<literal>")``.
An edge goes from a module to each project module it names; ``from pkg import name`` names
``pkg.name`` when that is a module and ``pkg`` (its ``__init__``) in any case. A module importing
the ``__init__`` of a package it lives in is not an edge: that ``__init__`` has already run.

Each rule is its own test function, built on the shared :func:`import_graph` helper; add new rules
the same way.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PACKAGES = ("pipelines", "aom_model", "flows")
"""The project's top-level packages (what the rules below cover)."""
MAX_FLAT_PIPELINES_MODULES = 10
"""Modules directly in ``pipelines/`` (not counting ``__init__``): the rest live in role subpackages."""
MAX_SOURCE_LINES = 600
"""Lines of any source file in the project's packages: split a larger one by concern."""


# ------------------------------------------------------------------------------------------
# Shared helper: the project's import graph


@dataclass(frozen=True)
class ImportGraph:
    """The project's modules and which project modules each one imports."""

    files: dict[str, Path]
    """Dotted module name -> source file (a package is its ``__init__.py``)."""
    imported_names: dict[str, frozenset[str]]
    """Module -> every dotted name its import statements name, project or not (``from a.b import c``
    gives ``a.b`` and ``a.b.c``; relative imports are made absolute)."""
    edges: dict[str, frozenset[str]]
    """Module -> the project modules it depends on (see the module docstring for the rules)."""

    def is_package(self, module: str) -> bool:
        return self.files[module].name == "__init__.py"

    def resolve(self, name: str) -> str | None:
        """The project module a dotted name lives in (the longest module prefix), or None."""
        while name:
            if name in self.files:
                return name
            name = name.rpartition(".")[0]
        return None


def module_name(path: Path, root: Path = REPO_ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def source_files(root: Path = REPO_ROOT) -> list[Path]:
    """Every ``.py`` file of the project's packages, sorted."""
    return sorted(p for pkg in PACKAGES for p in (root / pkg).rglob("*.py") if "__pycache__" not in p.parts)


def _imported_names(module: str, path: Path, is_package: bool) -> Iterator[str]:
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "import_module")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and not node.args[0].value.startswith(".")
        ):
            yield node.args[0].value


@cache
def import_graph(root: Path = REPO_ROOT) -> ImportGraph:
    """The import graph of the checkout at ``root`` (read once per test run)."""
    files = {module_name(p, root): p for p in source_files(root)}
    names = {m: frozenset(_imported_names(m, p, p.name == "__init__.py")) for m, p in files.items()}
    graph = ImportGraph(files=files, imported_names=names, edges={})
    edges: dict[str, frozenset[str]] = {}
    for m, imported in names.items():
        targets = set()
        for name in imported:
            r = graph.resolve(name)
            if r is None or r == m:
                continue
            if graph.is_package(r) and m.startswith(r + "."):
                continue  # the package's own __init__ has already run
            targets.add(r)
        edges[m] = frozenset(targets)
    return ImportGraph(files=files, imported_names=names, edges=edges)


def import_circles(edges: dict[str, frozenset[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm, iterative), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    circles: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                group = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    group.append(w)
                    if w == v:
                        break
                if len(group) > 1:
                    circles.append(sorted(group))
    return sorted(circles)


def _cycle_path(group: list[str], edges: dict[str, frozenset[str]]) -> list[str]:
    """One shortest cycle through the group's first module (for the failure message)."""
    members, start = set(group), group[0]
    parent: dict[str, str] = {}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(edges[v] & members):
            if w == start:  # back at the start: walk the parents from v
                path = [v]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if w not in parent:
                parent[w] = v
                queue.append(w)
    return group


# ------------------------------------------------------------------------------------------
# The helper itself, on a small synthetic tree


def test_import_graph_reads_local_relative_and_literal_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pipelines"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "leaf.py").write_text("import os\n")
    (pkg / "sub" / "__init__.py").write_text("from pipelines.sub.a import A\n__all__ = ['A']\n")
    (pkg / "sub" / "a.py").write_text(
        "from . import b\nfrom pipelines.sub import helper_name\n"
        "def f():\n    from ..leaf import os\n    return os\nA = 1\n"
    )
    (pkg / "sub" / "b.py").write_text(
        "import importlib\ndef g():\n    return importlib.import_module('pipelines.sub.a')\n"
    )
    for other in PACKAGES[1:]:
        (tmp_path / other).mkdir()
        (tmp_path / other / "__init__.py").write_text("")
    graph = import_graph(tmp_path)
    assert graph.edges["pipelines.sub.a"] == {"pipelines.sub.b", "pipelines.leaf"}  # own __init__ skipped
    assert graph.edges["pipelines.sub.b"] == {"pipelines.sub.a"}  # function-local, by literal name
    assert graph.edges["pipelines.sub"] == {"pipelines.sub.a"}
    assert "os" in graph.imported_names["pipelines.leaf"]
    assert import_circles(graph.edges) == [["pipelines.sub.a", "pipelines.sub.b"]]
    assert _cycle_path(["pipelines.sub.a", "pipelines.sub.b"], graph.edges) == [
        "pipelines.sub.a",
        "pipelines.sub.b",
        "pipelines.sub.a",
    ]


# ------------------------------------------------------------------------------------------
# Rules


def test_no_import_circle() -> None:
    edges = import_graph().edges
    circles = import_circles(edges)
    assert not circles, (
        "import circles (function-local imports included); break each by moving the shared code into "
        "a module both sides import, or by passing it in:\n"
        + "\n".join(" -> ".join(_cycle_path(group, edges)) for group in circles)
    )


def test_pipelines_has_at_most_ten_flat_modules() -> None:
    flat = sorted(p.name for p in (REPO_ROOT / "pipelines").glob("*.py") if p.name != "__init__.py")
    assert len(flat) <= MAX_FLAT_PIPELINES_MODULES, (
        f"pipelines/ holds {len(flat)} modules directly ({', '.join(flat)}); at most "
        f"{MAX_FLAT_PIPELINES_MODULES}: put new code in the role subpackage it belongs to"
    )


def test_no_source_file_over_600_lines() -> None:
    sizes = {p: len(p.read_text(encoding="utf-8").splitlines()) for p in source_files()}
    big = [f"{p.relative_to(REPO_ROOT)}: {n} lines" for p, n in sorted(sizes.items()) if n > MAX_SOURCE_LINES]
    assert not big, f"source files over {MAX_SOURCE_LINES} lines; split each by concern:\n" + "\n".join(big)


def _package_inits() -> list[str]:
    return sorted(m for m, p in import_graph().files.items() if p.name == "__init__.py")


def _declared_all(path: Path) -> list[str] | None:
    """The names of a module-level ``__all__ = [...]``/``(...)`` of string literals, else None."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        value: ast.expr | None  # None: an annotation without a value
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id == "__all__":
            if isinstance(value, ast.List | ast.Tuple):
                names = [
                    e.value for e in value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)
                ]
                if len(names) == len(value.elts):
                    return names
            return []  # computed (e.g. sorted(_EXPORTS)): checked on the imported module
    return None


@pytest.mark.parametrize("package", _package_inits())
def test_package_init_defines_all_and_every_name_resolves(package: str) -> None:
    path = import_graph().files[package]
    declared = _declared_all(path)
    assert declared is not None, (
        f"{path.relative_to(REPO_ROOT)} defines no __all__: list the package's public names "
        "(an empty list when it re-exports nothing)"
    )
    module = importlib.import_module(package)
    names = list(module.__all__)
    assert len(names) == len(set(names)), f"{package}.__all__ lists a name twice"
    missing = []
    for name in names:
        if hasattr(module, name):  # eager, or loaded by the package's __getattr__
            continue
        try:
            importlib.import_module(f"{package}.{name}")  # a submodule, as `from package import *` does
        except ModuleNotFoundError:
            missing.append(name)
    assert not missing, f"{package}.__all__ names what the package does not define: {missing}"


# ------------------------------------------------------------------------------------------
# Dependency rules between packages


def _pipelines_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``pipelines`` module a file imports, module level and inside functions
    alike; ``from pipelines import x`` counts as importing ``pipelines.x``."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "pipelines"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "pipelines":
                out += [(node.lineno, f"pipelines.{a.name}") for a in node.names]
            elif node.module.split(".")[0] == "pipelines":
                out.append((node.lineno, node.module))
    return out


def test_aom_model_imports_only_storage_and_errors_from_pipelines() -> None:
    """``aom_model`` (the model and its training) may import from ``pipelines`` only ``pipelines.storage``
    and ``pipelines.errors``: cube stores reach training through the protocols of
    ``aom_model.train.cube_reader``, composed with ``pipelines.cubes.CubeStore`` in ``pipelines.pretrain``."""
    allowed = ("pipelines.storage", "pipelines.errors")
    files = sorted((REPO_ROOT / "aom_model").rglob("*.py"))
    assert len(files) > 10
    bad = [
        f"{path.relative_to(REPO_ROOT)}:{line}: imports {module}"
        for path in files
        for line, module in _pipelines_imports(path)
        if not any(module == a or module.startswith(a + ".") for a in allowed)
    ]
    assert not bad, "aom_model may import only pipelines.storage and pipelines.errors:\n" + "\n".join(bad)
    # the scan sees imports: the allowed ones are found where they are used
    assert "pipelines.errors" in {
        m for _, m in _pipelines_imports(REPO_ROOT / "aom_model/train/cube_reader.py")
    }


# ------------------------------------------------------------------------------------------
# One source per concept


def test_band_tables_only_in_registry() -> None:
    """Band identities (centre wavelengths) come only from ``pipelines/data/sensors.yaml``.

    Scans the Python source of pipelines/, aom_model/, flows/ and benchmarks/ for what a copied band
    table looks like: a literal sequence of 3+ numbers that are all wavelengths (350-2600 nm) and
    span more than one narrow region, a row pairing a band name with a wavelength (``("B02", 492.4,
    ...)``, ``{"B02": 492.4}``), or a literal ``center_wavelength_nm=`` / ``wavelength_nm=`` argument.
    Tests may keep small literal wavelengths for unit tests of the model; they are not scanned.
    """
    root = Path(__file__).resolve().parents[1]
    lo, hi, min_span = 350.0, 2600.0, 150.0
    band_name = re.compile(r"^(B\d{1,2}A?|b\d{1,2}|coastal|blue|green|red|rededge\d?|nir\d*|swir\d*|cirrus)$")
    # Sampling wavelengths of ground-truth reflectance spectra (the synthetic scenes' spectral
    # libraries): every band, of any sensor, integrates these spectra; they identify no band.
    allowed = {
        ("pipelines/samples/landcover.py", "_KNOTS_NM"),
        ("pipelines/samples/landcover.py", "CLOUD_SPECTRUM"),
        ("pipelines/testing/cubes.py", "_ANCHORS"),
        ("pipelines/evaluation/datasets.py", "_CLASS_SPECTRA_NM"),
    }

    def number(node: ast.AST) -> float | None:
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            value = number(node.operand)
            return None if value is None else -value
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, int | float)
            and not isinstance(node.value, bool)
        ):
            return float(node.value)
        return None

    def wavelength(node: ast.AST) -> bool:
        value = number(node)
        return value is not None and lo <= value <= hi

    def named(node: ast.AST) -> bool:
        return (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and bool(band_name.match(node.value))
        )

    def findings(source: str) -> list[tuple[int, str | None, str]]:
        """(line, name assigned to, what) for every band-table-like literal in ``source``."""
        tree = ast.parse(source)
        owner: dict[ast.AST, str | None] = {}
        for stmt in ast.walk(tree):
            if isinstance(stmt, ast.Assign | ast.AnnAssign):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                name = next((t.id for t in targets if isinstance(t, ast.Name)), None)
                for sub in ast.walk(stmt):
                    owner.setdefault(sub, name)
        out = []
        for node in ast.walk(tree):
            what = None
            if isinstance(node, ast.List | ast.Tuple | ast.Set):
                nums = [v for v in map(number, node.elts) if v is not None]
                if len(nums) >= 3 and all(lo <= v <= hi for v in nums) and max(nums) - min(nums) >= min_span:
                    what = f"{len(nums)} wavelengths"
                elif any(map(named, node.elts)) and any(map(wavelength, node.elts)):
                    what = "a band-name / wavelength row"
            elif isinstance(node, ast.Dict) and any(
                k is not None and named(k) and wavelength(v) for k, v in zip(node.keys, node.values)
            ):
                what = "a band-name -> wavelength mapping"
            elif isinstance(node, ast.Call) and any(
                k.arg in ("center_wavelength_nm", "wavelength_nm") and wavelength(k.value)
                for k in node.keywords
            ):
                what = "a literal band wavelength argument"
            if what:
                out.append((getattr(node, "lineno", 0), owner.get(node), what))
        return out

    # the detector itself: each of these is a copied band table
    for snippet in (
        "S2_WL = [443.0, 490.0, 560.0, 665.0]",
        'BANDS = (("B02", 492.4, 66.0, 10.0),)',
        'WL = {"B02": 492.4, "B03": 559.8}',
        'b = BandSpec(name="B02", sensor="s", center_wavelength_nm=492.4, fwhm_nm=66.0, gsd_m=10.0)',
        "x = np.array([1613.7, 2202.4, 945.1])",
    ):
        assert findings(snippet), f"the scan misses {snippet!r}"
    for snippet in ("RETRY = (408, 425, 429, 500, 502, 503, 504)", "WINDOW = (926, 0, 904, 1830)"):
        assert not findings(snippet), f"the scan flags {snippet!r}"

    problems, seen = [], set()
    for pkg in ("pipelines", "aom_model", "flows", "benchmarks"):
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            for line, name, what in findings(path.read_text(encoding="utf-8")):
                if (rel, name) in allowed:
                    seen.add((rel, name))
                    continue
                problems.append(f"{rel}:{line}: {what}" + (f" in {name}" if name else ""))
    assert not problems, (
        "band identities copied outside the sensor registry; read them from pipelines/data/sensors.yaml "
        "(pipelines.registry.load_registry().sensor(...).bands) or pass them in as arguments:\n  "
        + "\n  ".join(problems)
    )
    assert seen == allowed, f"allow-list entries that no longer exist (remove them): {sorted(allowed - seen)}"
