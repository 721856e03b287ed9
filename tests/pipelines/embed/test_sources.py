"""Embedding reads: the shard path equals the xarray reference path, each shard fetched once."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.embed import CubeSource, parse_periods
from pipelines.runs import TileStatus
from pipelines.tiling import TileGrid

TILE = "32631_95_649"
PERIOD = "2023-06-01/2023-06-30"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, sample_items: list[dict[str, Any]]) -> Path:
    """A cube run's store of one tile plus a copy of it recorded as its northern neighbour (the margin)."""
    from pipelines.cubes import CubeSpec, write_cubes

    grid = TileGrid()
    out = tmp_path_factory.mktemp("emb-src") / "cubes"
    spec = CubeSpec(grid=grid, collections=("sentinel-2-l2a", "landsat-c2-l2"), catalog="sample")
    assert write_cubes(sample_items, [grid.tile(TILE)], spec, str(out), progress=False).tiles_done == [TILE]
    epsg, ix, iy = TILE.split("_")
    east = f"{epsg}_{ix}_{int(iy) + 1}"  # the northern neighbour
    shutil.copytree(out / TILE, out / east)
    rec = json.loads((out / "_tiles" / f"{TILE}.json").read_text())
    rec["tile_id"] = east
    (out / "_tiles" / f"{east}.json").write_text(json.dumps(rec))
    return out


@pytest.fixture(scope="module")
def xarray_read(store: Path) -> Any:
    """The reference: the tile read through plain xarray decoding (what the shard path must equal)."""
    return CubeSource(str(store), decode="xarray").read(
        TileGrid().tile(TILE), parse_periods(PERIOD)[0], 0, 480.0
    )


@pytest.mark.parametrize("strip_mb", [64.0, 0.05])
def test_shard_reads_equal_the_xarray_path(store: Path, xarray_read: Any, strip_mb: float) -> None:
    """In one pass and in strips of 50 kB; the reference is read once (its strips do not change it)."""
    tile = TileGrid().tile(TILE)
    period = parse_periods(PERIOD)[0]
    new = CubeSource(str(store), strip_mb=strip_mb).read(tile, period, 0, 480.0)
    ref = xarray_read
    assert new.status == ref.status == TileStatus.DONE
    assert [(g.collection, g.gsd_m) for g in new.groups] == [(g.collection, g.gsd_m) for g in ref.groups]
    assert [g.bands for g in new.groups] == [g.bands for g in ref.groups]  # metadata without xarray
    for a, b in zip(new.groups, ref.groups):
        assert a.pixels.dtype == b.pixels.dtype == np.float32
        np.testing.assert_array_equal(a.pixels, b.pixels)  # bit for bit, NaN where NaN
        assert np.isfinite(a.pixels).any() and np.isnan(a.pixels).any()  # margin: north filled, others NaN
    assert new.observations == ref.observations and new.input_items == ref.input_items
    assert new.notes == ref.notes


