"""One writer per tile in `aom embed` (pipelines.embed.tasks): a tile is encoded and written only under
its lease in the embeddings store, on local disk and on S3.

Two runs over the same store and tile both encoded and wrote it (last write wins) and both wrote its
completion record; the embed tasks took no lease. Now a run waits while another live run holds the
tile's lease and skips the tile once that run's record is there, as ``aom cubes`` does.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipelines import embeddings as es
from pipelines.embed import run_embedding
from pipelines.runs import TileStatus
from tests.pipelines.embed.test_run import TILES, checkpoint, cubes, reference, request

__all__ = ["checkpoint", "cubes", "reference"]  # session fixtures of test_run, used here too


class Where:
    """The embeddings store of a test: a local folder or a prefix of a moto S3 bucket."""

    def __init__(self, where: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.local = where == "local"
        if self.local:
            self.out, self.options, self.fs = str(tmp_path / "emb"), None, None
        else:
            bucket = request.getfixturevalue("s3_bucket")
            self.out, self.options, self.fs = bucket.url("emb"), bucket.storage_options, bucket.fs

    def key(self, url: str) -> str:
        return url.removeprefix("file://") if self.local else url.removeprefix("s3://")

    def put(self, url: str, data: bytes) -> None:
        if self.local:
            Path(self.key(url)).parent.mkdir(parents=True, exist_ok=True)
            Path(self.key(url)).write_bytes(data)
        else:
            assert self.fs is not None
            self.fs.pipe_file(self.key(url), data)

    def get(self, url: str) -> bytes | None:
        try:
            if self.local:
                return Path(self.key(url)).read_bytes()
            assert self.fs is not None
            self.fs.invalidate_cache()
            return bytes(self.fs.cat_file(self.key(url)))
        except FileNotFoundError:
            return None

    def rm(self, url: str) -> None:
        if self.local:
            os.unlink(self.key(url))
        else:
            assert self.fs is not None
            self.fs.rm_file(self.key(url))

    def run(self, checkpoint: Path, cubes: Path, **kw: Any) -> Any:
        extra: dict[str, Any] = (
            {} if self.local else {"storage_options": self.options, "input_storage_options": {}}
        )
        return run_embedding(request(checkpoint, self.out, cubes, **extra, **kw))


def _lease_url(out: str, version: str, tile_id: str) -> str:
    """Where a tile's lease is (docs/safety.md: ``<out>/_leases/tile@<version>@t<i>@<tile_id>.json``)."""
    return f"{out}/_leases/tile@{version}@t0@{tile_id}.json"


def test_the_tile_lease_is_where_the_docs_say(tmp_path: Path) -> None:
    url = es.tile_lease(str(tmp_path / "emb"), "tiny-abc", "32631_95_649", 0).url
    assert url.removeprefix("file://") == _lease_url(str(tmp_path / "emb"), "tiny-abc", "32631_95_649")


def _lease_of(pid: int, owner: str = "otherrun") -> bytes:
    """A lease as run ``owner`` (process ``pid`` of this host) holds it, with a fresh heartbeat."""
    now = time.time()
    info = {"owner": owner, "host": socket.gethostname(), "pid": pid, "acquired": now, "heartbeat": now}
    return json.dumps(info | {"ttl_s": 600.0}).encode()


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


