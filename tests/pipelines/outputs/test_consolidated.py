"""Consolidated metadata of a finished Zarr output: written with the final attributes, in one document,
equal to what zarr-python itself writes (``zarr.consolidate_metadata``) and read by its readers."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.storage import FsspecStore, LocalStore

import pipelines.outputs.consolidated as consolidated
from pipelines import storage
from pipelines.errors import RunFailedError
from pipelines.outputs import finish_consolidated
from tests.services.s3 import RequestCounter

_ARRAYS = ("emb", "x", "crs")
_FINAL: dict[str, Any] = {"done": True, "result": {"n": 3, "nodata": None}, "note": "ü"}


def _build(store: Any) -> None:
    """A group as an ``embed-raster`` output holds it while written: attributes, a float array with a NaN
    fill value (zarr writes it as the string ``"NaN"``), a coordinate and a scalar array."""
    group = zarr.open_group(store=store, mode="w", zarr_format=3, attributes={"done": False, "keep": 1})
    emb = group.create_array(
        "emb",
        shape=(2, 3, 4),
        chunks=(2, 2, 2),
        dtype="float32",
        fill_value=np.nan,
        dimension_names=("d", "y", "x"),
    )
    emb[:] = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    x = group.create_array(
        "x", shape=(4,), dtype="float64", dimension_names=("x",), attributes={"units": "m"}
    )
    x[:] = [0.5, 1.5, 2.5, 3.5]
    group.create_array("crs", shape=(), dtype="int64", fill_value=0, attributes={"crs_wkt": "EPSG:32631"})[
        ...
    ] = 0


def _group(path: Path) -> str:
    _build(LocalStore(str(path)))
    (path / "_leases").mkdir()  # a non-Zarr folder, as an output's lease folder
    (path / "_leases" / "writer.json").write_text("{}")
    return str(path)


def _zarr_python_document(tmp_path: Path) -> dict[str, Any]:
    """The oracle: the root document zarr-python writes for the same group through its public API."""
    path = tmp_path / "oracle.zarr"
    _build(LocalStore(str(path)))
    zarr.open_group(store=LocalStore(str(path)), mode="r+", zarr_format=3).attrs.update(_FINAL)
    zarr.consolidate_metadata(LocalStore(str(path)))
    return json.loads((path / "zarr.json").read_text())


def _root(path: Path) -> dict[str, Any]:
    return json.loads((path / "zarr.json").read_text())


def test_final_attributes_and_consolidated_metadata_are_one_write(tmp_path: Path) -> None:
    out = tmp_path / "g.zarr"
    finish_consolidated(_group(out), ["emb"], {"done": True})  # no warning about _leases (pytest: errors)
    node = _root(out)
    assert node["attributes"] == {"done": True, "keep": 1}
    assert list(node["consolidated_metadata"]["metadata"]) == ["emb"]
    ds = xr.open_zarr(out)  # plain call, no consolidated-metadata warning
    assert ds.attrs["done"] is True and ds["emb"].shape == (2, 3, 4)


def test_the_document_is_the_one_zarr_python_writes(tmp_path: Path) -> None:
    out = tmp_path / "g.zarr"
    finish_consolidated(_group(out), _ARRAYS, _FINAL)
    mine = _root(out)
    assert mine == _zarr_python_document(tmp_path)
    assert mine["consolidated_metadata"]["metadata"]["emb"]["fill_value"] == "NaN"  # the Zarr v3 spelling
    for name in _ARRAYS:  # each entry is the array's own document, as stored
        assert mine["consolidated_metadata"]["metadata"][name] == json.loads(
            (out / name / "zarr.json").read_text()
        )


def test_zarr_and_xarray_read_the_consolidated_copy(tmp_path: Path) -> None:
    out = tmp_path / "g.zarr"
    finish_consolidated(_group(out), _ARRAYS, _FINAL)
    want = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for name in _ARRAYS:  # from here on only the copy describes the arrays: readers must use it
        (out / name / "zarr.json").unlink()
    for group in (
        zarr.open_consolidated(LocalStore(str(out), read_only=True), mode="r", zarr_format=3),
        zarr.open_group(LocalStore(str(out), read_only=True), mode="r", use_consolidated=True),
    ):
        assert sorted(group.array_keys()) == sorted(_ARRAYS)
        assert dict(group.attrs) == {"keep": 1, **_FINAL}
        emb = group["emb"]
        assert isinstance(emb, zarr.Array)
        np.testing.assert_array_equal(emb[:], want)
        assert group["x"].attrs["units"] == "m"
    ds = xr.open_zarr(out, consolidated=True)
    assert ds.attrs == {"keep": 1, **_FINAL}
    np.testing.assert_array_equal(ds["emb"].values, want)
    assert ds["x"].values.tolist() == [0.5, 1.5, 2.5, 3.5] and ds["crs"].attrs["crs_wkt"] == "EPSG:32631"


def test_a_missing_array_leaves_the_earlier_document(tmp_path: Path) -> None:
    out = tmp_path / "g.zarr"
    url = _group(out)
    before = (out / "zarr.json").read_text()
    with pytest.raises(FileNotFoundError):
        finish_consolidated(url, ["emb", "gone"], {"done": True})
    assert (out / "zarr.json").read_text() == before


def test_a_child_that_is_no_array_leaves_the_earlier_document(tmp_path: Path) -> None:
    out = tmp_path / "g.zarr"
    url = _group(out)
    zarr.open_group(LocalStore(str(out)), mode="r+").create_group("sub")
    before = (out / "zarr.json").read_text()
    with pytest.raises(RunFailedError, match=r"not the zarr\.json of a Zarr v3 array"):
        finish_consolidated(url, ["emb", "sub"], {"done": True})
    with pytest.raises(ValueError, match="direct child"):
        finish_consolidated(url, ["sub/x"], {"done": True})
    assert (out / "zarr.json").read_text() == before


def test_nan_attributes_are_written_as_null(tmp_path: Path) -> None:
    """NaN is not JSON (zarr-python would write a bare ``NaN``, which readers other than Python's
    refuse): it becomes ``null``, as in the cube store's attributes, and the document is strict JSON."""
    out = tmp_path / "g.zarr"
    url = _group(out)
    finish_consolidated(url, _ARRAYS, {"done": True, "score": float("nan"), "nested": [1.0, float("inf")]})
    doc = json.loads((out / "zarr.json").read_text(), parse_constant=_refuse)
    assert doc["attributes"]["score"] is None and doc["attributes"]["nested"] == [1.0, None]
    assert doc["attributes"]["done"] is True


