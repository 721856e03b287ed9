"""``benchmarks/eval_scene_29rkh.py``: the held-out 29RKH GeoTIFF for ``aom eval`` keeps no labelled
and no valid pixel inside a cube tile the shipped checkpoint was pretrained on, and nothing else is lost."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import shapely
from affine import Affine

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from eval_scene_29rkh import BANDS, PRETRAIN_TILES, SCENE_DIR, build, trained_tile_mask


def test_mask_is_positive_area_intersection() -> None:
    """Against a per-pixel shapely oracle; pixel edges that only touch a tile edge do not count."""
    from pipelines.tiling import TileGrid

    tiles = ["32629_26_350", "32629_27_351"]
    for x0, y0, res in ((199980.0, 2704020.0, 600.0), (199680.0 - 1200.0, 2703360.0 + 1200.0, 600.0)):
        transform = Affine(res, 0.0, x0, 0.0, -res, y0)
        shape = (30, 32)
        got = trained_tile_mask(transform, shape, 32629, tiles)
        polys = [shapely.box(*TileGrid().tile(t).bounds) for t in tiles]
        want = np.zeros(shape, dtype=bool)
        for r in range(shape[0]):
            for c in range(shape[1]):
                px = shapely.box(x0 + c * res, y0 - (r + 1) * res, x0 + (c + 1) * res, y0 - r * res)
                want[r, c] = any(px.intersection(p).area > 0 for p in polys)
        assert want.any() and (~want).any()
        np.testing.assert_array_equal(got, want)
    # another zone's tile never masks this grid
    assert not trained_tile_mask(
        Affine(600.0, 0, 199980.0, 0, -600.0, 2704020.0), (5, 5), 32629, ["32630_26_350"]
    ).any()


def test_real_scene_has_nothing_trained(real_data: Path, tmp_path: Path) -> None:
    import rasterio
    from rasterio.features import rasterize

    from pipelines.tiling import TileGrid

    tiles = [t for t in PRETRAIN_TILES.read_text().strip().split(",") if t]
    res = build(real_data, tmp_path / "full", tiles)
    src = real_data / SCENE_DIR
    with rasterio.open(tmp_path / "full" / "scl.tif") as ds:
        labels, transform, shape = ds.read(1), ds.transform, ds.shape
    with rasterio.open(tmp_path / "full" / "scene.tif") as ds:
        stack = ds.read()  # [11, H, W]
    with rasterio.open(src / "SCL.tif") as ds:
        scl = ds.read(1)
    with rasterio.open(src / "B05.tif") as ds:
        b05 = ds.read(1)
    with rasterio.open(src / "B02.tif") as ds:
        b02 = ds.read(1).astype(np.float64)
    # independent oracle: rasterised tile polygons (no tile edge coincides with a 200 m pixel edge here)
    polys = [shapely.box(*TileGrid().tile(t).bounds) for t in tiles]
    inside = rasterize(
        ((p, 1) for p in polys), out_shape=shape, transform=transform, all_touched=True
    ).astype(bool)
    hit = [
        p for p in polys if rasterize([(p, 1)], out_shape=shape, transform=transform, all_touched=True).any()
    ]
    assert len(hit) == res["trained_tiles_in_scene"] == 40
    assert inside.sum() == res["px_in_trained_tiles"] > 0
    assert not (labels[inside] > 0).any() and res["labelled_px_in_trained_tiles"] == 0
    assert not np.isfinite(stack[:, inside]).any()
    # outside the trained tiles the labels are SCL and the 20 m bands are DN / 10000, untouched
    np.testing.assert_array_equal(labels[~inside], scl[~inside])
    b = BANDS.index("B05")
    keep = ~inside & (b05 > 0)
    np.testing.assert_allclose(stack[b][keep], b05[keep] / 10000.0, rtol=1e-6)
    # 10 m bands (100 m here) are 2 x 2 means
    mean2 = b02.reshape(shape[0], 2, shape[1], 2).mean(axis=(1, 3)) / 10000.0
    ok = np.isfinite(stack[BANDS.index("B02")])
    assert ok.sum() > 0.7 * shape[0] * shape[1]
    np.testing.assert_allclose(stack[BANDS.index("B02")][ok], mean2[ok], rtol=1e-5)
    # a window is the same crop of the full build
    res_w = build(real_data, tmp_path / "win", tiles, window=(100, 50, 64, 96))
    with rasterio.open(tmp_path / "win" / "scene.tif") as ds:
        np.testing.assert_array_equal(ds.read(), stack[:, 100:164, 50:146])
        assert ds.transform == transform @ Affine.translation(50, 100)
    assert res_w["labelled_px_in_trained_tiles"] == 0
    with pytest.raises(ValueError, match="outside"):
        build(real_data, tmp_path / "bad", tiles, window=(500, 0, 100, 10))
