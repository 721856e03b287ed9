"""Leases: exclusive create, heartbeat, takeover of abandoned leases, on local disk and moto S3."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipelines.outputs import Lease, LeaseHeldError, LeaseInfo, LeaseLostError, lease_info, lease_local

pytest_plugins = ["tests.services.fixtures"]


class _Clock:
    """The leases' wall clock (``lease_info.clock``), moved only by the test: however loaded the machine,
    a lease expires when the test says so, never because a heartbeat thread or the S3 server was slow."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    c = _Clock()
    monkeypatch.setattr(lease_info, "clock", c)
    return c


def _until(what: str, cond: Callable[[], bool], timeout_s: float = 60.0) -> None:
    """Wait for ``cond`` (a background thread's work), however slow the machine."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _read(lease: Lease) -> LeaseInfo:
    """``lease.read()``, asserted present: a missing lease object fails here, by name."""
    info = lease.read()
    assert info is not None, "the lease object is missing"
    return info


def _exercise(url: str, options: dict[str, Any] | None, clock: _Clock) -> None:
    a = Lease(url, options, ttl_s=0.6)  # heartbeat every 0.2 s
    b = Lease(url, options, ttl_s=0.6)
    a.acquire()
    holder = b.try_acquire()
    assert holder is not None and holder.owner == a.owner
    with pytest.raises(LeaseHeldError, match="being written by another run"):
        b.acquire(wait_s=0.3, poll_s=0.1)
    before = a.read()
    clock.t += 10.0  # far past a's TTL: without a heartbeat its lease is abandoned now ...
    assert before is not None and before.expired()
    _until("a's heartbeat", lambda: _read(a).heartbeat == clock.t)
    a._stop.set()  # no renewal after the one seen: b reads a's last heartbeat
    assert a._thread is not None  # started by acquire()
    a._thread.join()
    holder = b.try_acquire()  # ... but its heartbeat thread renewed it: still a's
    assert holder is not None and holder.owner == a.owner
    a.check()
    a.release()
    assert a.read() is None
    b.acquire()
    b.release()


def test_lease_on_local_disk(tmp_path: Path, clock: _Clock) -> None:
    _exercise(str(tmp_path / "store" / "_leases" / "t.json"), None, clock)
    assert not (tmp_path / "store" / "_leases").exists()  # no empty lease folder is left


def test_lease_on_s3(s3_bucket: Any, clock: _Clock) -> None:
    _exercise(s3_bucket.url("store", "_leases", "t.json"), s3_bucket.storage_options, clock)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_an_expired_lease_is_taken_over_and_its_old_holder_never_records(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if where == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        url, options = bucket.url("s", "_leases", "t.json"), bucket.storage_options
    else:
        url, options = str(tmp_path / "t.json"), None
    old = Lease(url, options, ttl_s=0.3)
    assert old.try_acquire() is None  # taken without a heartbeat: it expires
    time.sleep(0.5)
    new = Lease(url, options, ttl_s=30)
    new.acquire()
    with pytest.raises(LeaseLostError, match="not recorded"):
        old.check()
    old.release()  # does not delete the new holder's lease
    assert _read(new).owner == new.owner
    new.release()


def test_a_lease_of_a_killed_process_is_taken_over_at_once(tmp_path: Path) -> None:
    url = tmp_path / "t.json"
    code = f"from pipelines.outputs import Lease; Lease({str(url)!r}, ttl_s=3600).try_acquire()"
    subprocess.run([sys.executable, "-c", code], check=True)  # exits holding the lease
    lease = Lease(str(url), ttl_s=3600)
    lease.acquire()  # the holder's process is gone: abandoned, not waited for
    lease.release()


def test_a_run_killed_while_creating_a_lease_leaves_none(tmp_path: Path) -> None:
    """Killed with the lease's content written but not yet in place: no lease (empty or not)
    appears, so the next run takes it at once and the dead run's temporary file goes."""
    url = tmp_path / "_leases" / "t.json"
    code = (
        "import os, signal\n"
        "from pipelines.outputs import Lease\n"
        "os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"Lease({str(url)!r}, ttl_s=3600).try_acquire()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False)
    assert proc.returncode == -signal.SIGKILL
    assert not url.exists()
    assert [p.name.startswith("t.json.aom-tmp-") for p in url.parent.iterdir()] == [True]
    lease = Lease(str(url), ttl_s=3600)
    assert lease.try_acquire() is None
    lease.check()
    assert [p.name for p in url.parent.iterdir()] == ["t.json"]
    lease.release()
    assert not url.parent.exists()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_an_unreadable_lease_is_held_until_it_expires(
    where: str, tmp_path: Path, request: pytest.FixtureRequest, clock: _Clock
) -> None:
    """An empty lease object (what a run killed mid-create left before leases were written whole)
    is neither free nor held for ever: it counts as a live holder until ``ttl_s`` after it was
    written. (It once counted as free without being taken: the tile was built, then refused its
    completion record as 'lease taken', on every rerun.)"""
    if where == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        url, options = bucket.url("s", "_leases", "t.json"), bucket.storage_options
        bucket.fs.pipe_file(f"{bucket.name}/s/_leases/t.json", b"")
    else:
        url, options = str(tmp_path / "t.json"), None
        (tmp_path / "t.json").write_bytes(b"")
    lease = Lease(url, options, ttl_s=30)
    holder = lease.try_acquire()
    assert holder is not None and holder.owner == "unreadable"
    assert abs(holder.heartbeat - clock.t) < 30  # its modification time: written just now
    with pytest.raises(LeaseHeldError, match="unreadable lease object"):
        lease.acquire(wait_s=0.1, poll_s=0.05)
    clock.t = holder.expires - 0.5  # not yet
    assert lease.try_acquire() is not None
    clock.t = holder.expires + 0.5
    lease.acquire()
    lease.check()  # held for real: its work may be recorded
    assert _read(lease).owner == lease.owner
    lease.release()
    assert lease.read() is None