def test_each_shard_fetched_once_per_group(store: Path) -> None:
    from pipelines.cubes import CubeStore
    from pipelines.embed.sources import composite_raw_into

    cs = CubeStore.open(str(store))
    coll, label = cs.groups(TILE)[0]
    rg = cs.open_raw(TILE, coll, label)
    nt, nb, h, w = rg.shape
    out = np.full((nb, h, w), np.nan, dtype=np.float32)
    composite_raw_into(out, rg, list(range(nb)), list(range(nt)), (0, h, 0, w), (0, 0), strip_mb=0.01)
    shards = sorted(p for p in (store / TILE / coll / label / "reflectance").rglob("*") if p.is_file())
    assert rg.counts.shards == len([p for p in shards if p.name != "zarr.json"])  # once each, many passes
    many = rg.counts.chunks_decoded
    assert rg.layout is not None  # the sharded layout: read shard by shard, not through zarr
    assert 0 < many <= nt * nb * (-(-h // rg.layout.chunk[2])) * (-(-w // rg.layout.chunk[3]))
    one = cs.open_raw(TILE, coll, label)
    composite_raw_into(out, one, list(range(nb)), list(range(nt)), (0, h, 0, w), (0, 0), strip_mb=1e6)
    assert one.counts.chunks_decoded == many  # every chunk decoded once, however small the passes


def test_median_of_two_equals_the_float64_mean() -> None:
    """The float32 ``(fmin + fmax) / 2`` of two acquisitions is bit for bit the float64 mean rounded to
    float32 (what the median was computed as before), NaN handled as ``np.nanmedian``."""
    from pipelines.embed.chips import nanmedian_time

    rng = np.random.default_rng(0)
    n = 200_000
    a = (rng.integers(-2000, 20000, n) * 1e-4).astype(np.float32)  # decoded int16 reflectance
    b = (rng.integers(-2000, 20000, n) * 1e-4 - 0.1).astype(np.float32)
    wide = rng.standard_normal((2, n)).astype(np.float32) * np.float32(10.0) ** rng.integers(-30, 30, (2, n))
    stack = np.concatenate([np.stack([a, b]), wide.astype(np.float32)], axis=1)  # [2, 2n]
    stack[0, ::7] = np.nan
    stack[1, ::5] = np.nan
    want = np.where(
        np.isnan(stack[0]),
        stack[1],
        np.where(np.isnan(stack[1]), stack[0], (stack[0].astype(np.float64) + stack[1]) * 0.5),
    ).astype(np.float32)
    got = nanmedian_time(stack)
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))
    out = np.full(stack.shape[1:], 7.0, dtype=np.float32)
    assert nanmedian_time(stack, out=out) is out
    np.testing.assert_array_equal(out.view(np.int32), want.view(np.int32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
        np.testing.assert_array_equal(got, np.nanmedian(stack, axis=0).astype(np.float32))


@pytest.mark.parametrize("n_times", [3, 4])
def test_shard_composite_of_many_acquisitions_equals_the_xarray_path(tmp_path: Path, n_times: int) -> None:
    """With three or more acquisitions the shard path takes the median of the stored integers (only
    the two middle values decoded); it equals the xarray path's float median bit for bit."""
    from pipelines.cubes import CubeStore
    from pipelines.embed.sources import composite_into, composite_raw_into
    from pipelines.testing import write_synthetic_cubes

    root = tmp_path / "store"
    write_synthetic_cubes(root, seed=3, n_tiles=1, tile_m=960, n_times=n_times, cloud_cover=(0.2, 0.6))
    cs = CubeStore.open(str(root))
    tile = cs.complete_tiles()[0]
    for coll, label in cs.groups(tile):
        ds = cs.open_group(tile, coll, label, lazy=True)
        rg = cs.open_raw(tile, coll, label)
        nt, nb, h, w = rg.shape
        assert nt == n_times
        for src, strip_mb in (((0, h, 0, w), 64.0), ((2, h - 1, 3, w - 2), 0.01)):
            shape = (nb, src[1] - src[0] + 1, src[3] - src[2] + 2)
            got = np.full(shape, np.nan, dtype=np.float32)
            want = np.full(shape, np.nan, dtype=np.float32)
            composite_raw_into(got, rg, list(range(nb)), list(range(nt)), src, (1, 2), strip_mb)
            composite_into(want, ds, list(range(nb)), list(range(nt)), src, (1, 2), strip_mb)
            np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))
            assert np.isfinite(got).any()


# ------------------------------------------------------------------------------------------
# Block reads: tiles that share margins read together, each equal to reading it alone

BLOCK_T = 1920.0  # small tiles: a 3 x 3 block of them is quick to write
BLOCK_LL = (364, 2601)  # lower-left tile (ix, iy): its 2 x 2 block is one aligned square


