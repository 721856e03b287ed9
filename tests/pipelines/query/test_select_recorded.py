"""A selection shows only tiles with a completion record at its time, like every other reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.query import export, open_embeddings, select
from pipelines.testing import SyntheticStore, build_synthetic_store, synthetic_version

KILLED = "32632_35_649"  # x 268800..276480, y 4984320..4992000 (EPSG:32632)
BOX = (265000.0, 4980000.0, 275000.0, 4990000.0)  # zone 32 only: the native, lazy path


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStore:
    root = tmp_path_factory.mktemp("emb") / "store"
    version = synthetic_version(dim=16, times=("2024-06-01", "2024-07-01"))
    store = build_synthetic_store(str(root), version=version, stac=False, consolidate=False)
    # a writer killed at time 1 after the shard of KILLED, before its completion record
    (root / "_tiles" / version.name / "t1" / f"{KILLED}.json").unlink()
    return store


@pytest.mark.parametrize("time", [0, 1])
def test_native_selection_equals_the_recorded_tiles(synth: SyntheticStore, time: int) -> None:
    emb = open_embeddings(synth.root_url)
    sel = select(emb, BOX, "EPSG:32632", time=time)
    assert "merged" not in sel.attrs  # the lazy native window
    g = emb.grid(32632)
    rows = np.round((g.y1 - sel.y.values) / g.token_ground_m - 0.5).astype(int)
    cols = np.round((sel.x.values - g.x0) / g.token_ground_m - 0.5).astype(int)
    want = emb.read_recorded(32632, time, slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    np.testing.assert_array_equal(np.asarray(sel.values), want)
    in_killed = (sel.x.values[None, :] > 268800) & (sel.y.values[:, None] > 4984320)
    valid = np.isfinite(np.asarray(sel.values)[..., 0])
    assert valid[in_killed].any() == (time == 0)  # the killed writer's shard never shows


def test_export_leaves_an_unrecorded_tile_nodata(synth: SyntheticStore, tmp_path: Path) -> None:
    import rasterio

    emb = open_embeddings(synth.root_url)
    out = str(tmp_path / "area.tif")
    export(emb, BOX, out, "EPSG:32632", time=1)
    with rasterio.open(out) as src:
        band = src.read(1)
        r, c = src.index(272000.0, 4988000.0)  # inside KILLED
        r2, c2 = src.index(266000.0, 4988000.0)  # a recorded tile
    assert np.isnan(band[r, c]) and np.isfinite(band[r2, c2])
