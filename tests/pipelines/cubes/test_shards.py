"""Shard-level reads (:mod:`pipelines.cubes.shards`): equal to the xarray path, only the bands asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.cubes import CubeStore
from pipelines.errors import CubeDataError
from pipelines.testing import write_synthetic_cubes


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("shards") / "store"
    write_synthetic_cubes(root, seed=5, n_tiles=1, tile_m=960, n_times=2)
    return str(root)


def _check_equal(cs: CubeStore) -> int:
    n = 0
    for tile in cs.complete_tiles():
        for coll, label in cs.groups(tile):
            ds = cs.open_group(tile, coll, label, lazy=True)
            rg = cs.open_raw(tile, coll, label)
            nt, nb, h, w = rg.shape
            for t in range(nt):
                for y0, x0, hh, ww in ((0, 0, h, w), (3, 5, h - 3, w - 7), (h // 2, 1, 1, w // 3)):
                    want = cs.read_window(ds, t, y0, x0, hh, ww)
                    got = rg.to_float(rg.read(t, range(nb), y0, x0, hh, ww))
                    assert got.dtype == want.dtype == np.float32
                    np.testing.assert_array_equal(got, want)  # NaN where missing, bit for bit
                    n += 1
    return n


def test_raw_reads_equal_xarray(store: str) -> None:
    assert _check_equal(CubeStore.open(store)) > 0


def test_raw_reads_equal_xarray_on_a_cube_run_store(tmp_path: Path) -> None:
    """The layout `aom cubes` writes (a cloud box leaves fill values)."""
    from pipelines.cubes import write_cubes
    from tests.pipelines.cubes.support import TILE_IDS, s2_item, spec

    item = s2_item(tmp_path / "items", "A", cloud_boxes=[(0.1, 0.55, 0.4, 0.9)])
    out = tmp_path / "production"
    assert write_cubes([item], TILE_IDS[:1], spec(), str(out), progress=False).tiles_done == TILE_IDS[:1]
    cs = CubeStore.open(str(out))
    assert _check_equal(cs) > 0
    tile = TILE_IDS[0]
    rg = cs.open_raw(tile, *cs.groups(tile)[0])
    assert rg.layout is not None  # the sharded layout, read without zarr


def test_only_requested_bands_are_decoded(store: str) -> None:
    cs = CubeStore.open(store)
    rg = cs.open_raw("T000", "sentinel-2-l2a", "20m")
    _, nb, h, w = rg.shape
    assert rg.layout is not None and nb >= 3
    full = rg.read(1, range(nb), 0, 0, h, w)
    per_band = rg.counts.chunks_decoded // nb
    assert rg.counts.shards >= 1 and per_band >= 1
    before = rg.counts.chunks_decoded
    two = rg.read(1, [nb - 1, 0], 0, 0, h, w)
    assert rg.counts.chunks_decoded - before == 2 * per_band  # the other bands' chunks never decoded
    np.testing.assert_array_equal(two, full[[nb - 1, 0]])
    assert rg.counts.bands[-2:] == [(1, nb - 1), (1, 0)]
    with pytest.raises(CubeDataError, match="outside"):
        rg.read(1, [0], 0, 0, h + 1, w)


def test_missing_shard_reads_as_fill_and_corrupt_shard_raises(store: str, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    refl = copy / "T000" / "sentinel-2-l2a" / "10m" / "reflectance"
    shards = sorted(p for p in refl.rglob("*") if p.is_file() and p.name != "zarr.json")
    assert shards
    cs = CubeStore.open(str(copy))
    rg = cs.open_raw("T000", "sentinel-2-l2a", "10m")
    _, nb, h, w = rg.shape
    shards[0].unlink()  # zarr reads a shard that does not exist as the fill value
    ds = cs.open_group("T000", "sentinel-2-l2a", "10m", lazy=True)
    np.testing.assert_array_equal(
        rg.to_float(rg.read(0, range(nb), 0, 0, h, w)), cs.read_window(ds, 0, 0, 0, h, w)
    )
    for p in shards[1:]:
        p.write_bytes(b"garbage")
    with pytest.raises(CubeDataError, match="shorter than its index"):
        rg.read(1, range(nb), 0, 0, h, w)
