"""Exported GeoTIFFs are files like any other the user writes: the user's umask, no temporary
file left beside them, and a killed export's leftover removed by the next export."""

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
