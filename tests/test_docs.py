"""The Python snippets of the docs run as written: their imports resolve, the names they call are
imported, and their calls of library functions bind to the functions' signatures.

Checked statically (``ast``): the snippets name example stores and buckets, so they are not
executed; what a scientist copies must at least import and call the functions the way they take it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]


def python_blocks(path: Path) -> list[ast.Module]:
    return [ast.parse(m.group(1)) for m in re.finditer(r"```python\n(.*?)```", path.read_text(), re.S)]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_import_of_a_docs_snippet_resolves(path: Path) -> None:
    failed = []
    for tree in python_blocks(path):
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                try:
                    mod = importlib.import_module(node.module)
                except ImportError as exc:
                    failed.append(f"{ast.unparse(node)}: {exc}")
                    continue
                failed += [
                    f"{node.module}.{a.name} does not exist" for a in node.names if not hasattr(mod, a.name)
                ]
            elif isinstance(node, ast.Import):
                for a in node.names:
                    try:
                        importlib.import_module(a.name)
                    except ImportError as exc:
                        failed.append(f"import {a.name}: {exc}")
    assert not failed, failed


def _query_calls(path: Path) -> tuple[set[str], list[ast.Call]]:
    """(names docs/query.md imports from pipelines.query, its calls of pipelines.query functions)."""
    import pipelines.query as q

    imported: set[str] = set()
    calls: list[ast.Call] = []
    for tree in python_blocks(path):
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "pipelines.query":
                imported |= {a.asname or a.name for a in node.names}
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in q.__all__:
                calls.append(node)
    return imported, calls


def test_query_doc_imports_every_function_its_snippets_call() -> None:
    imported, calls = _query_calls(ROOT / "docs" / "query.md")
    missing = sorted({c.func.id for c in calls if isinstance(c.func, ast.Name)} - imported)
    assert not missing, f"docs/query.md calls {missing} without importing them"


def test_query_doc_calls_bind_to_the_functions_signatures() -> None:
    import pipelines.query as q

    _, calls = _query_calls(ROOT / "docs" / "query.md")
    assert calls
    wrong = []
    for call in calls:
        assert isinstance(call.func, ast.Name)
        sig = inspect.signature(getattr(q, call.func.id))
        args = [None] * len(call.args)
        kwargs = {k.arg: None for k in call.keywords if k.arg}
        try:
            sig.bind(*args, **kwargs)
        except TypeError as exc:
            wrong.append(f"{ast.unparse(call)}: {exc}")
    assert not wrong, wrong


def test_the_docs_give_the_stores_array_dimensions(tmp_path: Path) -> None:
    """docs/embedding.md and docs/embeddings.md name each array's dims as a new store has them."""
    import zarr

    from pipelines.embeddings import create_version, ensure_zone, zarr_store
    from pipelines.embeddings.tilevectors import ensure_tile_group
    from pipelines.testing import synthetic_version

    root = str(tmp_path / "store")
    version = synthetic_version()
    create_version(root, version)
    ensure_zone(root, version.name, 32631)
    ensure_tile_group(root, version.name, 32631, None)
    group = zarr.open_group(store=zarr_store(root, read_only=True), mode="r")
    zone: Any = group[f"{version.name}/32631"]
    actual = {
        "embeddings": tuple(zone["embeddings"].metadata.dimension_names),
        "pooled": tuple(zone["pooled"].metadata.dimension_names),
        "vectors": tuple(zone["tiles/vectors"].metadata.dimension_names),
    }
    for doc, heading in (("embedding.md", "## Output layout"), ("embeddings.md", "## Layout")):
        section = (ROOT / "docs" / doc).read_text().split(heading, 1)[1].split("\n## ", 1)[0]
        for name, dims in actual.items():
            m = re.search(rf"`?{name}`?\s+\(((?:time|dim)\b[^)]*)\)", section)
            if m is None:
                assert name == "vectors", f"docs/{doc} {heading!r} does not name {name}'s dims"
                continue
            documented = tuple(d.strip() for d in m.group(1).split(","))
            assert documented == dims, f"docs/{doc} gives {name} as {documented}, the store has {dims}"


def test_the_docs_name_every_non_zarr_folder_at_a_stores_root(tmp_path: Path) -> None:
    """open_datatree warns once for each folder at the root that is not a Zarr node: docs/embeddings.md
    names them all, ``aom publish``'s ``published/`` included."""
    from pipelines.embeddings import publish_cogs
    from pipelines.testing import build_synthetic_store

    synth = build_synthetic_store(str(tmp_path / "store"), bbox=(5.93, 44.99, 5.95, 45.0))
    publish_cogs(synth.root_url, synth.version.name)
    folders = {
        p.name for p in Path(synth.root_url).iterdir() if p.is_dir() and not (p / "zarr.json").exists()
    }
    assert "published" in folders
    text = (ROOT / "docs" / "embeddings.md").read_text()
    paragraph = text.split("**Non-Zarr folders at the root.**", 1)[1].split("\n\n", 1)[0]
    missing = sorted(f for f in folders if f"`{f}/`" not in paragraph)
    assert not missing, f"docs/embeddings.md does not name {missing} among the non-Zarr folders"


def test_every_import_in_a_docstring_example_resolves() -> None:
    """``from pipelines... import ...`` lines of the packages' docstring examples name real modules."""
    failed = []
    for pkg in ("pipelines", "flows", "aom_model"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                doc = ast.get_docstring(node) or ""
                for m in re.finditer(
                    r"^\s*from ((?:pipelines|flows|aom_model)[\w.]*) import ([\w, ]+)$", doc, re.M
                ):
                    try:
                        mod = importlib.import_module(m.group(1))
                    except ImportError as exc:
                        failed.append(f"{path.relative_to(ROOT)}: {m.group(0).strip()}: {exc}")
                        continue
                    names = [n.strip() for n in m.group(2).split(",") if n.strip()]
                    failed += [
                        f"{path.relative_to(ROOT)}: {m.group(1)}.{n}" for n in names if not hasattr(mod, n)
                    ]
    assert not failed, failed


def test_the_docs_give_the_error_the_installed_gdal_reports_for_the_stores_arrays(tmp_path: Path) -> None:
    """docs/embeddings.md ("Opening with other tools") names what GDAL says where it cannot read the
    store's Zarr arrays: rasterio 1.4's GDAL 3.10 reads none of them (``Unsupported codec: bytes``),
    which the page did not say (it gave ``sharding_indexed`` for every GDAL before 3.13)."""
    import rasterio

    from pipelines.testing import build_synthetic_store

    synth = build_synthetic_store(str(tmp_path / "store"), bbox=(5.93, 44.99, 5.95, 45.0), stac=False)
    zone = synth.tiles[0].epsg
    text = (ROOT / "docs" / "embeddings.md").read_text().split("**Opening with other tools.**", 1)[1]
    for array in ("embeddings", "tiles/vectors"):
        try:
            with rasterio.open(f'ZARR:"{synth.root_url}":/{synth.version.name}/{zone}/{array}') as src:
                assert src.crs is not None and src.crs.to_epsg() == zone
        except rasterio.errors.RasterioIOError as exc:
            found = re.search(r"Unsupported codec: \w+", str(exc))
            assert found, str(exc)
            assert f"`{found.group(0)}`" in text, (
                f"GDAL {rasterio.__gdal_version__}: {found.group(0)} ({array})"
            )