@pytest.fixture(scope="module")
def block_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3 x 3 block of tiles of 1920 m (two acquisitions, clouds) with its north-east corner tile
    missing, so some tiles have an absent neighbour in their margin."""
    from pipelines.cubes import CubeSpec, write_cubes
    from pipelines.testing import make_item

    work = tmp_path_factory.mktemp("emb-block")
    ix0, iy0 = BLOCK_LL
    bounds = (ix0 * BLOCK_T - 480, iy0 * BLOCK_T - 480, (ix0 + 3) * BLOCK_T + 480, (iy0 + 3) * BLOCK_T + 480)
    items = [
        make_item(
            work / "items",
            item_id=f"BLK_{t}",
            epsg=32631,
            bounds=bounds,
            datetime=f"2023-06-{1 + 5 * t:02d}T10:30:00Z",
            cloud_boxes=[(0.1 + 0.3 * t, 0.2, 0.5 + 0.3 * t, 0.6)],
            seed=t,
        )
        for t in range(2)
    ]
    grid = TileGrid(BLOCK_T)
    tiles = [grid.tile(f"32631_{ix0 + i}_{iy0 + j}") for j in range(3) for i in range(3) if (i, j) != (2, 2)]
    spec = CubeSpec(grid=grid, collections=("sentinel-2-l2a",), catalog="sample")
    summary = write_cubes(items, tiles, spec, str(work / "cubes"), progress=False)
    assert len(summary.tiles_done) == 8, summary.format()
    return work / "cubes"


def _same_padded(a: Any, b: Any) -> None:
    assert (a.tile.tile_id, a.status, a.reason) == (b.tile.tile_id, b.status, b.reason)
    assert [(g.collection, g.gsd_m, g.bands) for g in a.groups] == [
        (g.collection, g.gsd_m, g.bands) for g in b.groups
    ]
    for ga, gb in zip(a.groups, b.groups):
        assert ga.pixels.shape == gb.pixels.shape and ga.pixels.dtype == gb.pixels.dtype == np.float32
        np.testing.assert_array_equal(ga.pixels, gb.pixels)  # bit for bit, NaN where NaN
    assert (a.observations, a.input_items, a.notes) == (b.observations, b.input_items, b.notes)


@pytest.mark.parametrize("decode", ["shards", "xarray"])
def test_block_read_equals_reading_each_tile_alone(block_store: Path, decode: str) -> None:
    grid = TileGrid(BLOCK_T)
    period = parse_periods(PERIOD)[0]
    ix0, iy0 = BLOCK_LL
    ids = [f"32631_{ix0 + i}_{iy0 + j}" for j in (2, 1) for i in (1, 2)]  # the north-east 2 x 2 ...
    ids += [f"32631_{ix0 + 5}_{iy0}", f"32631_{ix0}_{iy0}"]  # ... a tile without cube, a far one
    tiles = [grid.tile(t) for t in ids]
    src = CubeSource(str(block_store), grid=grid, decode=decode)
    block = src.read_block(tiles, period, 0, 480.0)
    alone = [src.read(t, period, 0, 480.0) for t in tiles]
    assert [p.tile.tile_id for p in block] == ids  # the order asked for
    assert [p.status for p in block] == [
        TileStatus.DONE,
        TileStatus.SKIPPED,  # the missing corner
        TileStatus.DONE,
        TileStatus.DONE,
        TileStatus.SKIPPED,
        TileStatus.DONE,
    ]
    for a, b in zip(block, alone):
        _same_padded(a, b)
    assert any("no cube for" in n for n in block[0].notes)  # the missing corner is in its margin
    assert all(np.isfinite(g.pixels).any() and np.isnan(g.pixels).any() for g in block[2].groups)


def test_block_read_decodes_shared_margins_once(block_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.cubes import CubeStore

    opened: list[Any] = []
    open_raw = CubeStore.open_raw

    def counting(self: CubeStore, *a: Any) -> Any:
        rg = open_raw(self, *a)
        opened.append(rg)
        return rg

    monkeypatch.setattr(CubeStore, "open_raw", counting)
    grid = TileGrid(BLOCK_T)
    period = parse_periods(PERIOD)[0]
    ix0, iy0 = BLOCK_LL
    tiles = [grid.tile(f"32631_{ix0 + i}_{iy0 + j}") for j in (1, 0) for i in (0, 1)]  # a full ring each
    src = CubeSource(str(block_store), grid=grid)

    def decoded(read: Any) -> tuple[int, int]:
        opened.clear()
        read()
        return sum(g.counts.chunks_decoded for g in opened), sum(g.counts.pixels for g in opened)

    chunks_alone, px_alone = decoded(lambda: [src.read(t, period, 0, 480.0) for t in tiles])
    chunks_block, px_block = decoded(lambda: src.read_block(tiles, period, 0, 480.0))
    # in units of the 480 m margin (a tile is 4), clipped to the ground that has cubes (x, y >= 0,
    # not the missing corner tile's unit at 8..9): alone the tiles read 5 x 5, 6 x 5, 5 x 6 and
    # 6 x 6 - 1 units, the block 9 x 9 - 1
    assert px_block / px_alone == pytest.approx(80 / (25 + 30 + 30 + 35), rel=1e-9)
    assert chunks_block < chunks_alone


def test_square_groups_are_aligned_squares() -> None:
    from pipelines.tiling import square_groups, tile_cell

    grid = TileGrid(BLOCK_T)
    tiles = [grid.tile(f"32631_{ix}_{iy}") for iy in range(2601, 2604) for ix in range(364, 369)]  # 5 x 3
    groups = square_groups(tiles, tile_cell, 2)
    assert sorted(t.tile_id for g in groups for t in g) == sorted(t.tile_id for t in tiles)
    for g in groups:
        assert (
            len({(t.index[0] // 2, -t.index[1] // 2) for t in g}) == 1 and 1 <= len(g) <= 4
        )  # rows from the north
    assert [len(g) for g in groups] == [
        2,
        2,
        1,
        4,
        4,
        2,
    ]  # rows from the north: iy 2603 alone, then 2601-2602
    other_zone = [grid.tile("32632_364_2601"), *tiles[:1]]
    assert len(square_groups(other_zone, tile_cell, 4)) == 2  # zones never share a square


def _deny_record(monkeypatch: pytest.MonkeyPatch, denied: str) -> None:
    """Reading ``denied``'s completion record fails as an unreadable object does (a file mode 000 read
    by an ordinary user, an S3 403): PermissionError, not "no such record"."""
    from pipelines.cubes import CubeStore

    record = CubeStore.record

    def guarded(self: CubeStore, tile_id: str) -> dict[str, Any]:
        if tile_id == denied:
            raise PermissionError(13, "Permission denied", f"_tiles/{tile_id}.json")
        return record(self, tile_id)

    monkeypatch.setattr(CubeStore, "record", guarded)


@pytest.mark.parametrize("block", [False, True])
def test_an_unreadable_neighbour_record_fails_the_read_not_a_nan_margin(
    block_store: Path, monkeypatch: pytest.MonkeyPatch, block: bool
) -> None:
    """Only a missing record means "no cube there": a neighbour's record that cannot be read raises,
    so the tile fails (no completion record, read again next run) instead of being embedded with NaN
    where the neighbour's pixels are (it was recorded done with ``margin_cubes {}``, for good)."""
    grid = TileGrid(BLOCK_T)
    period = parse_periods(PERIOD)[0]
    ix0, iy0 = BLOCK_LL
    centre = grid.tile(f"32631_{ix0 + 1}_{iy0 + 1}")  # all 8 neighbours but the north-east corner exist
    src = CubeSource(str(block_store), grid=grid)
    clean = src.read(centre, period, 0, 480.0)
    assert clean.status == TileStatus.DONE and f"32631_{ix0}_{iy0}" in clean.margin_cubes
    assert any(f"32631_{ix0 + 2}_{iy0 + 2}" in n for n in clean.notes)  # truly absent: NaN there

    _deny_record(monkeypatch, f"32631_{ix0}_{iy0}")
    with pytest.raises(PermissionError):
        if block:
            src.read_block([centre, grid.tile(f"32631_{ix0 + 1}_{iy0}")], period, 0, 480.0)
        else:
            src.read(centre, period, 0, 480.0)


