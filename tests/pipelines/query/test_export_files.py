"""Exported GeoTIFFs: the embedding COG ``aom publish`` writes, and files like any other the user
writes: the user's umask, no temporary file left beside them, and a killed export's leftover removed
by the next export."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pyproj import CRS

from pipelines.query.export import write_raster
from pipelines.storage import temp_name


def test_an_export_follows_the_umask_and_cleans_leftovers(tmp_path: Path) -> None:
    out = tmp_path / "area.tif"
    stale = Path(temp_name(str(out), ".tif").replace(f"-{os.getpid()}@", "-999999999@"))
    stale.write_bytes(b"killed half-way")
    data = np.arange(32 * 32, dtype=np.float32).reshape(32, 32)
    xs = 500_000.0 + 10.0 * np.arange(32)
    ys = 5_000_000.0 - 10.0 * np.arange(32)
    old = os.umask(0o022)
    try:
        write_raster(str(out), data, xs, ys, CRS.from_epsg(32631), nodata=None, resolution=10.0)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644  # was 0600 (a mkstemp file moved into place)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["area.tif"]

    import rasterio

    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(1), data)


def test_an_export_to_a_file_uri_lands_in_the_decoded_path(tmp_path: Path) -> None:
    """``file:///.../dir%20with%20space/area.tif`` was written to a folder named ``dir%20with%20space``."""
    import rasterio

    folder = tmp_path / "dir with space"
    data = np.arange(16 * 16, dtype=np.float32).reshape(16, 16)
    xs = 500_000.0 + 10.0 * np.arange(16)
    ys = 5_000_000.0 - 10.0 * np.arange(16)
    uri = (folder / "area.tif").as_uri()
    write_raster(uri, data, xs, ys, CRS.from_epsg(32631), nodata=None, resolution=10.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir with space"]
    with rasterio.open(folder / "area.tif") as src:
        np.testing.assert_array_equal(src.read(1), data)


def test_an_exported_cog_is_the_product_aom_publish_writes(tmp_path: Path) -> None:
    """``aom query export`` had its own COG writer: bands ``emb_000``, a ``dequantise`` tag, lowercase
    provenance tags and 256 px blocks, where ``aom publish`` (and ``aom embed-raster``) write ``emb_0000``,
    ``AOM_ENCODING`` and ``AOM_*`` tags. For the same tile both are now one product: same grid, blocks,
    overviews, band names, tags (but the tile / zones tag), nodata, and values as rasterio reads them."""
    import rasterio

    from pipelines.embeddings import DECODE_LUT, publish_cogs
    from pipelines.query import export, open_embeddings
    from pipelines.testing import build_synthetic_store, synthetic_version

    root = tmp_path / "emb"
    v = synthetic_version(dim=16, times=("2024-06-01",))
    build_synthetic_store(
        str(root), bbox=(5.985, 44.995, 6.015, 45.005), version=v, hole_tokens=5, stac=False
    )
    publish_cogs(str(root), v.name)
    emb = open_embeddings(str(root), v.name)
    ref = emb.tiles(0)[32631][0]
    pub = root / "published" / v.name / "t0" / f"{ref.tile_id}.tif"
    f32 = export(emb, ref.bounds, str(tmp_path / "f32.tif"), "EPSG:32631")
    i8 = export(emb, ref.bounds, str(tmp_path / "i8.tif"), "EPSG:32631", dtype="int8")
    with rasterio.open(pub) as p, rasterio.open(f32) as a, rasterio.open(i8) as b:
        codes = p.read()
        assert (codes == -128).all(axis=0).any()  # the holes: nodata tokens are compared too
        ptags = {k: t for k, t in p.tags().items() if k != "AOM_TILE"}
        for ds in (a, b):
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
            assert (ds.crs, ds.transform, ds.shape, ds.count) == (p.crs, p.transform, p.shape, p.count)
            assert ds.block_shapes == p.block_shapes and ds.overviews(1) == p.overviews(1)
            assert ds.compression == p.compression and ds.scales == p.scales and ds.offsets == p.offsets
            assert ds.descriptions == p.descriptions == tuple(f"emb_{i:04d}" for i in range(16))
            tags = ds.tags()
            assert tags.pop("AOM_ZONES") == "32631"
            assert tags | {"AOM_ENCODING": ""} == ptags | {"AOM_ENCODING": ""}
        # int8: the very codes publish copies from the store, under the same decoding rule
        assert b.tags()["AOM_ENCODING"] == ptags["AOM_ENCODING"] and b.nodata == p.nodata == -128
        np.testing.assert_array_equal(b.read(), codes)
        # float32: the values that rule decodes the published codes to, NaN where they are -128
        assert a.tags()["AOM_ENCODING"] == "float32 token vectors; NaN is nodata" and np.isnan(a.nodata)
        np.testing.assert_array_equal(a.read(), DECODE_LUT[codes.view(np.uint8)])
