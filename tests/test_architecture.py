"""Architecture rules checked on the source tree."""

from __future__ import annotations

import ast
import re
from pathlib import Path


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
