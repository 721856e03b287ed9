"""Writers of `aom embed-raster` outputs: the Zarr writer's lease and completion mark."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from affine import Affine
from rasterio.crs import CRS

from pipelines.embed.raster_out import RasterEmbedResult, _ZarrWriter, check_raster_complete
from pipelines.errors import RunFailedError
from pipelines.outputs import LeaseHeldError, OutputError
from tests.pipelines.outputs.support import live_lease_of_another_run


def _writer(out: Path, **kw: bool) -> _ZarrWriter:
    t = Affine(160.0, 0.0, 300000.0, 0.0, -160.0, 5000000.0)
    return _ZarrWriter(str(out), 4, 5, 8, "float32", CRS.from_epsg(32632), t, 4, None, **kw)


def _result(out: Path) -> RasterEmbedResult:
    return RasterEmbedResult(
        str(out), "zarr", "float32", 4, 5, 8, "EPSG:32632", (160.0, 0, 0, 0, -160.0, 0), 16, 160.0, 20, 1, 1,
        {}, 0.0, 0.0, [], "0" * 64,
    )  # fmt: skip


def test_a_store_hollowed_while_written_is_never_marked_complete(tmp_path: Path) -> None:
    """The writer holds its lease, but something removed its arrays (a run that took no lease, as
    `--overwrite` did before it waited for the lease): the store is not marked complete."""
    import shutil

    out = tmp_path / "r.zarr"
    w = _writer(out)
    w.write(0, np.ones((4, 5, 8), np.float32))
    shutil.rmtree(out / "embeddings")
    with pytest.raises(RunFailedError, match=r"embeddings removed by another process.*not marked complete"):
        w.close(_result(out))
    with pytest.raises(OutputError, match="incomplete"):
        check_raster_complete(str(out))
    assert not (out / "_leases").exists()  # the lease was released all the same


def test_the_writer_takes_its_lease_before_removing_anything(tmp_path: Path) -> None:
    out = tmp_path / "r.zarr"
    w = _writer(out)
    w.write(0, np.ones((4, 5, 8), np.float32))
    w.close(_result(out))
    assert check_raster_complete(str(out))["aom_complete"] is True
    live_lease_of_another_run(out / "_leases" / "writer.json")
    for overwrite in (False, True):
        with pytest.raises(LeaseHeldError, match="being written by another run"):
            _writer(out, overwrite=overwrite)
    assert check_raster_complete(str(out))["aom_complete"] is True
    emb = zarr.open_group(str(out), mode="r")["embeddings"]
    assert isinstance(emb, zarr.Array) and emb.shape == (8, 4, 5)


def test_an_int8_zarr_output_declares_its_nodata_code(tmp_path: Path) -> None:
    """rioxarray / odc-geo read -128 as nodata of an int8 Zarr output, as of the int8 GeoTIFF and the
    store's arrays (before, ``ds.embeddings.rio.nodata`` was None: -128 codes read as data)."""
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    out = tmp_path / "r8.zarr"
    t = Affine(160.0, 0.0, 300000.0, 0.0, -160.0, 5000000.0)
    w = _ZarrWriter(str(out), 4, 5, 8, "int8", CRS.from_epsg(32632), t, 4, None)
    emb = np.ones((4, 5, 8), np.float32)
    emb[0, 0] = np.nan
    w.write(0, emb)
    w.close(_result(out))
    ds = xr.open_zarr(out, consolidated=False)
    assert ds["embeddings"].dtype == np.int8 and ds["embeddings"].rio.nodata == -128
    assert int(ds["embeddings"][0, 0, 0]) == -128
    f32 = tmp_path / "r.zarr"
    _writer(f32).close(_result(f32))
    assert "nodata" not in xr.open_zarr(f32, consolidated=False)["embeddings"].attrs  # NaN: the fill value


def test_plain_open_zarr_of_a_finished_output_warns_nothing_and_sees_the_final_attributes(
    tmp_path: Path,
) -> None:
    """``xr.open_zarr(path)`` as docs/embedding.md shows it (pytest turns warnings into errors): before,
    the output had no consolidated metadata and xarray warned "Failed to open Zarr store with
    consolidated metadata"."""
    import json

    import xarray as xr

    out = tmp_path / "r.zarr"
    w = _writer(out)
    w.write(0, np.ones((4, 5, 8), np.float32))
    assert not json.loads((out / "zarr.json").read_text()).get("consolidated_metadata")  # not while written
    w.close(_result(out))
    ds = xr.open_zarr(out)
    assert ds.attrs["aom_complete"] is True and ds.attrs["aom_status"] == "complete"
    assert ds["embeddings"].shape == (8, 4, 5) and float(ds["embeddings"][0, 0, 0]) == 1.0
    node = json.loads((out / "zarr.json").read_text())
    assert sorted(node["consolidated_metadata"]["metadata"]) == ["embeddings", "spatial_ref", "x", "y"]
    assert check_raster_complete(str(out))["aom_complete"] is True


def test_a_rerun_or_overwrite_leaves_no_stale_consolidated_metadata(tmp_path: Path) -> None:
    """A finished output's consolidated copy describes its arrays; an overwrite with other arrays
    (int8, another grid) must not be opened through the old copy, neither while it is written, nor
    after a failed run, nor once it is complete."""
    import json

    import xarray as xr

    out = tmp_path / "r.zarr"
    first = _writer(out)
    first.write(0, np.ones((4, 5, 8), np.float32))
    first.close(_result(out))
    t = Affine(80.0, 0.0, 300000.0, 0.0, -80.0, 5000000.0)
    again = _ZarrWriter(str(out), 6, 7, 8, "int8", CRS.from_epsg(32632), t, 4, None, overwrite=True)
    again.write(0, np.ones((6, 7, 8), np.float32))
    again.abort()  # a run that failed: incomplete, and no copy of the first output's arrays
    assert not json.loads((out / "zarr.json").read_text()).get("consolidated_metadata")
    with pytest.raises(OutputError, match="incomplete"):
        check_raster_complete(str(out))
    ds = xr.open_zarr(out, consolidated=False)
    assert ds["embeddings"].shape == (8, 6, 7) and ds.attrs["aom_complete"] is False
    rerun = _ZarrWriter(str(out), 6, 7, 8, "int8", CRS.from_epsg(32632), t, 4, None)
    rerun.write(0, np.ones((6, 7, 8), np.float32))
    rerun.close(_result(out))
    ds = xr.open_zarr(out)
    assert ds["embeddings"].shape == (8, 6, 7) and ds["embeddings"].dtype == np.int8
    assert ds.attrs["aom_complete"] is True and float(ds["x"][1] - ds["x"][0]) == 80.0
