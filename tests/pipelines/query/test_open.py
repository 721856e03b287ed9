"""Opening a zone for a query: a zone whose coordinate arrays were never written is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from flows.cli import app
from pipelines.embeddings import ensure_zone, zarr_store
from pipelines.query import BrokenStoreError, open_embeddings
from pipelines.testing import build_synthetic_store, synthetic_version

BOX_ZONE_31 = "5.95,44.98,5.99,45.0"


def _kill_before_coordinate_values(root: str, version: str, epsg: int, name: str) -> None:
    """What a run killed between creating a zone coordinate array and writing its values leaves:
    the array at its fill value (0.0)."""
    arr = zarr.open_array(store=zarr_store(root), path=f"{version}/{epsg}/{name}", mode="r+")
    arr[...] = np.zeros(arr.shape, dtype=arr.dtype)


@pytest.mark.parametrize("name", ["x", "y"])
def test_export_refuses_a_zone_whose_coordinates_were_never_written(tmp_path: Path, name: str) -> None:
    root = str(tmp_path / "store")
    v = synthetic_version(dim=8)
    build_synthetic_store(root, version=v, stac=False, consolidate=False)
    _kill_before_coordinate_values(root, v.name, 32631, name)
    out = tmp_path / "e.tif"
    args = ["query", "export", "--embeddings", root, "--bbox", BOX_ZONE_31, "--out", str(out)]
    r = CliRunner().invoke(app, args)
    # before: exit 0 and a GeoTIFF placed at x = 0 (the zeroed coordinates)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: zone EPSG:32631"), r.output
    assert f"{name} (0..0, expected" in lines[0] and "rerun 'aom embed' on this store" in lines[0]
    assert not out.exists()
    with pytest.raises(BrokenStoreError):
        open_embeddings(root).dataset(32631)
    open_embeddings(root).dataset(32632)  # the other zone is fine

    ensure_zone(root, v.name, 32631)  # what the rerun of `aom embed` does first
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and out.exists(), r.output