def _count_writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tile ids ``write_tile`` is called for (the embed tasks call it as ``es.write_tile``)."""
    calls: list[str] = []
    real = es.write_tile

    def counting(root: str, version: str, tile: Any, *a: Any, **k: Any) -> Any:
        calls.append(tile.tile_id)
        return real(root, version, tile, *a, **k)

    monkeypatch.setattr(es, "write_tile", counting)
    return calls


def _later(seconds: float, action: Callable[[], None]) -> threading.Thread:
    def run() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _when(event: threading.Event, action: Callable[[], None], timeout_s: float = 30.0) -> threading.Thread:
    """``action`` in a thread once ``event`` is set (or after ``timeout_s``: a run that never waits)."""

    def run() -> None:
        event.wait(timeout_s)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_tile_another_live_run_is_writing_is_waited_for_then_skipped_never_written_twice(
    tmp_path: Path,
    checkpoint: Path,
    cubes: Path,
    reference: tuple[Path, Any],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    where: str,
) -> None:
    """Another live run holds tile 0's lease and records the tile a moment later: this run waits,
    then reports it skipped (written by that run), and never encodes or writes it. (Without a lease
    both runs wrote the tile and its record.)"""
    store = Where(where, tmp_path, request)
    ref_out, ref = reference
    lease_url = _lease_url(store.out, ref.version, TILES[0])
    record_url = es.record_url(store.out, ref.version, TILES[0], 0)
    other_record = Path(es.record_url(str(ref_out), ref.version, TILES[0], 0).removeprefix("file://"))
    store.put(lease_url, _lease_of(os.getppid()))  # the other run, writing tile 0 now

    def other_run_finishes() -> None:
        store.put(record_url, other_record.read_bytes())
        store.rm(lease_url)

    import pipelines.embed.claims as claims

    waiting = threading.Event()  # set once this run looks at tile 0's lease held by the other run
    real = claims.written_meanwhile

    def looking(ctx: Any, tile_id: str, *a: Any) -> bool:
        if tile_id == TILES[0]:
            waiting.set()
        return real(ctx, tile_id, *a)

    monkeypatch.setattr(claims, "written_meanwhile", looking)
    writes = _count_writes(monkeypatch)
    finisher = _when(waiting, other_run_finishes)
    s = store.run(checkpoint, cubes)
    finisher.join()
    by = {r.tile_id: r for r in s.results}
    assert by[TILES[0]].status == TileStatus.SKIPPED, s.format()
    assert "written by another run meanwhile" in by[TILES[0]].reason
    assert by[TILES[1]].status == TileStatus.DONE, s.format()
    assert writes == [TILES[1]]  # tile 0 was written once, by the other run
    assert store.get(record_url) == other_record.read_bytes()
    assert store.get(lease_url) is None  # nothing left of either lease
    assert store.get(_lease_url(store.out, ref.version, TILES[1])) is None


def test_a_run_whose_tile_lease_was_taken_over_never_records_the_tile(
    tmp_path: Path,
    checkpoint: Path,
    cubes: Path,
    reference: tuple[Path, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run stalled past its lease's TTL while encoding: another run took the tile's lease over.
    The stalled run writes no record (the tile fails, the next run redoes it) and leaves the other
    run's lease alone."""
    import pipelines.embed.tasks as tasks

    _, ref = reference
    out = tmp_path / "emb"
    lease_path = Path(_lease_url(str(out), ref.version, TILES[0]))
    real = tasks.embed_region

    def taken_over_meanwhile(*a: Any, **k: Any) -> Any:
        region = real(*a, **k)
        lease_path.parent.mkdir(parents=True, exist_ok=True)
        lease_path.write_bytes(_lease_of(os.getppid()))  # the other run's lease now
        return region

    monkeypatch.setattr(tasks, "embed_region", taken_over_meanwhile)
    s = run_embedding(request(checkpoint, out, cubes, tiles=(TILES[0],)))
    (r,) = s.results
    assert r.status == TileStatus.FAILED and "LeaseLostError" in r.reason, s.format()
    assert not es.tile_is_complete(str(out), ref.version, TILES[0], 0)
    assert json.loads(lease_path.read_bytes())["owner"] == "otherrun"


def test_a_live_writer_that_ends_without_a_record_leaves_the_tile_to_this_run(
    tmp_path: Path, checkpoint: Path, cubes: Path, reference: tuple[Path, Any]
) -> None:
    _, ref = reference
    out = tmp_path / "emb"
    lease_path = Path(_lease_url(str(out), ref.version, TILES[0]))
    lease_path.parent.mkdir(parents=True)
    lease_path.write_bytes(_lease_of(os.getppid()))
    failer = _later(1.0, lambda: os.unlink(lease_path))  # the other run failed: released, no record
    s = run_embedding(request(checkpoint, out, cubes, tiles=(TILES[0],)))
    failer.join()
    (r,) = s.results
    assert r.status == TileStatus.DONE, s.format()
    assert es.tile_is_complete(str(out), ref.version, TILES[0], 0)


