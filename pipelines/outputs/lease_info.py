"""What a lease says, and the rules every holder and waiter follows.

:class:`LeaseInfo` is the content of one lease object (owner, host, pid, heartbeat, expiry, Dask
worker), parsed by :func:`parse`; :meth:`LeaseInfo.abandoned` is the one rule of when a lease may be
taken over, on the lease clock (:data:`clock`); :class:`HolderWait` is the one rule of how long a run
waits for another live run's lease. The lease object itself (create, renew, take over, release) is
:class:`pipelines.outputs.lease.Lease`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields

from pipelines import storage
from pipelines.errors import RetryLaterError

UNREADABLE = "unreadable"
"""The owner of a lease object whose content cannot be parsed (see
:meth:`pipelines.outputs.lease.Lease.read`)."""
LIVE_OWNERS: set[str] = set()
"""Owners of the leases this process holds now, or is creating or deleting (a lease of this process
not in it was abandoned, e.g. its release failed while storage was down)."""
clock: Callable[[], float] = time.time
"""The wall clock of heartbeats and expiry (Unix seconds). Tests put a clock of their own here, so a
loaded machine cannot age a lease the test means to be live."""
POLL_S = 2.0
"""How often a run that waits for another live run's lease looks at it again (seconds, real time)."""
HOLDER_WAIT_S = 1800.0
"""The default of the most a run waits for another live run's lease on a tile (``aom cubes``,
``aom embed``: ``--holder-wait`` minutes; the library's ``holder_wait_s``/``wait_s`` parameters),
counted on the lease clock from when it first found the lease held: a holder that hangs but still
renews its heartbeat is never waited for longer. Then the tile fails (:class:`LeaseHeldError`,
naming the holder), unrecorded: a rerun retries it (:class:`HolderWait`)."""


class LeaseHeldError(RetryLaterError):
    """Another live run holds the lease (exit 1: wait for it, or rerun later)."""


class LeaseLostError(RetryLaterError):
    """This run's lease expired and was taken by another run; its work is not recorded (exit 1)."""


@dataclass(frozen=True)
class LeaseInfo:
    """The content of a lease object."""

    owner: str
    """A unique id of the holding run (random per :class:`~pipelines.outputs.lease.Lease`)."""
    host: str
    """Host name of the holder."""
    pid: int
    """Process id of the holder on ``host``."""
    acquired: float
    """When the lease was taken (Unix seconds)."""
    heartbeat: float
    """The last renewal (Unix seconds)."""
    ttl_s: float
    """Seconds after ``heartbeat`` when the lease counts as abandoned."""
    worker: str = ""
    """The Dask worker whose task holds it, as its taker wrote it (``Lease(worker=...)``; "" outside
    Dask, and in lease objects of older versions, which lack the field); only ``gone`` reads it."""

    @property
    def expires(self) -> float:
        return self.heartbeat + self.ttl_s

    def expired(self, now: float | None = None) -> bool:
        return (clock() if now is None else now) > self.expires

    def abandoned(self, now: float | None = None, gone: Callable[[LeaseInfo], bool] | None = None) -> bool:
        """Expired, or held by a process of this host that no longer runs (a killed run), or, on
        another host, by a Dask worker that ``gone`` says has left its cluster (see
        :meth:`~pipelines.outputs.lease.Lease.take`: asked only then, so only about a live-looking
        holder of another host that names a worker)."""
        if self.expired(now):
            return True
        if self.host != socket.gethostname():
            return bool(self.worker) and gone is not None and gone(self)
        if self.pid == os.getpid():
            return self.owner not in LIVE_OWNERS
        return not storage.process_alive(self.pid)

    def describe(self) -> str:
        left = self.expires - clock()
        if self.owner == UNREADABLE:
            return f"run (unreadable lease object, counts as abandoned in {left:.0f} s)"
        where = f"pid {self.pid} on {self.host}" + (f", Dask worker {self.worker}" if self.worker else "")
        return f"run {self.owner[:8]} ({where}, heartbeat expires in {left:.0f} s)"


class HolderWait:
    """The one rule of a run that finds a tile's lease held by another live run: it may wait (doing
    other work meanwhile), at most ``wait_s`` (:data:`HOLDER_WAIT_S`) from now on the lease clock;
    :meth:`check` raises :class:`LeaseHeldError` naming the holder once that is over."""

    def __init__(self, url: str, wait_s: float = HOLDER_WAIT_S) -> None:
        self.url = url
        self.wait_s = float(wait_s)
        self.since = clock()

    def check(self, holder: LeaseInfo) -> None:
        waited = clock() - self.since
        if waited >= self.wait_s:
            raise LeaseHeldError(
                f"{storage.redact_url(self.url)} is still held by another {holder.describe()} after "
                f"{waited:.0f} s (the most a run waits for another run's tile: {self.wait_s:.0f} s); "
                "the tile is not recorded: rerun to retry it"
            )


_REQUIRED = tuple(f.name for f in fields(LeaseInfo) if f.default is MISSING)


def parse(data: bytes) -> LeaseInfo | None:
    """The lease in ``data``, else None; ``worker`` is optional (older versions wrote none)."""
    try:
        d = json.loads(data)
        worker = d.get("worker", "") if isinstance(d, dict) else ""
        return LeaseInfo(**{k: d[k] for k in _REQUIRED}, worker=worker if isinstance(worker, str) else "")
    except (ValueError, KeyError, TypeError):
        return None


def owned_by(data: bytes, owner: str) -> bool:
    """Whether ``data`` is a lease held by ``owner``."""
    info = parse(data)
    return info is not None and info.owner == owner
