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

    import pipelines.embed.tasks as tasks

    waiting = threading.Event()  # set once this run looks at tile 0's lease held by the other run
    real = getattr(tasks, "_written_meanwhile", None)

    def looking(ctx: Any, padded: Any) -> bool:
        if padded.tile.tile_id == TILES[0]:
            waiting.set()
        assert real is not None
        return bool(real(ctx, padded))

    monkeypatch.setattr(tasks, "_written_meanwhile", looking, raising=False)
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
    from pipelines.embed.sources import PaddedTile
    from pipelines.embed.tasks import _written_meanwhile, record_digest

    out = tmp_path / "emb"
    s = run_embedding(request(checkpoint, out, cubes, tiles=(TILES[0],)))
    ctx = plan_run(request(checkpoint, out, cubes, tiles=(TILES[0],))).context
    tile = next(t for t in plan_run(request(checkpoint, out, cubes, tiles=(TILES[0],))).tiles)
    padded = PaddedTile(tile, 0, 0.0, replaces=record_digest(ctx, TILES[0], 0))
    assert padded.replaces is not None and not _written_meanwhile(ctx, padded)
    path = Path(es.record_url(str(out), s.version, TILES[0], 0))
    rec = json.loads(path.read_text())
    path.write_text(json.dumps({**rec, "written": "2099-01-01T00:00:00+00:00"}))  # another run's
    assert _written_meanwhile(ctx, padded)
    fresh = PaddedTile(tile, 0, 0.0)  # a tile without a record when loaded: any record counts
    assert _written_meanwhile(ctx, fresh)


def test_two_concurrent_runs_over_one_tile_encode_and_write_it_once(
    tmp_path: Path, checkpoint: Path, cubes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two real runs (threads of this process) over the same store and tile: run A encodes while run B
    reaches the tile. B waits for A's lease and skips the tile once A's record is there; the tile is
    written once and recorded once. (Both used to encode and write it.)"""
    import pipelines.embed.tasks as tasks

    out = tmp_path / "emb"
    a_encoding, b_waiting = threading.Event(), threading.Event()
    names: dict[int, str] = {}
    real_region, real_meanwhile = tasks.embed_region, getattr(tasks, "_written_meanwhile", None)

    def region(*a: Any, **k: Any) -> Any:
        if names.get(threading.get_ident()) == "A":
            a_encoding.set()
            b_waiting.wait(20)  # A holds the tile (its lease, on the fixed code) until B is at it
        return real_region(*a, **k)

    def meanwhile(ctx: Any, padded: Any) -> bool:
        if names.get(threading.get_ident()) == "B":
            b_waiting.set()
        assert real_meanwhile is not None
        return bool(real_meanwhile(ctx, padded))

    monkeypatch.setattr(tasks, "embed_region", region)
    monkeypatch.setattr(tasks, "_written_meanwhile", meanwhile, raising=False)
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