def test_tile_leases_of_killed_runs_are_taken_over_or_removed(
    tmp_path: Path, checkpoint: Path, cubes: Path, reference: tuple[Path, Any]
) -> None:
    """A run killed while writing tile 1 left its lease (taken over at once: its process is gone); a
    run killed between tile 0's record and its lease's release left a lease that no writer takes
    again (the tile is skipped): the next run removes it."""
    _, ref = reference
    out = tmp_path / "emb"
    first = run_embedding(request(checkpoint, out, cubes, tiles=(TILES[0],)))
    assert first.done == 1, first.format()
    dead = _dead_pid()
    leases = [Path(_lease_url(str(out), ref.version, t)) for t in TILES]
    for path in leases:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_lease_of(dead, owner=f"killed-{path.name}"))
    s = run_embedding(request(checkpoint, out, cubes))
    by = {r.tile_id: r.status for r in s.results}
    assert by == {TILES[0]: TileStatus.SKIPPED, TILES[1]: TileStatus.DONE}, s.format()
    assert not (out / "_leases").exists()


def test_a_tile_embedded_again_is_skipped_only_when_another_run_rewrote_its_record(
    tmp_path: Path, checkpoint: Path, cubes: Path
) -> None:
    """The 'done meanwhile' test of a tile embedded again (its inputs changed): its record exists all
    along, so only a record other than the one it replaces counts."""
    from pipelines.embed import plan_run
    from pipelines.embed.claims import record_digest, written_meanwhile

    out = tmp_path / "emb"
    s = run_embedding(request(checkpoint, out, cubes, tiles=(TILES[0],)))
    ctx = plan_run(request(checkpoint, out, cubes, tiles=(TILES[0],))).context
    replaces = record_digest(ctx, TILES[0], 0)
    assert replaces is not None and not written_meanwhile(ctx, TILES[0], 0, replaces)
    path = Path(es.record_url(str(out), s.version, TILES[0], 0))
    rec = json.loads(path.read_text())
    path.write_text(json.dumps({**rec, "written": "2099-01-01T00:00:00+00:00"}))  # another run's
    assert written_meanwhile(ctx, TILES[0], 0, replaces)
    assert written_meanwhile(
        ctx, TILES[0], 0, None
    )  # a tile without a record when claimed: any record counts