def test_an_unreadable_record_of_the_tile_itself_fails_the_read(
    block_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grid = TileGrid(BLOCK_T)
    ix0, iy0 = BLOCK_LL
    tid = f"32631_{ix0 + 1}_{iy0 + 1}"
    _deny_record(monkeypatch, tid)
    with pytest.raises(PermissionError):  # was: skipped as "no complete cube for this tile"
        CubeSource(str(block_store), grid=grid).read(grid.tile(tid), parse_periods(PERIOD)[0], 0, 480.0)


_CATALOG_READ = """
import json, sys
from pipelines.cubes import tile_failure_retryable
from pipelines.embed import CatalogSource, parse_periods
from tests.pipelines.cubes.support import GRID, TILE_IDS
item = json.loads(open(sys.argv[1]).read())
source = CatalogSource("file:///unused.json", "sample", ("sentinel-2-l2a",), grid=GRID)
try:
    padded = source.read(GRID.tile(TILE_IDS[0]), parse_periods("2023-06-01/2023-06-30")[0], 0, 0.0, [item])
    print(json.dumps({"status": str(padded.status), "notes": padded.notes}))
except Exception as exc:  # what the embed task turns into a failed TileResult, retryable or not
    print(json.dumps({"error": str(exc), "type": type(exc).__name__, "retryable": tile_failure_retryable(exc)}))
"""


def test_catalog_source_fails_a_tile_whose_local_asset_cannot_be_read(tmp_path: Path) -> None:
    """Embedding straight from items (``CatalogSource``) with a band file it may not read (mode 000):
    the read raises (the tile fails, retried next run) instead of giving a tile without that date
    (``pipelines.cubes.reading`` classified "Permission denied" as a missing file), as an access
    denied that the flow run's retry 30 s later would not pass (``TileResult.retryable`` false; it
    was an ``AssetsUnreachableError``, retryable, as for a server down)."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT, cli_env
    from tests.pipelines.cubes.support import s2_item

    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: file permissions cannot apply")
    item = s2_item(tmp_path / "items", "P")
    (tmp_path / "item.json").write_text(json.dumps(item))
    cmd = [sys.executable, "-c", _CATALOG_READ, str(tmp_path / "item.json")]
    if os.geteuid() == 0:  # root reads a mode-000 file unless it drops these capabilities
        cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", *cmd]

    def read() -> dict[str, Any]:
        run = subprocess.run(cmd, cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        return dict(json.loads(run.stdout.strip().splitlines()[-1]))

    band = Path(item["assets"]["red"]["href"])
    band.chmod(0)
    try:
        denied = read()
    finally:
        band.chmod(0o644)
    assert "Permission denied" in denied.get("error", ""), denied
    assert (denied["type"], denied["retryable"]) == ("AccessDeniedError", False), denied
    assert read() == {"status": str(TileStatus.DONE), "notes": []}
