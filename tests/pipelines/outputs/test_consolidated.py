"""Consolidated metadata of a finished Zarr output: written with the final attributes, in one document."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.storage import LocalStore

from pipelines.outputs import finish_consolidated


def _group(path: Path) -> LocalStore:
    store = LocalStore(str(path))
    group = zarr.open_group(store=store, mode="w", zarr_format=3, attributes={"done": False, "keep": 1})
    a = group.create_array("a", shape=(3,), dtype="float32", dimension_names=("x",))
    a[:] = np.arange(3, dtype=np.float32)
    (path / "_leases").mkdir()  # a non-Zarr folder, as an output's lease folder
    (path / "_leases" / "writer.json").write_text("{}")
    return store


def test_final_attributes_and_consolidated_metadata_are_one_write(tmp_path: Path) -> None:
    out = tmp_path / "g.zarr"
    store = _group(out)
    finish_consolidated(store, ["a"], {"done": True})  # no warning about _leases (pytest: errors)
    node = json.loads((out / "zarr.json").read_text())
    assert node["attributes"] == {"done": True, "keep": 1}
    assert list(node["consolidated_metadata"]["metadata"]) == ["a"]
    ds = xr.open_zarr(out)  # plain call, no consolidated-metadata warning
    assert ds.attrs["done"] is True and ds["a"].values.tolist() == [0.0, 1.0, 2.0]


def test_a_missing_array_leaves_the_earlier_document(tmp_path: Path) -> None:
    out = tmp_path / "g.zarr"
    store = _group(out)
    before = (out / "zarr.json").read_text()
    with pytest.raises(FileNotFoundError):
        finish_consolidated(store, ["a", "gone"], {"done": True})
    assert (out / "zarr.json").read_text() == before