def test_two_concurrent_runs_over_one_tile_encode_and_write_it_once(
    tmp_path: Path, checkpoint: Path, cubes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two real runs (threads of this process) over the same store and tile: run A encodes while run B
    reaches the tile. B waits for A's lease and skips the tile once A's record is there; the tile is
    written once and recorded once. (Both used to encode and write it.)"""
    import pipelines.embed.claims as claims
    import pipelines.embed.tasks as tasks

    out = tmp_path / "emb"
    a_encoding, b_waiting = threading.Event(), threading.Event()
    names: dict[int, str] = {}
    real_region, real_meanwhile = tasks.embed_region, claims.written_meanwhile

    def region(*a: Any, **k: Any) -> Any:
        if names.get(threading.get_ident()) == "A":
            a_encoding.set()
            b_waiting.wait(20)  # A holds the tile (its lease, on the fixed code) until B is at it
        return real_region(*a, **k)

    def meanwhile(ctx: Any, *a: Any) -> bool:
        if names.get(threading.get_ident()) == "B":
            b_waiting.set()
        return real_meanwhile(ctx, *a)

    monkeypatch.setattr(tasks, "embed_region", region)
    monkeypatch.setattr(claims, "written_meanwhile", meanwhile)
    writes = _count_writes(monkeypatch)
    summaries: dict[str, Any] = {}

    def run(name: str) -> None:
        names[threading.get_ident()] = name
        summaries[name] = run_embedding(request(checkpoint, out, cubes, tiles=(TILES[0],)))

    a = threading.Thread(target=run, args=("A",))
    a.start()
    assert a_encoding.wait(120)  # A is encoding the tile now
    b = threading.Thread(target=run, args=("B",))
    b.start()
    a.join(120)
    b.join(120)
    (ra,), (rb,) = summaries["A"].results, summaries["B"].results
    assert ra.status == TileStatus.DONE, summaries["A"].format()
    assert rb.status == TileStatus.SKIPPED and "another run" in rb.reason, summaries["B"].format()
    assert writes == [TILES[0]]
    assert not (out / "_leases").exists()


# ------------------------------------------------------------------------------------------
# Waiting for another run's tile: never in a task, never before the pixels, never without limit


def _first_and_second(checkpoint: Path, out: Path, cubes: Path) -> tuple[str, str]:
    """The tile of the run's first unit and of its second (the order units are taken in)."""
    from pipelines.embed import plan_run

    units = plan_run(request(checkpoint, out, cubes)).units
    return units[0].tiles[0].tile_id, units[1].tiles[0].tile_id


class _Holder:
    """Another live run holding ``tile``'s lease (this host, a running process) that writes the
    tile's record and releases its lease when :meth:`finish` is called, as that run would."""

    def __init__(self, out: Path, version: str, tile: str, ref_out: Path, **lease: Any) -> None:
        self.lease = Path(_lease_url(str(out), version, tile))
        self.record = Path(es.record_url(str(out), version, tile, 0).removeprefix("file://"))
        self.ref_record = Path(es.record_url(str(ref_out), version, tile, 0).removeprefix("file://"))
        self.lease.parent.mkdir(parents=True, exist_ok=True)
        info = json.loads(_lease_of(os.getppid())) | lease
        self.lease.write_bytes(json.dumps(info).encode())
        self.finished = threading.Event()

    def finish(self, record: bool = True) -> None:
        if self.finished.is_set():
            return
        self.finished.set()
        if record:
            self.record.parent.mkdir(parents=True, exist_ok=True)
            self.record.write_bytes(self.ref_record.read_bytes())
        if self.lease.exists():
            os.unlink(self.lease)


def _in_thread(fn: Callable[[], Any], timeout_s: float, then: Callable[[], None]) -> tuple[Any, bool]:
    """``fn()`` in a thread: (its result, whether it ended within ``timeout_s``); ``then()`` runs
    after the wait either way (it frees a run stuck waiting, so the test ends on the old code too)."""
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    thread.join(timeout_s)
    ended = not thread.is_alive()
    then()
    thread.join(120)
    return (out[0] if out else None), ended


def test_a_tile_another_run_holds_does_not_hold_up_the_other_tiles(
    tmp_path: Path,
    checkpoint: Path,
    cubes: Path,
    reference: tuple[Path, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another live run writes the run's first tile and finishes only after this run has written its
    second. The task waiting for the first tile's lease kept its slot (in-process: the only one), so
    the second tile was never encoded and both runs waited for each other. Now the contested tile
    goes to the end of the queue: the second tile is encoded and written, then the first is skipped."""
    from pipelines.outputs import lease_info

    ref_out, ref = reference
    out = tmp_path / "emb"
    first, second = _first_and_second(checkpoint, out, cubes)
    holder = _Holder(out, ref.version, first, ref_out)
    monkeypatch.setattr(lease_info, "POLL_S", 0.05, raising=False)
    writes: list[str] = []
    real = es.write_tile

    def write_tile(root: str, version: str, tile: Any, *a: Any, **k: Any) -> Any:
        writes.append(tile.tile_id)
        rec = real(root, version, tile, *a, **k)
        if tile.tile_id == second:
            holder.finish()  # the other run records the first tile once this one wrote the second
        return rec

    monkeypatch.setattr(es, "write_tile", write_tile)
    s, ended = _in_thread(lambda: run_embedding(request(checkpoint, out, cubes)), 60, holder.finish)
    assert ended, "the run waited for the first tile and never encoded the second"
    by = {r.tile_id: r for r in s.results}
    assert writes == [second]
    assert by[second].status == TileStatus.DONE, s.format()
    assert by[first].status == TileStatus.SKIPPED and "another run" in by[first].reason, s.format()
    assert holder.record.read_bytes() == holder.ref_record.read_bytes()
    assert not (out / "_leases").exists()


def test_a_tile_another_run_records_meanwhile_is_skipped_without_reading_its_pixels(
    tmp_path: Path,
    checkpoint: Path,
    cubes: Path,
    reference: tuple[Path, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another live run holds tile 0's lease and records the tile right after this run first looks
    at its record. The run read tile 0's pixels first (the record was not there yet) and only then
    met the lease: a read for nothing. Now the run takes the lease, and reads the record under it,
    before any pixel: tile 0 is skipped unread, tile 1 read and written."""
    from pipelines.embed.sources import CubeSource
    from pipelines.outputs import lease_info

    ref_out, ref = reference
    out = tmp_path / "emb"
    holder = _Holder(out, ref.version, TILES[0], ref_out)
    monkeypatch.setattr(lease_info, "POLL_S", 0.05, raising=False)
    real_complete = es.tile_is_complete

    def tile_is_complete(root: str, version: str, tile_id: str, *a: Any, **k: Any) -> bool:
        done = real_complete(root, version, tile_id, *a, **k)
        if tile_id == TILES[0]:
            holder.finish()  # recorded by the other run just after this run's first look
        return done

    monkeypatch.setattr(es, "tile_is_complete", tile_is_complete)
    reads: list[str] = []
    real_read, real_block = CubeSource.read, CubeSource.read_block

    def read(self: Any, tile: Any, *a: Any, **k: Any) -> Any:
        reads.append(tile.tile_id)
        return real_read(self, tile, *a, **k)

    def read_block(self: Any, tiles: Any, *a: Any, **k: Any) -> Any:
        reads.extend(t.tile_id for t in tiles)
        return real_block(self, tiles, *a, **k)

    monkeypatch.setattr(CubeSource, "read", read)
    monkeypatch.setattr(CubeSource, "read_block", read_block)
    writes = _count_writes(monkeypatch)
    s, ended = _in_thread(lambda: run_embedding(request(checkpoint, out, cubes)), 60, holder.finish)
    assert ended, s
    by = {r.tile_id: r for r in s.results}
    assert by[TILES[0]].status == TileStatus.SKIPPED and "another run" in by[TILES[0]].reason, s.format()
    assert by[TILES[1]].status == TileStatus.DONE, s.format()
    assert TILES[0] not in reads and TILES[1] in reads
    assert writes == [TILES[1]]


@pytest.fixture
def lease_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The leases' wall clock (``lease_info.clock``), moved only by the test: ``[t]``."""
    from pipelines.outputs import lease_info

    t = [time.time()]
    monkeypatch.setattr(lease_info, "clock", lambda: t[0])
    return t


def test_a_tile_another_run_keeps_leased_too_long_fails_naming_it_and_a_rerun_writes_it(
    tmp_path: Path,
    checkpoint: Path,
    cubes: Path,
    reference: tuple[Path, Any],
    monkeypatch: pytest.MonkeyPatch,
    lease_clock: list[float],
) -> None:
    """Another run holds the first tile's lease and hangs, its heartbeat fresh. The run waited for it
    without limit (and, in-process, never reached the second tile). Now it waits at most
    HOLDER_WAIT_S on the lease clock (here: the clock moves on while the second tile is written),
    then reports the tile failed naming the other run, unrecorded; once that run is gone a rerun
    writes it."""
    from pipelines.outputs import lease_info

    wait_s = getattr(lease_info, "HOLDER_WAIT_S", 1800.0)  # (the code before it had no limit)
    ref_out, ref = reference
    out = tmp_path / "emb"
    first, second = _first_and_second(checkpoint, out, cubes)
    holder = _Holder(out, ref.version, first, ref_out, heartbeat=lease_clock[0], ttl_s=1e9)
    monkeypatch.setattr(lease_info, "POLL_S", 0.05, raising=False)
    real = es.write_tile

    def write_tile(root: str, version: str, tile: Any, *a: Any, **k: Any) -> Any:
        rec = real(root, version, tile, *a, **k)
        if tile.tile_id == second:
            lease_clock[0] += wait_s + 1  # the other run still holds the first tile
        return rec

    monkeypatch.setattr(es, "write_tile", write_tile)
    s, ended = _in_thread(
        lambda: run_embedding(request(checkpoint, out, cubes)), 60, lambda: holder.finish(record=False)
    )
    assert ended, "the run still waits for a run that never lets the tile go"
    by = {r.tile_id: r for r in s.results}
    assert by[second].status == TileStatus.DONE, s.format()
    assert by[first].status == TileStatus.FAILED, s.format()
    assert "LeaseHeldError" in by[first].reason and "run otherrun" in by[first].reason, s.format()
    assert not es.tile_is_complete(str(out), ref.version, first, 0)
    assert list(s.failed) == [f"{first}@t0"] and not s.complete
    monkeypatch.setattr(es, "write_tile", real)
    again = run_embedding(request(checkpoint, out, cubes))  # the other run is gone now
    assert {r.tile_id: r.status for r in again.results} == {
        first: TileStatus.DONE,
        second: TileStatus.SKIPPED,
    }, again.format()


@pytest.mark.parametrize("wait_min", [0.0, 0.005])
def test_a_tile_another_run_holds_fails_after_the_holder_wait_the_request_gives(
    wait_min: float,
    tmp_path: Path,
    checkpoint: Path,
    cubes: Path,
    reference: tuple[Path, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The wait for a tile another live run holds (and renews) was the constant HOLDER_WAIT_S, 30 min,
    for every run. Now the request gives it (``holder_wait_min``; ``aom embed --holder-wait``): after
    that long (0: at once) the tile is reported failed naming the other run, unrecorded, and the
    other tiles are written all the same."""
    from pipelines.outputs import lease_info

    ref_out, ref = reference
    out = tmp_path / "emb"
    first, second = _first_and_second(checkpoint, out, cubes)
    holder = _Holder(out, ref.version, first, ref_out, heartbeat=time.time(), ttl_s=1e9)
    monkeypatch.setattr(lease_info, "POLL_S", 0.05, raising=False)
    t0 = time.monotonic()
    s, ended = _in_thread(
        lambda: run_embedding(request(checkpoint, out, cubes, holder_wait_min=wait_min)),
        60,
        lambda: holder.finish(record=False),
    )
    assert ended and s is not None, "the run still waits for a run that never lets the tile go"
    assert time.monotonic() - t0 >= wait_min * 60
    by = {r.tile_id: r for r in s.results}
    assert by[second].status == TileStatus.DONE, s.format()
    assert by[first].status == TileStatus.FAILED, s.format()
    assert "LeaseHeldError" in by[first].reason and "run otherrun" in by[first].reason, s.format()
    assert by[first].retryable and s.failed_retryable == {f"{first}@t0": True}  # the holder may be done
    assert not es.tile_is_complete(str(out), ref.version, first, 0)


@pytest.mark.slow
def test_on_a_local_cluster_a_tile_another_run_holds_keeps_no_encoder_slot(
    tmp_path: Path, checkpoint: Path, cubes: Path, reference: tuple[Path, Any]
) -> None:
    """One Dask worker, one encoder slot: the embed task of the first tile waited for the other run's
    lease holding the slot, so the second tile's embed task could not run until that run finished.
    The other run here finishes only once the second tile is recorded: now it is (the contested tile
    waits in the client, not in a task), and the first tile is then skipped."""
    ref_out, ref = reference
    out = tmp_path / "emb"
    first, second = _first_and_second(checkpoint, out, cubes)
    holder = _Holder(out, ref.version, first, ref_out)
    timed_out = threading.Event()

    def finish_once_second_is_recorded() -> None:
        deadline = time.monotonic() + 120
        while not es.tile_is_complete(str(out), ref.version, second, 0):
            if time.monotonic() > deadline:
                timed_out.set()
                break
            time.sleep(0.2)
        holder.finish()

    watcher = threading.Thread(target=finish_once_second_is_recorded, daemon=True)
    watcher.start()
    s = run_embedding(  # the worker's one encoder slot, required by the embed tasks
        request(checkpoint, out, cubes, workers=1, threads_per_worker=2, gpu_resource="encoder")
    )
    watcher.join()
    assert not timed_out.is_set(), "the second tile waited for the first tile's encoder slot"
    by = {r.tile_id: r for r in s.results}
    assert by[second].status == TileStatus.DONE, s.format()
    assert by[first].status == TileStatus.SKIPPED and "another run" in by[first].reason, s.format()
    assert holder.record.read_bytes() == holder.ref_record.read_bytes()