def _dead_runs_lease(path: Path) -> None:
    """The lease of a run that was killed (its process no longer runs on this host)."""
    import json
    import socket

    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True
    )
    now = time.time()
    info = {"owner": "deadrun", "host": socket.gethostname(), "pid": int(proc.stdout), "acquired": now}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info | {"heartbeat": now, "ttl_s": 120.0}))


def test_two_runs_taking_over_one_stale_lease_end_with_one_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B reads a dead run's lease; A takes it over before B does. B renamed A's fresh lease aside,
    saw it was not the stale one, deleted it anyway and created its own: both held the lease (the
    auditor's lease_race.py). Now B puts A's lease back and is refused."""
    url = tmp_path / "_leases" / "t.json"
    _dead_runs_lease(url)
    a, b = Lease(str(url)), Lease(str(url))
    read = b.read
    raced: list[Any] = []

    def read_then_a_takes_over() -> Any:
        info = read()
        if info is not None and info.owner == "deadrun" and not raced:
            raced.append(a.try_acquire())  # A wins the take-over while B is between read and take-over
        return info

    monkeypatch.setattr(b, "read", read_then_a_takes_over)
    holder = b.try_acquire()
    assert raced == [None]  # A took it over
    assert holder is not None and holder.owner == a.owner  # B is refused, naming A
    a.check()  # A still holds it: its lease is back under the name
    with pytest.raises(LeaseLostError):
        b.check()
    assert sorted(p.name for p in url.parent.iterdir()) == ["t.json"]  # nothing left aside
    a.release()


def test_a_renewal_never_writes_over_a_lease_another_run_took_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's lease expired (A stalled); B takes it over between A's ownership check and A's write.
    A's renewal replaced B's lease with its own (read, then an unconditional write), so B lost the
    lease it had just taken. Now A's renewal fails (A lost it) and B keeps it."""
    url = tmp_path / "_leases" / "t.json"
    a, b = Lease(str(url), ttl_s=0.2), Lease(str(url), ttl_s=30)
    assert a.try_acquire() is None  # no heartbeat thread: it expires
    time.sleep(0.3)
    parse = lease_info.parse
    armed = [True]

    def parse_then_b_takes_over(data: bytes) -> Any:
        info = parse(data)
        if armed[0] and info is not None and info.owner == a.owner:
            armed[0] = False
            assert b.try_acquire() is None  # B takes over A's expired lease in between
        return info

    monkeypatch.setattr(lease_info, "parse", parse_then_b_takes_over)
    assert a.renew() is False
    assert not armed[0]
    monkeypatch.setattr(lease_info, "parse", parse)
    assert _read(b).owner == b.owner
    b.check()
    with pytest.raises(LeaseLostError):
        a.check()
    a.release()
    b.release()


def test_a_lease_another_thread_is_creating_or_releasing_is_not_taken_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two threads of one process (two write_stac calls of one worker around the store's shared
    lease). A lease of this process whose owner is not in LIVE_OWNERS counts as abandoned, and A's
    owner was added only after its lease was in storage and removed before it was deleted: B, reading
    it in either gap, took it over at once (A then failed its check with LeaseLostError, or its
    release deleted B's new lease). A thread switch in the gap, likely on a loaded machine, was enough."""
    url = tmp_path / "_leases" / "t.json"
    a, b = Lease(str(url)), Lease(str(url))
    create, read = a._create, a.read
    seen: list[Any] = []

    def create_then_b_tries(data: bytes) -> bool:
        made = create(data)
        seen.append(b.try_acquire())  # B runs between A's create and A counting the lease as held
        return made

    monkeypatch.setattr(a, "_create", create_then_b_tries)
    assert a.try_acquire() is None
    assert seen[0] is not None and seen[0].owner == a.owner
    a.check()

    def read_then_b_tries() -> Any:
        info = read()
        seen.append(b.try_acquire())  # B runs while A releases
        return info

    monkeypatch.setattr(a, "read", read_then_b_tries)
    a.release()
    assert seen[1] is not None and seen[1].owner == a.owner  # A's lease was still A's
    assert not url.exists()  # and A deleted its own lease, nothing else
    assert b.try_acquire() is None
    b.check()
    b.release()


def _s3_answer(status: int, code: str) -> Callable[[], BaseException]:
    """The error s3fs raises for an S3 error answer (an OSError caused by botocore's ClientError)."""
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    def make() -> BaseException:
        answer = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return translate_boto_error(ClientError(answer, "PutObject"))

    return make


def _connection_reset() -> BaseException:
    from botocore.exceptions import ConnectionClosedError

    return ConnectionClosedError(endpoint_url="http://s3")


def _s3_lease(bucket: Any, ttl_s: float) -> Lease:
    lease = Lease(bucket.url("s", "_leases", "t.json"), bucket.storage_options, ttl_s=ttl_s)
    assert lease.try_acquire() is None  # no heartbeat thread: the test renews
    return lease


@pytest.mark.parametrize(
    "error",
    [_s3_answer(503, "SlowDown"), _s3_answer(500, "InternalError"), _connection_reset],
    ids=["503-slowdown", "500-internal", "connection-reset"],
)
def test_a_transient_s3_error_in_a_renewal_is_retried_and_the_lease_kept(
    s3_bucket: Any, clock: _Clock, monkeypatch: pytest.MonkeyPatch, error: Callable[[], BaseException]
) -> None:
    """One failed PUT of a heartbeat (an S3 hiccup past the client's own retries) marked the lease
    lost: the run's tile was reported failed and redone. Now the renewal is retried and succeeds."""
    lease = _s3_lease(s3_bucket, ttl_s=3.0)
    put = lease._fs.pipe_file
    calls: list[dict[str, Any]] = []

    def fails_once(path: str, data: bytes, **kw: Any) -> Any:
        calls.append(kw)
        if len(calls) == 1:
            raise error()
        return put(path, data, **kw)

    monkeypatch.setattr(lease._fs, "pipe_file", fails_once)
    clock.t += 1.0  # the heartbeat is due
    assert lease.renew() is True
    assert len(calls) == 2 and all("IfMatch" in kw for kw in calls)  # still conditional
    lease.check()
    assert _read(lease).heartbeat == clock.t
    lease.release()
    assert lease.read() is None


def test_a_renewal_whose_answer_was_lost_counts_once_it_landed(
    s3_bucket: Any, clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PUT landed but the connection broke before its answer: a retry with the old ETag would
    fail its condition; the renewal sees its own heartbeat in place and keeps the lease."""
    lease = _s3_lease(s3_bucket, ttl_s=3.0)
    put = lease._fs.pipe_file
    calls: list[dict[str, Any]] = []

    def lands_then_resets(path: str, data: bytes, **kw: Any) -> Any:
        calls.append(kw)
        put(path, data, **kw)
        if len(calls) == 1:
            raise _connection_reset()

    monkeypatch.setattr(lease._fs, "pipe_file", lands_then_resets)
    clock.t += 1.0
    assert lease.renew() is True
    assert len(calls) == 1
    clock.t += 1.0
    assert lease.renew() is True  # with the new ETag
    assert len(calls) == 2
    lease.check()
    lease.release()


def test_a_renewal_that_fails_its_condition_loses_the_lease_at_once(
    s3_bucket: Any, clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    lease = _s3_lease(s3_bucket, ttl_s=3.0)
    put = lease._fs.pipe_file
    calls: list[dict[str, Any]] = []
    other = json.dumps({"owner": "other", "host": "h", "pid": 1, "acquired": 0, "heartbeat": 0, "ttl_s": 3})

    def another_run_wrote_first(path: str, data: bytes, **kw: Any) -> Any:
        calls.append(kw)
        put(path, other.encode())  # another run replaced the object since this run's read
        return put(path, data, **kw)

    monkeypatch.setattr(lease._fs, "pipe_file", another_run_wrote_first)
    clock.t += 1.0
    assert lease.renew() is False
    assert len(calls) == 1  # a failed condition (HTTP 412) is not retried
    with pytest.raises(LeaseLostError):
        lease.check()
    lease.release()  # leaves the other run's lease
    assert _read(lease).owner == "other"


def test_a_renewal_gives_up_when_less_than_a_third_of_the_lifetime_is_left(
    s3_bucket: Any, clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    lease = _s3_lease(s3_bucket, ttl_s=3.0)
    start = clock.t
    calls: list[float] = []

    def always_busy(path: str, data: bytes, **kw: Any) -> Any:
        calls.append(clock.t)
        clock.t += 0.3  # each failed attempt takes a while
        raise _s3_answer(503, "SlowDown")()

    monkeypatch.setattr(lease._fs, "pipe_file", always_busy)
    clock.t += 1.0
    assert lease.renew() is False
    # tried at +1.0, +1.3, +1.6 and +1.9 s; at +2.2 s less than a third of the 3 s lifetime was left
    assert [round(t - start, 1) for t in calls] == [1.0, 1.3, 1.6, 1.9]
    with pytest.raises(LeaseLostError):
        lease.check()
    lease.release()


class _ReadsBetweenWrites:
    """A file whose every write and truncate is followed by ``reader()`` (flushed first): a reader
    that runs between any two steps of the lease's writer."""

    def __init__(self, fh: Any, reader: Callable[[], None]) -> None:
        self._fh, self._reader = fh, reader

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> _ReadsBetweenWrites:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()

    def write(self, data: bytes) -> int:
        n = self._fh.write(data)
        self._fh.flush()
        self._reader()
        return int(n)

    def truncate(self, *args: Any) -> int:
        n = self._fh.truncate(*args)
        self._reader()
        return int(n)


def test_a_reader_never_sees_a_half_written_local_lease(
    tmp_path: Path, clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local renewal rewrote the lease file in place (write, then truncate): a reader in between
    saw the new JSON followed by the tail of a longer old one, i.e. an unreadable lease (the holder's
    own check() then failed: "lease taken"). Now a renewal replaces the file with a whole new one."""
    import threading

    url = tmp_path / "_leases" / "t.json"
    lease = Lease(str(url), ttl_s=30)
    assert lease.try_acquire() is None
    torn: list[bytes] = []
    reads = [0]

    def reader() -> None:
        data = url.read_bytes()  # the name always holds a whole lease
        reads[0] += 1
        if lease_info.parse(data) is None:
            torn.append(data)

    monkeypatch.setattr(
        lease_local,
        "open",
        lambda *a, **k: _ReadsBetweenWrites(open(*a, **k), reader),  # noqa: SIM115 (closed by the wrapper)
        raising=False,
    )
    stop = threading.Event()

    def read_on() -> None:
        while not stop.is_set():
            reader()

    concurrent = threading.Thread(target=read_on)
    concurrent.start()
    try:
        start = clock.t
        for i in range(200):  # heartbeats of alternating lengths: a shorter one leaves a tail
            clock.t = start + i + (0.5 if i % 2 else 0.123456789)
            assert lease.renew() is True
    finally:
        stop.set()
        concurrent.join()
    assert reads[0] > 200 and torn == []
    assert _read(lease).heartbeat == clock.t
    lease.check()
    monkeypatch.setattr(lease_local, "open", open, raising=False)
    lease.release()
    assert not url.parent.exists()  # no temporary file left behind


def test_a_take_over_never_lands_between_a_renewals_check_and_its_replace(
    tmp_path: Path, clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal replaces the lease file only while it holds the file's lock; a take-over needs the
    same lock. Without it, B could take over A's expired lease after A checked that the name was still
    its file and before A's replace, which then overwrote B's fresh lease: two holders."""
    import os

    url = tmp_path / "_leases" / "t.json"
    a, b = Lease(str(url), ttl_s=3), Lease(str(url), ttl_s=30)
    assert a.try_acquire() is None
    clock.t += 10  # A stalled: its lease expired, A does not know yet
    monkeypatch.setattr(lease_local, "_LOCK_WAIT_S", 0.05)
    replace = os.replace
    seen: list[Any] = []

    def b_tries_first(src: Any, dst: Any) -> None:
        if str(dst) == str(url) and not seen:
            seen.append(b.try_acquire())
        replace(src, dst)

    monkeypatch.setattr(lease_local.os, "replace", b_tries_first)
    assert a.renew() is True
    assert seen[0] is not None and seen[0].owner == a.owner  # B was refused: A renewed first
    monkeypatch.setattr(lease_local.os, "replace", replace)
    a.check()
    with pytest.raises(LeaseLostError):
        b.check()
    a.release()
    b.release()
    assert not url.parent.exists()


def test_on_a_file_system_without_locks_renewals_and_take_overs_still_work(
    tmp_path: Path, clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """E.g. Lustre mounted without flock, NFS without a lock manager: renewals write in place."""
    import errno

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lease_local.fcntl, "flock", no_locks)
    url = str(tmp_path / "_leases" / "t.json")
    a, b = Lease(url, ttl_s=3), Lease(url, ttl_s=30)
    assert a.try_acquire() is None
    clock.t += 1
    assert a.renew() is True
    a.check()
    clock.t += 10  # expired
    assert b.try_acquire() is None
    assert a.renew() is False
    with pytest.raises(LeaseLostError):
        a.check()
    b.check()
    a.release()
    b.release()


def test_a_lease_on_s3_costs_one_request_per_read(s3_bucket: Any, clock: _Clock) -> None:
    """Lease.read used a plain cat_file: s3fs asked for the size first (a HEAD), then the GET."""
    from tests.services.s3 import RequestCounter

    lease = _s3_lease(s3_bucket, ttl_s=30)
    counter = RequestCounter(lease._fs)
    key = f"{s3_bucket.name}/s/_leases/t.json"
    with counter:
        assert _read(lease).owner == lease.owner
    assert counter.requests == [("GET", key)]
    with counter:
        lease.check()
    assert counter.requests == [("GET", key)]
    clock.t += 10
    with counter:
        assert lease.renew() is True
    assert counter.requests == [("GET", key), ("PUT", key)]
    with counter:
        lease.release()
    assert counter.requests == [("GET", key), ("DELETE", key)]


def _b_takes_over_after_as_read(a: Lease, b: Lease, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """A's release reads its lease, then B takes the (expired) lease over before A deletes."""
    read = a.read
    taken: list[Any] = []

    def read_then_b_takes_over() -> Any:
        info = read()
        if not taken:
            taken.append(b.try_acquire())
        return info

    monkeypatch.setattr(a, "read", read_then_b_takes_over)
    return taken


def test_a_release_never_deletes_a_lease_another_run_took_over(
    tmp_path: Path, clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stalled past its lease's TTL; A's release read the lease (still A's), B took it over, and
    A's release deleted B's fresh lease (an unconditional delete after an unlocked read): B went on
    writing while a third run could take the free lease. Now the local delete happens under the
    file's lock, and only while the name still refers to the file A verified it owns."""
    url = tmp_path / "_leases" / "t.json"
    a, b = Lease(str(url), ttl_s=3), Lease(str(url), ttl_s=30)
    assert a.try_acquire() is None
    clock.t += 10  # A stalled: its lease expired, A does not know yet
    taken = _b_takes_over_after_as_read(a, b, monkeypatch)
    a.release()
    assert taken == [None]  # B took the lease over between A's read and A's delete
    assert _read(b).owner == b.owner
    b.check()
    b.release()
    assert not url.parent.exists()


def test_a_take_over_never_lands_between_a_releases_check_and_its_delete(
    tmp_path: Path, clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local release deletes under the lease file's lock, which a take-over needs too: B cannot
    take A's expired lease over between A's last check and A's delete (the delete would remove B's)."""
    import os

    url = tmp_path / "_leases" / "t.json"
    a, b = Lease(str(url), ttl_s=3), Lease(str(url), ttl_s=30)
    assert a.try_acquire() is None
    clock.t += 10
    monkeypatch.setattr(lease_local, "_LOCK_WAIT_S", 0.05)
    unlink = os.unlink
    seen: list[Any] = []

    def b_tries_first(path: Any, *args: Any, **kwargs: Any) -> None:
        if str(path) == str(url) and not seen:
            seen.append(b.try_acquire())
        unlink(path, *args, **kwargs)

    monkeypatch.setattr(lease_local.os, "unlink", b_tries_first)
    a.release()
    monkeypatch.setattr(lease_local.os, "unlink", unlink)
    assert seen[0] is not None and seen[0].owner == a.owner  # B was refused: A was deleting
    assert not url.exists()
    with pytest.raises(LeaseLostError):
        b.check()
    assert b.try_acquire() is None
    b.release()


def test_a_release_on_s3_never_deletes_a_lease_another_run_took_over(
    s3_bucket: Any, clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on local disk: the DELETE is conditional on the ETag of the lease this run last wrote
    (If-Match); a lease another run took over in between has another ETag and stays."""
    a = _s3_lease(s3_bucket, ttl_s=3)
    b = Lease(a.url, s3_bucket.storage_options, ttl_s=30)
    clock.t += 10
    taken = _b_takes_over_after_as_read(a, b, monkeypatch)
    a.release()
    assert taken == [None]
    assert _read(b).owner == b.owner
    b.check()
    b.release()
    assert b.read() is None


def test_a_store_without_conditional_deletes_still_gets_its_lease_released(
    s3_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An S3-compatible store that answers 501 NotImplemented to If-Match on DELETE: a plain DELETE."""
    lease = _s3_lease(s3_bucket, ttl_s=30)
    call_s3 = lease._fs.call_s3

    def no_conditional_delete(method: str, **kwargs: Any) -> Any:
        if method == "delete_object" and "IfMatch" in kwargs:
            raise _s3_answer(501, "NotImplemented")()
        return call_s3(method, **kwargs)

    monkeypatch.setattr(lease._fs, "call_s3", no_conditional_delete)
    lease.release()
    assert lease.read() is None


WAIT_S = getattr(lease_info, "HOLDER_WAIT_S", 1800.0)  # (the code before it had no limit)


def _where(where: str, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, dict[str, Any] | None]:
    if where == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        return bucket.url("s", "_leases", "t.json"), bucket.storage_options
    return str(tmp_path / "_leases" / "t.json"), None


def _holder(url: str, options: dict[str, Any] | None, ttl_s: float = 1e9) -> Lease:
    """Another live run's lease, held without a heartbeat thread: a run that hangs but whose
    heartbeat stays fresh (``ttl_s`` far longer than any wait)."""
    other = Lease(url, options, ttl_s=ttl_s)
    assert other.try_acquire() is None
    return other


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_waiter_gives_up_on_a_holder_that_keeps_its_lease_too_long(
    where: str, tmp_path: Path, clock: _Clock, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A holder that hangs but still renews its lease was waited for without limit (acquire_unless
    polled forever). Now the wait ends after HOLDER_WAIT_S on the lease clock: LeaseHeldError naming
    the holder, and the holder's lease is left as it is."""
    url, options = _where(where, tmp_path, request)
    other = _holder(url, options)
    waiter = Lease(url, options)
    monkeypatch.setattr(lease_info, "POLL_S", 0.01, raising=False)
    looks: list[float] = []

    def done() -> bool:  # the holder never records; the lease clock moves on while the waiter waits
        looks.append(clock.t)
        clock.t += WAIT_S / 4
        return False

    result: list[BaseException | bool] = []
    thread = threading.Thread(target=lambda: result.append(_call(lambda: waiter.acquire_unless(done))))
    thread.start()
    thread.join(30)
    try:
        assert not thread.is_alive(), "the waiter still waits for a holder that never lets go"
        (err,) = result
        assert isinstance(err, LeaseHeldError), err
        assert f"run {other.owner[:8]}" in str(err) and "rerun" in str(err)
        assert 4 <= len(looks) <= 6  # it did wait, about HOLDER_WAIT_S on the lease clock
        assert _read(other).owner == other.owner
    finally:
        other.release()  # lets a waiter that never gives up (the old code) end
        thread.join(30)
        waiter.release()


def _call(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except BaseException as exc:
        return exc


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_lease_is_adopted_only_from_its_holder(
    where: str, tmp_path: Path, clock: _Clock, request: pytest.FixtureRequest
) -> None:
    """A run hands a leased tile to the task that writes it: the task takes the lease over from the
    run (Lease.adopt), never from anyone else; the run's next renewal finds it gone and its release
    leaves the task's lease alone."""
    url, options = _where(where, tmp_path, request)
    run = Lease(url, options, ttl_s=60.0)
    run.acquire()
    task = Lease(url, options)
    assert not task.adopt("someone-else")
    assert _read(run).owner == run.owner
    assert task.adopt(run.owner)
    assert _read(task).owner == task.owner
    task.check()
    assert not run.renew()
    with pytest.raises(LeaseLostError):
        run.check()
    run.release()
    assert _read(task).owner == task.owner
    third = Lease(url, options)
    assert not third.adopt(run.owner)  # the run's lease is gone: nothing to adopt
    task.release()
    assert task.read() is None


DEAD = "tcp://10.9.8.7:40123 of Scheduler-1"  # a Dask worker's address and its scheduler's id


def _lease_object(worker: str | None, heartbeat: float, host: str = "worker-pod-7") -> bytes:
    """A lease object as written by another host's run (``worker``: None for one written by a version
    without the field), its heartbeat fresh at ``heartbeat``."""
    info = {"owner": "deadtask", "host": host, "pid": 7, "acquired": heartbeat, "heartbeat": heartbeat}
    info |= {"ttl_s": 120.0} | ({} if worker is None else {"worker": worker})
    return json.dumps(info).encode()


def _put(url: str, options: dict[str, Any] | None, data: bytes) -> None:
    if options is None:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        Path(url).write_bytes(data)
    else:
        from pipelines import storage

        fs, path = storage.filesystem(url, options)
        fs.pipe_file(path, data)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_fresh_lease_whose_dask_worker_is_gone_is_taken_at_once(
    where: str, tmp_path: Path, clock: _Clock, request: pytest.FixtureRequest
) -> None:
    """A Dask task rerun because its worker died found the tile's lease held by the dead task (another
    host: no pid to check) until its TTL passed, and failed the tile. Now a taker's ``gone`` rule (is
    the holder's worker still in its cluster?) is asked about such a holder: while the worker is
    listed the lease is left alone; once it is not, the lease is taken at once (conditionally, as a
    take-over of an expired one) and records the taker's own worker."""
    url, options = _where(where, tmp_path, request)
    _put(url, options, _lease_object(DEAD, clock.t))
    live = {DEAD}
    asked: list[str] = []

    def gone(holder: lease_info.LeaseInfo) -> bool:
        asked.append(holder.worker)
        return holder.worker not in live

    task = Lease(url, options, worker="tcp://10.9.8.8:40200 of Scheduler-1")
    holder = task.take()  # no rule: as before
    assert holder is not None and holder.owner == "deadtask" and holder.worker == DEAD
    assert "Dask worker tcp://10.9.8.7:40123" in holder.describe()
    holder = task.take(gone)  # its worker is listed: a live holder
    assert holder is not None and holder.owner == "deadtask" and asked == [DEAD]
    live.clear()  # the scheduler removed the worker (pod killed)
    try:
        assert task.take(gone) is None  # was: held for another 120 s
        now = task.read()
        assert now is not None and now.owner == task.owner and now.worker == task.worker
        task.check()
    finally:
        task.release()
    assert task.read() is None


def test_the_gone_rule_is_asked_only_about_a_live_looking_holder_of_another_host_with_a_worker(
    tmp_path: Path, clock: _Clock
) -> None:
    """An expired holder is taken without asking; a holder of this host is judged by its pid (a live
    process: not taken, whatever ``gone`` would say); one without a worker is never asked about."""
    url = str(tmp_path / "_leases" / "t.json")
    asked: list[str] = []

    def gone(holder: lease_info.LeaseInfo) -> bool:
        asked.append(holder.owner)
        return True

    local = json.loads(_lease_object(DEAD, clock.t, host=socket.gethostname())) | {"pid": 1}
    _put(url, None, json.dumps(local).encode())  # pid 1 runs: a live holder on this host
    assert Lease(url).take(gone) is not None
    _put(url, None, _lease_object("", clock.t))
    assert Lease(url).take(gone) is not None
    _put(url, None, _lease_object(DEAD, clock.t - 121.0))  # expired
    lease = Lease(url)
    assert lease.take(gone) is None
    lease.release()
    assert asked == []


def test_a_lease_object_without_the_worker_field_reads_and_counts_as_before(
    tmp_path: Path, clock: _Clock
) -> None:
    """Lease objects written before the ``worker`` field parse exactly as before (worker ""), never as
    unreadable; such a holder on another host is held until its TTL, whatever ``gone`` says; an
    object missing a field it always had is still unreadable."""
    url = str(tmp_path / "_leases" / "t.json")
    _put(url, None, _lease_object(None, clock.t))
    lease = Lease(url)
    old = lease.read()
    assert old == lease_info.LeaseInfo("deadtask", "worker-pod-7", 7, clock.t, clock.t, 120.0)
    assert old.worker == "" and "Dask" not in old.describe()
    assert lease.take(lambda holder: True) == old  # fresh, another host, no worker: held
    clock.t += 121.0
    assert lease.take(lambda holder: True) is None  # expired: taken, as before
    assert json.loads(Path(url).read_bytes())["worker"] == ""
    lease.release()
    broken = json.loads(_lease_object(DEAD, clock.t))
    del broken["pid"]
    _put(url, None, json.dumps(broken).encode())
    assert _read(Lease(url)).owner == lease_info.UNREADABLE
