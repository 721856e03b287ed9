"""How AOM writes COGs: block sizes GDAL's COG driver accepts (no warning), the same tile size in the
main image and its overviews, valid for rio-cogeo and the layout check."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

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


PART = 5 * 2**20  # S3's (and moto's) smallest part but the last


def _noise_cog_args() -> tuple[np.ndarray, str, Any]:
    """Two bands of incompressible noise: a COG of about 15 MB, three parts of :data:`PART`."""
    from rasterio.transform import from_origin

    bands = np.random.default_rng(7).integers(0, 2**16, size=(2, 1700, 1700), dtype=np.uint16)
    return bands, "EPSG:32631", from_origin(500_000, 5_000_000, 10, 10)


def test_a_cog_larger_than_a_part_is_uploaded_part_by_part_and_opens_from_s3(
    tmp_path: Path, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remote COG was read whole into memory and sent in one PUT (S3 refuses one over 5 GB).
    Now it is uploaded from disk part by part: no request carries more than a part, and the object
    is byte for byte the local COG, which rasterio reads from S3 with the same pixels."""
    import rasterio

    from pipelines import storage
    from tests.services.s3 import RequestCounter

    monkeypatch.setattr(storage.upload, "UPLOAD_PART_BYTES", PART)
    bands, crs, transform = _noise_cog_args()
    local = tmp_path / "local.tif"
    size = write_cog(str(local), bands, crs, transform, None)
    assert size > 2 * PART  # a multipart upload
    url, opts = s3_bucket.url("maps", "noise.tif"), s3_bucket.storage_options
    with RequestCounter(storage.filesystem(url, opts)[0]) as sent:
        assert write_cog(url, bands, crs, transform, None, storage_options=opts) == size
    assert sent.by_method.get("PUT", 0) >= 3 and sent.largest_sent <= PART + 64 * 1024
    assert s3_bucket.fs.cat_file(f"{s3_bucket.name}/maps/noise.tif") == local.read_bytes()
    with s3_bucket.service.rasterio_env(), rasterio.open(url) as ds:
        assert (ds.count, ds.height, ds.width) == bands.shape
        np.testing.assert_array_equal(ds.read(), bands)
    assert cog_problems(local) == []


def test_a_cog_upload_failing_midway_leaves_no_object(
    s3_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S3 answers 500 to the second part: no object appears, no parts are kept, and the run fails
    with one line naming the destination (no credentials), transient as its cause."""
    from pipelines import storage
    from pipelines.errors import RunFailedError
    from pipelines.retry import is_transient
    from tests.services.s3 import S3Refusal

    monkeypatch.setattr(storage.upload, "UPLOAD_PART_BYTES", PART)
    bands, crs, transform = _noise_cog_args()
    url, opts = s3_bucket.url("maps", "noise.tif"), s3_bucket.storage_options
    with (
        S3Refusal(storage.filesystem(url, opts)[0], ".tif", 500, operation="UploadPart", after=1),
        pytest.raises(RunFailedError, match=f"upload to {url} failed") as caught,
    ):
        write_cog(url, bands, crs, transform, None, storage_options=opts)
    assert opts["secret"] not in str(caught.value) and is_transient(caught.value)
    s3_bucket.fs.invalidate_cache()
    assert not s3_bucket.fs.exists(f"{s3_bucket.name}/maps/noise.tif")
    uploads = s3_bucket.service.boto3_client().list_multipart_uploads(Bucket=s3_bucket.name)
    assert uploads.get("Uploads", []) == []
