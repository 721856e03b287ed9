"""Cube output follows the registry: reflectance conversion and quality masking are implemented once,
in ``pipelines.registry`` (``CollectionSpec.conversion`` / ``ReflectanceConversion``, ``MaskRule.invalid``),
and cube assembly uses them, so a changed rule (a registry overlay) or a fixed implementation changes
the cubes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from pipelines.cubes import assemble_tile
from pipelines.registry import BUILTIN_REGISTRY, MaskRule, ReflectanceConversion
from tests.pipelines.cubes.support import GRID, S2, TILE_IDS, oracle, s2_item, spec


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A: baseline 02.14 with a cloud box (SCL 9); B: baseline 05.00 (DNs carry the +1000 BOA offset)."""
    root = tmp_path_factory.mktemp("rules")
    a = s2_item(root, "A", cloud_boxes=[(0.1, 0.55, 0.4, 0.9)])
    b = s2_item(
        root, "B", datetime="2023-06-11T10:30:00Z", properties={"s2:processing_baseline": "05.00"}, seed=1
    )
    return {"A": a, "B": b}


def _reflectance(items: dict[str, Any], **kw: Any) -> np.ndarray:
    """[time, band, y, x] decoded 10 m reflectance of the upper-left tile (it has A's cloud box)."""
    cube = assemble_tile(GRID.tile(TILE_IDS[1]), [items["A"], items["B"]], spec(**kw))
    return np.asarray(cube[(S2, "10m")]["reflectance"].values)


def _overlay(tmp_path: Path) -> Path:
    """The sample catalog's Sentinel-2 entry with two rules changed: the BOA offset only from baseline
    06.00 (so B's DNs are no longer corrected) and SCL 9 (cloud, high probability) no longer invalid."""
    builtin = yaml.safe_load(BUILTIN_REGISTRY.read_text())
    (entry,) = [dict(c) for c in builtin["collections"] if c["catalog"] == "sample" and c["collection"] == S2]
    entry["dn_offset_rules"] = [
        {
            "offset_dn": -1000,
            "when": {"property": "s2:processing_baseline", "version_gte": "06.00"},
            "unless": {"property": "earthsearch:boa_offset_applied", "equals": True},
        }
    ]
    entry["mask"] = {**entry["mask"], "invalid_values": [0, 1, 3, 8, 10]}
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump({"collections": [entry]}))
    return path


def test_cube_output_follows_a_registry_overlay(items: dict[str, Any], tmp_path: Path) -> None:
    overlay = _overlay(tmp_path)
    base = _reflectance(items)
    over = _reflectance(items, registry_files=(str(overlay),))
    assert base.shape == over.shape and base.shape[0] == 2
    # B (baseline 05.00): without the -1000 DN rule every pixel reads 1000 DN = 0.1 brighter
    b0, b1 = base[1], over[1]
    assert np.isfinite(b0).all() and np.isfinite(b1).all()
    np.testing.assert_allclose(b1 - b0, 0.1, atol=1e-6)
    # A: the cloud box (SCL 9) is valid under the overlay's mask rule, masked under the built-in one
    a0, a1 = base[0], over[0]
    cloud = np.isnan(a0) & np.isfinite(a1)
    assert cloud.mean() > 0.05
    assert not (np.isfinite(a0) & np.isnan(a1)).any()
    np.testing.assert_array_equal(a1[np.isfinite(a0)], a0[np.isfinite(a0)])
    # and the overlay's cube agrees with the oracle built from the overlay's own registry entry
    tile = GRID.tile(TILE_IDS[1])
    cs = spec(registry_files=(str(overlay),)).collection_spec(S2)
    rows, cols = np.meshgrid(np.arange(192), np.arange(192), indexing="ij")
    exp, amb = oracle(items["B"], S2, "B04", tile, 10.0, rows.ravel(), cols.ravel(), cs=cs)
    ok = ~amb
    np.testing.assert_allclose(b1[2].ravel()[ok], exp[ok], atol=1.01e-4)


@pytest.mark.parametrize("encoding", ["int16", "float16"])
def test_assembly_calls_the_registry_conversion_and_mask(
    items: dict[str, Any], encoding: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change to the registry's implementation (not only to its data) reaches the cubes."""
    base = _reflectance(items, encoding=encoding)
    calls = {"conversion": 0, "mask": 0}
    quantised, reflectance, invalid = (
        ReflectanceConversion.quantised,
        ReflectanceConversion.reflectance,
        MaskRule.invalid,
    )

    def shifted_quanta(self: ReflectanceConversion, dn: np.ndarray, quantum: float) -> np.ndarray:
        calls["conversion"] += 1
        return quantised(self, dn, quantum) + round(0.0125 / quantum)

    def shifted_reflectance(self: ReflectanceConversion, dn: np.ndarray) -> np.ndarray:
        calls["conversion"] += 1
        return reflectance(self, dn) + np.float32(0.0125)

    def left_edge_invalid(self: MaskRule, qa: np.ndarray) -> np.ndarray:
        calls["mask"] += 1
        out = np.array(invalid(self, qa))
        out[..., :8] = True  # the first 8 columns of every block
        return out

    monkeypatch.setattr(ReflectanceConversion, "quantised", shifted_quanta)
    monkeypatch.setattr(ReflectanceConversion, "reflectance", shifted_reflectance)
    monkeypatch.setattr(MaskRule, "invalid", left_edge_invalid)
    got = _reflectance(items, encoding=encoding)
    assert calls["conversion"] > 0 and calls["mask"] > 0
    assert np.isnan(got[..., :8]).all()
    both = np.isfinite(base[..., 8:]) & np.isfinite(got[..., 8:])
    assert both.mean() > 0.5 and (np.isfinite(got[..., 8:]) == np.isfinite(base[..., 8:])).all()
    atol = 1e-6 if encoding == "int16" else 1e-3  # float16 rounds the shifted value again
    np.testing.assert_allclose(got[..., 8:][both] - base[..., 8:][both], 0.0125, atol=atol)
