"""How AOM writes COGs: block sizes GDAL's COG driver accepts (no warning), the same tile size in the
main image and its overviews, valid for rio-cogeo and the layout check."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from pipelines.embeddings.cog import cog_blocksize, write_cog
from pipelines.testing.cog import cog_problems


@pytest.mark.parametrize("n", [24, 48, 96, 200, 600])
def test_block_sizes_are_valid_without_gdal_warning(
    n: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import rasterio
    from rasterio.transform import from_origin

    path = tmp_path / "x.tif"
    with caplog.at_level(logging.WARNING):
        write_cog(str(path), np.zeros((3, n, n), np.int8), "EPSG:32631", from_origin(0, 0, 80, 80), -128)
    assert not [r.getMessage() for r in caplog.records if "BLOCKSIZE" in r.getMessage()]
    assert cog_problems(path) == []
    bs = cog_blocksize(n, n)
    assert bs >= 128 and bs % 16 == 0
    with rasterio.open(path) as ds:
        assert ds.block_shapes[0] == (bs, bs)
        factors = ds.overviews(1)
    for f in factors:  # overviews are tiled like the main image
        with rasterio.open(path, overview_level=factors.index(f)) as ov:
            assert ov.block_shapes[0] == (bs, bs)
    assert bool(factors) == (n > bs)  # overviews only when the raster is more than one tile
