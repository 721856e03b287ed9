"""Checks several embeddings tests share."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

# zarr-python warns once per non-Zarr folder at the root (``_tiles/``, ``stac/``, ``_leases/``) when it
# lists members; a warning, not an error (zarr 3.1): what a user opening the whole store sees.
NOT_ZARR_WARNING = r"Object at .* is not recognized as a component of a Zarr hierarchy"


def open_store_datatree(root: str) -> Any:
    """``xarray.open_datatree(<store>, engine="zarr")`` as a user calls it (raw int8 codes)."""
    import xarray as xr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", NOT_ZARR_WARNING)
        return xr.open_datatree(root, engine="zarr", consolidated=False, mask_and_scale=False)


def assert_datatree_matches_query(root: str, version_name: str) -> int:
    """The whole store opens as one DataTree, and its tile vectors and token vectors are the ones
    :mod:`pipelines.query` reads (the oracle). Returns the number of tiles compared."""
    from pipelines.embeddings import dequantize
    from pipelines.query import open_embeddings, tile_vectors

    tree = open_store_datatree(root)
    emb = open_embeddings(root, version_name)
    n = emb.version.tokens_per_tile
    compared = 0
    for ti in range(len(emb.version.times)):
        refs = emb.tiles(ti)
        if not any(refs.values()):
            continue  # a time with no data (query refuses to read it)
        for zone in emb.zones:
            node = tree[f"/{version_name}/{zone}"]
            tv = tile_vectors(emb, zone, ti)
            grid = node["tiles"].to_dataset()
            vec = grid["vectors"].isel(time=ti).transpose("tile_y", "tile_x", "dim").values
            np.testing.assert_array_equal(vec.astype(np.float32), tv.vectors)
            np.testing.assert_array_equal(grid["tile_x"].values, tv.x)
            np.testing.assert_array_equal(grid["tile_y"].values, tv.y)
            assert grid["spatial_ref"].attrs["GeoTransform"].split()[1] == repr(emb.version.tile_size_m)
            for ref in refs.get(zone, []):
                rows, cols = slice(ref.row0, ref.row0 + n), slice(ref.col0, ref.col0 + n)
                codes = node["embeddings"].isel(time=ti, y=rows, x=cols).transpose("y", "x", "dim").values
                np.testing.assert_array_equal(dequantize(codes), emb.read_window(zone, ti, rows, cols))
                assert np.isfinite(vec[ref.row0 // n, ref.col0 // n]).all()
                compared += 1
    return compared
