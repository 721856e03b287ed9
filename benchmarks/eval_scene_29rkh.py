"""Build the held-out 29RKH evaluation GeoTIFF for ``aom eval`` (issue 14: "one labelled GeoTIFF").

Usage::

    .venv/bin/python benchmarks/eval_scene_29rkh.py --out .aom/29rkh     # scene.tif + scl.tif
    aom eval --dataset .aom/29rkh/scene.tif --labels .aom/29rkh/scl.tif \\
        --registry checkpoints/registry-real-r60m.yaml --sensor sentinel-2-msi-r60m ...   (docs/evaluation.md)

Input: the real Sentinel-2A L2A COGs of 29RKH (2020-02-19) in ``../shared/data/real`` (the test
fixture decimated 10x: 10 m bands at 100 m, 20 m bands and SCL at 200 m, 60 m bands at 600 m;
reflectance = DN / 10000, processing baseline before 04.00, DN 0 = no data).

Output, on the 200 m grid of the 20 m bands and of SCL (549 x 549 px, EPSG:32629):

* ``scene.tif``: the 11 bands the shipped checkpoint was trained on (``sentinel-2-msi-r60m`` of
  ``checkpoints/registry-real-r60m.yaml``: B01-B07, B8A, B09, B11, B12), float32 reflectance, NaN =
  no data. B02-B04 are 2 x 2 means of their 100 m pixels, B01 and B09 repeat each 600 m pixel 3 x 3
  (upsampled: they carry 600 m detail only), the 20 m bands are as published.
* ``scl.tif``: SCL as the label raster (uint8, nodata 0).

The checkpoint was pretrained on 40 of the 225 cube tiles (7.68 km) of this scene
(``checkpoints/aom-tiny-real/pretrain-tiles.txt``, read at 60 m with nearest resampling). Every
source pixel that intersects one of those tiles is set to no data in its band (on its native
grid, so a 600 m pixel that reached a trained tile is dropped whole), and every 200 m pixel that
intersects one is set to no data in every band and in the labels: no labelled pixel lies inside a
trained tile and no trained pixel enters an evaluated patch. The last stdout line is one JSON
object with the counts that prove it (``labelled_px_in_trained_tiles`` must be 0).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SCENE_DIR = "sentinel-2-l2a-cogs/S2A_29RKH_20200219_0_L2A"
BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B09", "B11", "B12")
PRETRAIN_TILES = REPO / "checkpoints" / "aom-tiny-real" / "pretrain-tiles.txt"


def trained_tile_mask(
    transform: Any,
    shape: tuple[int, int],
    epsg: int,
    tile_ids: Sequence[str],
    tile_size_m: float | None = None,
) -> np.ndarray:
    """``[H, W]`` bool: the pixels of a north-up grid whose footprint intersects (with positive area)
    any of ``tile_ids`` (tiles of ``pipelines.tiling.TileGrid``) of the same EPSG code."""
    from pipelines.tiling import DEFAULT_TILE_SIZE_M, TileGrid

    grid = TileGrid(tile_size_m or DEFAULT_TILE_SIZE_M)
    h, w = shape
    if transform.b != 0 or transform.d != 0 or transform.e >= 0:
        raise ValueError("trained_tile_mask needs a north-up grid")
    xs = transform.c + transform.a * np.arange(w + 1)  # [W+1] pixel edges
    ys = transform.f + transform.e * np.arange(h + 1)  # [H+1] pixel edges, top to bottom
    mask = np.zeros((h, w), dtype=bool)
    for tid in tile_ids:
        tile = grid.tile(tid)
        if tile.epsg != epsg:
            continue
        left, bottom, right, top = tile.bounds
        cols = (xs[1:] > left) & (xs[:-1] < right)  # [W]
        rows = (ys[1:] < top) & (ys[:-1] > bottom)  # [H]
        mask |= rows[:, None] & cols[None, :]
    return mask


def _resample(arr: np.ndarray, factor: float) -> np.ndarray:
    """NaN-aware block mean (factor < 1: 1/factor source pixels a side) or pixel repeat (factor > 1)."""
    if factor >= 1:
        k = round(factor)
        return np.repeat(np.repeat(arr, k, axis=0), k, axis=1)
    k = round(1 / factor)
    h, w = arr.shape[0] // k, arr.shape[1] // k
    blocks = arr[: h * k, : w * k].reshape(h, k, w, k)
    out = np.full((h, w), np.nan, dtype=np.float32)
    valid = np.isfinite(blocks).all(axis=(1, 3))  # a 200 m pixel needs all of its 100 m pixels
    out[valid] = blocks.mean(axis=(1, 3))[valid]
    return out


def build(
    real_dir: Path, out: Path, tile_ids: Sequence[str], window: tuple[int, int, int, int] | None = None
) -> dict[str, Any]:
    """Write ``out/scene.tif`` and ``out/scl.tif`` (see the module docstring), cropped to ``window``
    ``(row, col, height, width)`` of the 200 m grid if given; return the counts."""
    import rasterio

    src = real_dir / SCENE_DIR
    with rasterio.open(src / "SCL.tif") as ds:
        scl = ds.read(1)
        profile, transform, epsg, shape = ds.profile, ds.transform, ds.crs.to_epsg(), ds.shape
        bounds = tuple(ds.bounds)
    gsd = float(transform.a)
    bands = []
    for b in BANDS:
        with rasterio.open(src / f"{b}.tif") as ds:
            dn = ds.read(1).astype(np.float32)
            if ds.crs.to_epsg() != epsg or tuple(ds.bounds) != bounds:
                raise ValueError(f"{b} is not on the SCL extent")
            refl = np.where(dn == ds.nodata, np.nan, dn / 10000.0).astype(np.float32)
            refl[trained_tile_mask(ds.transform, ds.shape, epsg, tile_ids)] = np.nan  # native grid
            bands.append(_resample(refl, float(ds.transform.a) / gsd))
    stack = np.stack(bands)  # [11, H, W]
    trained = trained_tile_mask(transform, shape, epsg, tile_ids)  # [H, W]
    stack[:, trained] = np.nan
    labels = scl.copy()
    labels[trained] = 0
    if window is not None:
        from rasterio.windows import Window
        from rasterio.windows import transform as window_transform

        r, c, h, w = window
        if not (r >= 0 and c >= 0 and h > 0 and w > 0 and r + h <= shape[0] and c + w <= shape[1]):
            raise ValueError(f"window {window} is outside the {shape[0]} x {shape[1]} grid")
        stack, labels, trained = (
            stack[:, r : r + h, c : c + w],
            labels[r : r + h, c : c + w],
            trained[r : r + h, c : c + w],
        )
        transform, shape = window_transform(Window(c, r, w, h), transform), (h, w)
        profile = {**profile, "height": h, "width": w, "transform": transform}
    out.mkdir(parents=True, exist_ok=True)
    prof = {**profile, "count": len(BANDS), "dtype": "float32", "nodata": float("nan"), "compress": "deflate"}
    for key in ("blockxsize", "blockysize", "tiled", "interleave"):
        prof.pop(key, None)
    for name, data, p in (
        ("scene.tif", stack, prof),
        ("scl.tif", labels[None], {**prof, "count": 1, "dtype": "uint8", "nodata": 0}),
    ):
        tmp = out / f".{name}.tmp"
        with rasterio.open(tmp, "w", **p) as dst:
            dst.write(data)
            if name == "scene.tif":
                dst.descriptions = BANDS
        tmp.replace(out / name)
    values, counts = np.unique(labels[labels > 0], return_counts=True)
    return {
        "scene": str(out / "scene.tif"),
        "labels": str(out / "scl.tif"),
        "grid": {
            "epsg": epsg,
            "gsd_m": gsd,
            "shape": list(shape),
            "window": list(window) if window else None,
        },
        "bands": list(BANDS),
        "trained_tiles_in_scene": sum(
            bool(trained_tile_mask(transform, shape, epsg, [t]).any()) for t in tile_ids
        ),
        "px_in_trained_tiles": int(trained.sum()),
        "labelled_px_in_trained_tiles": int(((labels > 0) & trained).sum()),
        "valid_band_px_in_trained_tiles": int(np.isfinite(stack[:, trained]).sum()),
        "scl_counts": {int(v): int(c) for v, c in zip(values, counts)},
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="scratch folder for scene.tif and scl.tif (not the repo)")
    ap.add_argument("--real-data", default=None, help="real-data folder (default ../shared/data/real)")
    ap.add_argument("--tiles", default=str(PRETRAIN_TILES), help="comma-separated trained tile ids (file)")
    ap.add_argument("--window", default=None, help="ROW,COL,HEIGHT,WIDTH crop of the 200 m grid")
    args = ap.parse_args(argv)
    win = tuple(int(v) for v in args.window.split(",")) if args.window else None
    if win is not None and len(win) != 4:
        ap.error("--window needs ROW,COL,HEIGHT,WIDTH")
    from pipelines.evaluation.loaders import default_real_dir

    tile_ids = [t for t in Path(args.tiles).read_text().replace("\n", ",").split(",") if t.strip()]
    result = build(default_real_dir(args.real_data), Path(args.out), [t.strip() for t in tile_ids], win)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
