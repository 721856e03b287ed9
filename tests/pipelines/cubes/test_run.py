"""Cube runs end to end: the `aom cubes` CLI, object storage (moto S3, endpoint down mid-write),
a process killed mid-run, and a dask.distributed client. Outputs are compared array by array with
a clean, uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from pipelines.cubes import CubeStore, write_cubes
from pipelines.cubes.store import LEASE_TTL_S, LEASES_DIR
from tests.conftest import REPO_ROOT, aom_command, cli_env, kill_after
from tests.pipelines.cubes.support import (
    GRID,
    TILE_IDS,
    X0,
    Y0,
    assert_stores_equal,
    s2_item,
    spec,
)
from tests.sigterm import held_pool, sigterm_when, wait_for_the_signal

runner = CliRunner()


@pytest.fixture
def items(built: dict[str, Any]) -> list[dict[str, Any]]:
    """The shared scene's items A and B (``conftest.py``)."""
    return built["items"]


@pytest.fixture
def clean(built: dict[str, Any]) -> CubeStore:
    """The shared clean, uninterrupted run of ``items`` over the 2 x 2 tiles."""
    return CubeStore.open(str(built["out"]))


def _ndjson(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_builds_reruns_and_summarises(
    items: list[dict[str, Any]], clean: CubeStore, tmp_path: Path
) -> None:
    from flows.cli import app

    nd = _ndjson(tmp_path / "items.ndjson", items)
    out = tmp_path / "cubes"
    args = ["cubes", "--items", str(nd), "--out", str(out), "--tile-size-m", "1920", "--no-progress"]
    two = ",".join(TILE_IDS[:2])
    result = runner.invoke(app, [*args, "--tiles", two, "--summary-json", str(tmp_path / "summary.json")])
    assert result.exit_code == 0, result.output
    assert "2 item(s) of sentinel-2-l2a; 2 tile(s) of 1920 m" in result.output
    assert "2 tile(s): 2 done" in result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["done"] == 2 and summary["useful"] is True
    assert_stores_equal(CubeStore.open(str(out)), clean, TILE_IDS[:2])
    again = runner.invoke(app, [*args, "--tiles", two])
    assert again.exit_code == 0 and "0 done, 2 already complete" in again.output
    # without --tiles: every tile the items touch (the 2 x 2 scene); --bbox narrows that down
    # (a --bbox away from the items leaves nothing to build: bad input, exit 2, the store untouched)
    plan = runner.invoke(app, [*args, "--bbox", "0,0,1,1"])
    assert "no tile to build" in plan.output and "--bbox 0,0,1,1" in plan.output and plan.exit_code == 2


def test_cli_exits_nonzero_when_nothing_useful(items: list[dict[str, Any]], tmp_path: Path) -> None:
    from flows.cli import app

    broken = json.loads(json.dumps(items[0]))
    for asset in broken["assets"].values():
        asset["href"] = str(tmp_path / "missing" / Path(asset["href"]).name)
    nd = _ndjson(tmp_path / "items.ndjson", [broken])
    args = ["cubes", "--items", str(nd), "--out", str(tmp_path / "c"), "--tile-size-m", "1920"]
    args += ["--tiles", TILE_IDS[0], "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "nothing useful was produced" in result.output
    assert "cannot open" in result.output
    # the rerun finds the tile recorded empty: still nothing useful (before: exit 0, as if it held data)
    again = runner.invoke(app, args)
    assert again.exit_code == 1, again.output
    assert "0 done, 0 already complete, 1 already recorded empty" in again.output
    assert "nothing useful was produced" in again.output
    assert "already recorded empty: every item touching the tile was left out" in again.output
    bad = runner.invoke(
        app, ["cubes", "--items", str(nd), "--out", str(tmp_path / "c"), "--tile-size-m", "7000"]
    )
    assert bad.exit_code == 2


# ---------------------------------------------------------------------------------------------
# object storage


def _fast_fail(options: dict[str, Any]) -> dict[str, Any]:
    """s3fs/botocore options that give up quickly when the endpoint is down."""
    return {
        **options,
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2, "read_timeout": 5},
    }


@pytest.mark.integration
def test_cubes_on_s3_read_back_equal(items: list[dict[str, Any]], clean: CubeStore, s3_bucket: Any) -> None:
    url = s3_bucket.url("cubes")
    aws_env_before = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    summary = write_cubes(items, TILE_IDS[:2], spec(), url, s3_bucket.storage_options, progress=False)
    assert summary.tiles_done == TILE_IDS[:2]
    store = CubeStore.open(url, s3_bucket.storage_options)
    assert store.complete_tiles() == TILE_IDS[:2]
    assert_stores_equal(store, clean, TILE_IDS[:2])
    # credentials never reach the store, the environment, or the summary
    fs = s3_bucket.fs
    secret = s3_bucket.service.secret
    for path in fs.find(f"{s3_bucket.name}/cubes"):
        if path.endswith(".json"):
            assert secret not in fs.cat_file(path).decode()
    assert {k: v for k, v in os.environ.items() if k.startswith("AWS_")} == aws_env_before  # nothing exported
    assert secret not in json.dumps(summary.to_dict())


@pytest.mark.integration
def test_s3_endpoint_down_mid_write_then_resume(
    items: list[dict[str, Any]], clean: CubeStore, s3: Any, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = s3_bucket.url("cubes")
    options = _fast_fail(s3_bucket.storage_options)
    original = CubeStore.write_group
    calls: list[str] = []

    def write_group_then_cut(self: CubeStore, tile_id: str, ds: Any, **kw: Any) -> list[float]:
        out = original(self, tile_id, ds, **kw)
        calls.append(tile_id)
        if tile_id == TILE_IDS[1] and calls.count(tile_id) == 1:
            s3.stop()  # the endpoint goes down with tile 2 half written (one group of three)
        return out

    monkeypatch.setattr(CubeStore, "write_group", write_group_then_cut)
    first = write_cubes(items, TILE_IDS[:3], spec(), url, options, progress=False)
    assert first.tiles_done == [TILE_IDS[0]]
    assert set(first.tiles_failed) == set(TILE_IDS[1:3])  # tile 2 cut mid-write, tile 3 never started
    assert first.tiles_failed_retryable == dict.fromkeys(TILE_IDS[1:3], True)  # the endpoint may be back
    assert first.exit_code == 0  # something useful (tile 1) was produced
    s3.start()
    monkeypatch.setattr(CubeStore, "write_group", original)
    store = CubeStore.open(url, options)
    assert store.complete_tiles() == [TILE_IDS[0]]  # the half-written tile is invisible
    second = write_cubes(items, TILE_IDS[:3], spec(), url, options, progress=False)
    assert second.tiles_skipped == {TILE_IDS[0]: "already complete (record exists)"}
    assert sorted(second.tiles_done) == sorted(TILE_IDS[1:3])
    assert store.complete_tiles() == TILE_IDS[:3]
    assert_stores_equal(store, clean, TILE_IDS[:3])


# ---------------------------------------------------------------------------------------------
# killed mid-run


def test_a_tile_left_with_an_unreadable_lease_is_built_once_it_expires(
    items: list[dict[str, Any]], clean: CubeStore, tmp_path: Path
) -> None:
    """A run killed while creating a tile's lease (older versions left it empty): the next run
    builds and records the tile once the lease has expired, instead of failing it on every rerun."""
    out = tmp_path / "cubes"
    lease = out / LEASES_DIR / f"{TILE_IDS[0]}.json"
    lease.parent.mkdir(parents=True)
    lease.write_bytes(b"")
    written = time.time() - LEASE_TTL_S - 1
    os.utime(lease, (written, written))
    summary = write_cubes(items, TILE_IDS[:1], spec(), str(out), progress=False)
    assert summary.tiles_done == TILE_IDS[:1], summary.to_dict()
    assert not lease.parent.exists()
    assert_stores_equal(CubeStore.open(str(out)), clean, TILE_IDS[:1])


def test_a_tile_another_run_keeps_leased_too_long_fails_naming_it_and_a_rerun_builds_it(
    items: list[dict[str, Any]], clean: CubeStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another run holds a tile's lease and hangs, its heartbeat still fresh: the run waited for it
    without limit. Now it waits at most HOLDER_WAIT_S on the lease clock (the rule `aom embed`
    follows too), then reports the tile failed, naming that run, and leaves it unrecorded; a rerun
    after that run is gone builds it."""
    import threading

    from pipelines.outputs import lease_info

    WAIT_S = getattr(lease_info, "HOLDER_WAIT_S", 1800.0)  # (the code before it had no limit)
    out = tmp_path / "cubes"
    first = write_cubes(items, TILE_IDS[1:2], spec(), str(out), progress=False)  # the store exists
    assert first.tiles_done == TILE_IDS[1:2], first.to_dict()
    t = [time.time()]
    monkeypatch.setattr(lease_info, "clock", lambda: t[0])  # the lease clock, moved by the test only
    monkeypatch.setattr(lease_info, "POLL_S", 0.01, raising=False)
    hung = CubeStore(str(out)).tile_lease(TILE_IDS[0], ttl_s=1e9)  # never expires, no heartbeat
    assert hung.try_acquire() is None
    real = CubeStore.has_record

    def has_record(self: CubeStore, tile_id: str) -> bool:  # each look of the waiter: time passes
        t[0] += WAIT_S / 4
        return real(self, tile_id)

    monkeypatch.setattr(CubeStore, "has_record", has_record)
    result: list[Any] = []
    thread = threading.Thread(
        target=lambda: result.append(write_cubes(items, TILE_IDS[:1], spec(), str(out), progress=False))
    )
    thread.start()
    thread.join(60)
    try:
        assert not thread.is_alive(), "the run still waits for a holder that never lets go"
        (summary,) = result
        reason = summary.tiles_failed[TILE_IDS[0]]
        assert "LeaseHeldError" in reason and f"run {hung.owner[:8]}" in reason, summary.to_dict()
        assert TILE_IDS[0] not in CubeStore.open(str(out)).complete_tiles()
        held = hung.read()
        assert held is not None and held.owner == hung.owner  # still the hung run's lease
    finally:
        hung.release()  # lets a run that never gives up (the old code) end
        thread.join(60)
    again = write_cubes(items, TILE_IDS[:1], spec(), str(out), progress=False)
    assert again.tiles_done == TILE_IDS[:1], again.to_dict()
    assert_stores_equal(CubeStore.open(str(out)), clean, TILE_IDS[:2])


@pytest.mark.parametrize("wait_s", [0.0, 0.3])
def test_a_tile_another_run_holds_fails_after_the_holder_wait_the_caller_gives(
    wait_s: float, items: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait for a tile another live run holds (and renews) was the constant HOLDER_WAIT_S, 30 min,
    for every run. Now the caller gives it (``holder_wait_s``; ``aom cubes --holder-wait``): the tile
    is reported failed, naming that run, after that long on the lease clock (0: at once), and the
    holder's lease is left as it is."""
    from pipelines.outputs import lease_info

    out = tmp_path / "cubes"
    first = write_cubes(items, TILE_IDS[1:2], spec(), str(out), progress=False)  # the store exists
    assert first.tiles_done == TILE_IDS[1:2], first.to_dict()
    monkeypatch.setattr(lease_info, "POLL_S", 0.01)
    hung = CubeStore(str(out)).tile_lease(TILE_IDS[0], ttl_s=1e9)  # live, never expires, no heartbeat
    assert hung.try_acquire() is None
    try:
        t0 = time.monotonic()
        summary = write_cubes(items, TILE_IDS[:1], spec(), str(out), progress=False, holder_wait_s=wait_s)
        waited = time.monotonic() - t0
        reason = summary.tiles_failed[TILE_IDS[0]]
        assert "LeaseHeldError" in reason and f"run {hung.owner[:8]}" in reason, summary.to_dict()
        assert f"{wait_s:.0f} s" in reason  # the message names the wait it kept
        assert summary.tiles_failed_retryable == {TILE_IDS[0]: True}  # the holder may be done by then
        assert wait_s <= waited < wait_s + 5
        assert TILE_IDS[0] not in CubeStore.open(str(out)).complete_tiles()
        held = hung.read()
        assert held is not None and held.owner == hung.owner  # still the hung run's lease
    finally:
        hung.release()


def _s3_answer(status: int, code: str) -> BaseException:
    """What s3fs raises for an S3 error answer: an OSError caused by botocore's ClientError."""
    from tests.flows.test_common import _s3_error

    return _s3_error(status, code)


@pytest.mark.parametrize(
    ("make", "retryable"),
    [
        (lambda: _s3_answer(403, "AccessDenied"), False),
        (lambda: _s3_answer(503, "SlowDown"), True),
        (lambda: ConnectionResetError(104, "Connection reset by peer"), True),
    ],
    ids=["403", "503", "connection-reset"],
)
def test_a_failed_tile_says_whether_a_rerun_may_pass(
    make: Any, retryable: bool, items: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tile whose write failed was reported failed, nothing more: the ingest flow's retry ran it
    again 30 s later whatever it failed for, a refused write (403) too. The outcome now says, where
    the failure is caught, whether a rerun may pass (``retryable``, also in ``to_dict``)."""

    def refused(self: CubeStore, tile_id: str, ds: Any, **kw: Any) -> list[float]:
        raise make()

    monkeypatch.setattr(CubeStore, "write_group", refused)
    summary = write_cubes(items, TILE_IDS[:1], spec(), str(tmp_path / "cubes"), progress=False)
    assert list(summary.tiles_failed) == TILE_IDS[:1], summary.to_dict()
    assert summary.tiles_failed_retryable == {TILE_IDS[0]: retryable}
    assert summary.to_dict()["outcomes"][0]["retryable"] is retryable
    assert summary.exit_code == 1  # the CLI's exit status is the same either way


@pytest.mark.slow
def test_process_killed_mid_run_then_rerun_is_identical(tmp_path: Path) -> None:
    root = tmp_path / "items"
    # 3 x 1 tiles of 1920 m: one complete, one killed mid-write, one not started
    big = (X0, Y0, X0 + 5760.0, Y0 + 1920.0)
    its = [
        s2_item(root, "K1", bounds=big, cloud_boxes=[(0.1, 0.1, 0.3, 0.5)]),
        s2_item(root, "K2", bounds=big, datetime="2023-06-06T10:30:00Z", seed=5),
    ]
    nd = _ndjson(tmp_path / "items.ndjson", its)
    out = tmp_path / "cubes"
    cmd = aom_command(
        "cubes", "--items", str(nd), "--out", str(out), "--tile-size-m", "1920", "--no-progress"
    )
    records = out / "_tiles"
    # killed with the second tile's first group written, its record not
    kill_after(
        cmd,
        after="pipelines.cubes.store:CubeStore.write_record",
        at="pipelines.cubes.store:CubeStore.write_group",
    )
    n_tiles = len(GRID.tiles_for_items(its))
    done_at_kill = len([p for p in records.iterdir() if p.suffix == ".json"])
    assert done_at_kill == 1 < n_tiles
    rerun = subprocess.run(cmd, cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{done_at_kill} already complete" in rerun.stdout
    clean_out = tmp_path / "clean"
    clean = write_cubes(its, GRID.tiles_for_items(its), spec(), str(clean_out), progress=False)
    assert len(clean.tiles_done) + len(clean.tiles_empty) == n_tiles
    assert_stores_equal(CubeStore.open(str(out)), CubeStore.open(str(clean_out)))


# ---------------------------------------------------------------------------------------------
# dask.distributed


@pytest.mark.slow
def test_tiles_on_a_dask_cluster(items: list[dict[str, Any]], clean: CubeStore, tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        summary = write_cubes(
            items, TILE_IDS, spec(), str(tmp_path / "cubes"), progress=False, dask_client=client
        )
    assert sorted(summary.tiles_done) == sorted(TILE_IDS), summary.tiles_failed
    assert_stores_equal(CubeStore.open(str(tmp_path / "cubes")), clean)


@pytest.mark.slow
def test_parallel_tiles_in_threads(items: list[dict[str, Any]], clean: CubeStore, tmp_path: Path) -> None:
    seen: list[str] = []
    summary = write_cubes(
        items,
        TILE_IDS,
        spec(),
        str(tmp_path / "cubes"),
        progress=False,
        workers=2,
        on_tile=lambda o: seen.append(o.tile_id),
    )
    assert sorted(summary.tiles_done) == sorted(TILE_IDS) == sorted(seen)
    assert [o.tile_id for o in summary.outcomes] == TILE_IDS  # summary in the order asked
    assert_stores_equal(CubeStore.open(str(tmp_path / "cubes")), clean)


# ---------------------------------------------------------------------------------------------
# the embedded sample catalog (synthetic S2/Landsat/HLS in two zones + the real products)


@pytest.mark.slow
def test_cubes_from_the_sample_catalog(tmp_path: Path) -> None:
    from collections import defaultdict

    from pipelines.cubes import CubeSpec
    from pipelines.cubes.run import _ItemIndex
    from pipelines.samples import SyntheticSpec, build_sample_catalog
    from pipelines.tiling import TileGrid

    cat = build_sample_catalog(tmp_path / "sample", synthetic=SyntheticSpec(n_dates=1))
    by_collection: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in cat.items_ndjson.read_text().splitlines():
        item = json.loads(line)
        by_collection[item["collection"]].append(item)
    grid = TileGrid()
    for cid, its in sorted(by_collection.items()):
        first = next((i for i in its if i["id"].startswith("SYN_")), its[0])  # synthetic, else the real one
        tile = grid.tile_at(
            *_valid_lonlat(first, CubeSpec(grid=grid, collections=(cid,)).collection_spec(cid))
        )
        assert _ItemIndex(its).for_tile(tile)
        summary = write_cubes(
            its, [tile], CubeSpec(grid=grid, collections=(cid,)), str(tmp_path / cid), progress=False
        )
        assert summary.tiles_done == [tile.tile_id], (cid, summary.format())
        for ds in CubeStore.open(str(tmp_path / cid)).open_tile(tile.tile_id).values():
            refl = ds["reflectance"].values
            finite = refl[np.isfinite(refl)]
            assert finite.size and finite.min() >= -0.2 and finite.max() <= 1.6, cid


def _valid_lonlat(item: dict[str, Any], cs: Any) -> tuple[float, float]:
    """Lon/lat of a pixel that is valid in the item's first band and quality asset (a median one)."""
    import rasterio
    from pyproj import Transformer

    band = cs.band_names[0]
    qa_key = cs.mask.per_band_assets.get(band) or cs.mask.asset
    with (
        rasterio.open(item["assets"][cs.assets[band]]["href"]) as src,
        rasterio.open(item["assets"][qa_key]["href"]) as qsrc,
    ):
        dn = src.read(1)
        qa = qsrc.read(1, out_shape=dn.shape)
        ok = ~cs.mask.invalid(qa) & (dn != cs.nodata)
        rows, cols = np.nonzero(ok)
        k = len(rows) // 2
        x, y = src.xy(int(rows[k]), int(cols[k]))
        lon, lat = Transformer.from_crs(src.crs, 4326, always_xy=True).transform(x, y)
    return float(lon), float(lat)


@pytest.mark.parametrize("at", ["waiting", "submitting"])
def test_a_sigterm_starts_no_queued_tile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: str) -> None:
    """``workers=2`` keeps 4 tiles submitted: 2 running, 2 queued. A SIGTERM (the ``aom`` handler
    raises :class:`~pipelines.errors.Terminated` in the main thread) waits for the 2 running tiles
    (threads are not interrupted), but used to start the 2 queued ones as well once a worker was
    free, each a whole tile build. Now they are cancelled: only the running tiles end. Also when the
    signal lands inside the last submit, before the run has noted that tile's future."""
    import threading

    import pipelines.cubes.run as run
    from pipelines.cubes.summary import TileOutcome
    from pipelines.errors import Terminated
    from pipelines.runs import TileStatus

    started: list[str] = []
    both_running, release = threading.Event(), threading.Event()

    def tile_job(tile: Any, *args: Any, **kwargs: Any) -> TileOutcome:
        started.append(tile.tile_id)
        if len(started) == 2:
            both_running.set()
        assert release.wait(30)
        return TileOutcome(tile.tile_id, TileStatus.DONE)

    all_submitted = threading.Event()

    def on_submit(n: int) -> None:
        if n == len(TILE_IDS):
            all_submitted.set()  # the signal lands in the run's wait ...
            if at == "submitting":
                wait_for_the_signal()  # ... or here, inside the submit

    Pool = held_pool(release, on_submit)

    monkeypatch.setattr(run, "process_tile", tile_job)
    monkeypatch.setattr(run, "ThreadPoolExecutor", Pool)
    try:
        with (
            sigterm_when(lambda: both_running.wait(30) and all_submitted.wait(30)),
            pytest.raises(Terminated),
        ):
            write_cubes([], TILE_IDS, spec(), str(tmp_path / "cubes"), progress=False, workers=2)
    finally:
        release.set()
    assert sorted(started) == sorted(TILE_IDS[:2]), started
