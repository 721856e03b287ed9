"""Helpers for the cube tests: small synthetic scenes, an odc-stac-free oracle, store comparison.

(No tests here; the ``test_`` prefix only keeps it among the cube test files.)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pyproj import Transformer

from pipelines.cubes import CubeSpec, CubeStore
from pipelines.registry import CollectionSpec, load_registry
from pipelines.testing import make_item
from pipelines.tiling import Tile, TileGrid

S2 = "sentinel-2-l2a"
LANDSAT = "landsat-c2-l2"
GRID = TileGrid(1920.0)  # 192 px at 10 m: small, fast tiles
X0, Y0 = 364 * 1920.0, 2596 * 1920.0  # EPSG:32631, about 6.4E 45N
SCENE = (X0, Y0, X0 + 3840.0, Y0 + 3840.0)  # exactly 2 x 2 tiles of GRID
TILE_IDS = [f"32631_{364 + i}_{2596 + j}" for i in range(2) for j in range(2)]


def spec(*collections: str, **kw: Any) -> CubeSpec:
    return CubeSpec(grid=kw.pop("grid", GRID), collections=collections or (S2,), **kw)


def s2_item(root: Path, item_id: str, **kw: Any) -> dict[str, Any]:
    kw.setdefault("bounds", SCENE)
    return make_item(root, item_id=item_id, **kw)


def registry_spec(collection: str = S2) -> CollectionSpec:
    return load_registry().collection(collection, "sample")


def oracle(
    item: Mapping[str, Any],
    collection: str,
    band: str,
    tile: Tile,
    gsd: float,
    rows: np.ndarray,
    cols: np.ndarray,
    cs: CollectionSpec | None = None,
    shift_m: tuple[float, float] = (0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Expected reflectance at output pixels (rows, cols) of a tile's GSD grid (moved by the group's
    ``lattice_shift_m``), from plain rasterio reads and the registry formulas (nearest neighbour, no odc-stac).

    Returns (values with NaN where masked/nodata/outside, ambiguous) where ``ambiguous`` marks pixels
    whose centre falls within 0.01 source pixel of a source pixel edge (nearest is a coin toss there).
    """
    import rasterio

    cs = cs or registry_spec(collection)
    gbox = tile.geobox(gsd, shift_m)
    t = gbox.transform
    x = t.c + (cols + 0.5) * t.a
    y = t.f + (rows + 0.5) * t.e
    props = item.get("properties") or {}

    def sample(href: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with rasterio.open(href) as src:
            tr = Transformer.from_crs(tile.crs, src.crs, always_xy=True)
            sx, sy = tr.transform(x, y)
            fc, fr = ~src.transform @ (np.asarray(sx), np.asarray(sy))
            fc, fr = np.asarray(fc), np.asarray(fr)
            c, r = np.floor(fc).astype(int), np.floor(fr).astype(int)
            amb = (np.abs(fc - np.rint(fc)) < 0.01) | (np.abs(fr - np.rint(fr)) < 0.01)
            inside = (c >= 0) & (r >= 0) & (c < src.width) & (r < src.height)
            data = src.read(1)
            vals = np.zeros(len(x), dtype=np.float64)
            vals[inside] = data[r[inside], c[inside]]
            return vals, inside, amb

    dn, inside, amb = sample(str(item["assets"][cs.assets[band]]["href"]))
    qa_asset = cs.mask.per_band_assets.get(band) or cs.mask.asset
    qa, qa_inside, qa_amb = sample(str(item["assets"][qa_asset]["href"]))
    refl = cs.to_reflectance(dn.astype(np.float64), props).astype(np.float64)
    bad = ~inside | ~qa_inside | cs.mask.invalid(qa.astype(np.int64))
    if cs.nodata is not None:
        bad |= dn == cs.nodata
    refl[bad] = np.nan
    return refl, amb | qa_amb


def assert_matches_oracle(
    cube_values: np.ndarray,
    expected: np.ndarray,
    ambiguous: np.ndarray,
    *,
    atol: float = 1.01e-4,
    min_fraction: float = 1.0,
) -> None:
    ok = ~ambiguous
    assert ok.sum() > 0
    both_nan = np.isnan(cube_values) & np.isnan(expected)
    close = np.isclose(cube_values, expected, atol=atol, rtol=0, equal_nan=False)
    agree = (both_nan | close)[ok]
    frac = agree.mean()
    assert frac >= min_fraction, (
        f"only {frac:.4f} of {ok.sum()} pixels agree with the oracle; e.g. cube "
        f"{cube_values[ok][~agree][:5]} vs oracle {expected[ok][~agree][:5]}"
    )


def strict_json(path: Path) -> Any:
    def no_constants(name: str) -> Any:
        raise ValueError(f"{path}: bare {name} is not JSON")

    return json.loads(path.read_text(), parse_constant=no_constants)


def all_metadata(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.json"))


def assert_stores_equal(a: CubeStore, b: CubeStore, tiles: list[str] | None = None) -> None:
    """Same complete tiles (all, or ``tiles`` in both), same groups, identical arrays and coordinates."""
    if tiles is None:
        got, want = a.recorded_tiles(), b.recorded_tiles()
        only_a, only_b = sorted(set(got) - set(want)), sorted(set(want) - set(got))
        assert got == want, f"recorded tiles differ: only in {a}: {only_a}, only in {b}: {only_b}"
        tiles = got
    else:
        assert set(tiles) <= set(a.recorded_tiles()) and set(tiles) <= set(b.recorded_tiles())
    for tile_id in tiles:
        ra, rb = a.record(tile_id), b.record(tile_id)
        for key in ("status", "groups", "items", "skipped", "dropped_groups"):
            assert ra[key] == rb[key], (tile_id, key)
        ta, tb = a.open_tile(tile_id, decode=False), b.open_tile(tile_id, decode=False)
        assert ta.keys() == tb.keys()
        for group_key in ta:
            da_, db_ = ta[group_key].load(), tb[group_key].load()
            for name in da_.variables:
                np.testing.assert_array_equal(
                    np.asarray(da_[name].values),
                    np.asarray(db_[name].values),
                    err_msg=f"{tile_id} {group_key} {name}",
                )
            assert da_.attrs == db_.attrs