def _refuse(name: str) -> None:
    raise AssertionError(f"{name} in zarr.json: not JSON")


def test_on_an_object_store_the_document_is_the_same_and_one_put(tmp_path: Path, s3_bucket: Any) -> None:
    url = s3_bucket.url("g.zarr")
    opts = s3_bucket.storage_options
    _build(FsspecStore.from_url(url, storage_options=opts))
    fs = s3_bucket.fs
    # counted in the client of the filesystem the storage layer uses (fsspec caches instances, so
    # patching the class after one was made would count nothing): requests as sent, retries included
    with RequestCounter(storage.filesystem(url, opts)[0]) as sent:
        finish_consolidated(url, _ARRAYS, _FINAL, opts)
    writes = [r for r in sent.requests if r[0] in ("PUT", "POST")]
    assert writes == [("PUT", f"{s3_bucket.name}/g.zarr/zarr.json")]
    fs.invalidate_cache()
    assert json.loads(fs.cat_file(f"{s3_bucket.name}/g.zarr/zarr.json")) == _zarr_python_document(tmp_path)
    ds = xr.open_zarr(url, consolidated=True, storage_options=opts)
    assert ds.attrs == {"keep": 1, **_FINAL} and sorted(ds.variables) == sorted(_ARRAYS)
    np.testing.assert_array_equal(ds["emb"].values, np.arange(24, dtype=np.float32).reshape(2, 3, 4))


def test_it_uses_no_zarr_python_internals() -> None:
    """Only the Zarr v3 documents and public APIs: ``zarr.core`` moves between zarr-python releases."""
    tree = ast.parse(Path(consolidated.__file__).read_text())
    modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in modules if m == "zarr.core" or m.startswith("zarr.core.")]
    assert "zarr.core" not in Path(consolidated.__file__).read_text()
