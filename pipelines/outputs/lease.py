"""One writer per store (or per tile): a lease with an owner, a heartbeat and an expiry.

A lease is one small JSON object created whole with an *exclusive create*: on local disk a
temporary file with the content, hard-linked to the lease name (``link`` fails when the name
exists), on S3 a PUT with ``If-None-Match: *`` (AWS S3 and moto honour it; s3fs ``mode="create"``).
The holder renews it (heartbeat) every ``ttl_s / 3`` seconds from a background thread; a lease whose
heartbeat is older than its ``ttl_s`` (or whose process on this host is gone, or whose Dask worker
the taker's ``gone`` says has left: :meth:`Lease.take`) belongs to a dead run and may be taken over:
on S3 by a PUT conditional on the stale object's ETag (``If-Match``), on local disk by renaming the
stale file away (only one renamer wins) and creating a new one; a file renamed away that is not the
stale one (another run took the lease over first) is linked back under its name, never deleted. A local renewal replaces the lease file with a whole new one (a reader never
sees half a lease) under the lock of the file its holder verified it owns (a take-over takes that
lock too), only while the name still refers to that file (the local-disk primitives and their
protocol: :mod:`pipelines.outputs.lease_local`). A release deletes only the holder's own lease,
never one another run took over after its check: locally under the file's lock, on S3 conditional
on the lease's ETag (``If-Match``). A lease object that cannot be parsed is never taken as free: it expires ``ttl_s`` after it was written.
A holder may hand its lease to another process (:meth:`Lease.adopt`: a conditional replace, only
while it is still that holder's; the holder's next renewal finds it gone). A holder that finds its
lease taken (its renewal fails its condition, or transient storage errors
outlast the lease's safe lifetime: see :meth:`Lease.renew`) marks it lost; writers check
:meth:`Lease.check` before their completion record, so a run that lost its lease never records
work another run may have rewritten.

Homes: this module is the lease object and its holder (:class:`Lease`); what a lease says and the
rules on it (:class:`~pipelines.outputs.lease_info.LeaseInfo`, when it counts as abandoned, the lease
clock, :class:`~pipelines.outputs.lease_info.HolderWait`) are :mod:`pipelines.outputs.lease_info`; the
object-store conditional writes :mod:`pipelines.outputs.lease_remote`; the leases of a folder
:mod:`pipelines.outputs.lease_folder`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from pipelines import storage
from pipelines.outputs import lease_info, lease_local, lease_remote
from pipelines.outputs.lease_info import (
    HOLDER_WAIT_S,
    LIVE_OWNERS,
    UNREADABLE,
    HolderWait,
    LeaseHeldError,
    LeaseInfo,
    LeaseLostError,
)
from pipelines.retry import RetryError, RetryPolicy, call_with_retry, is_transient

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 120.0
_ACQUIRE_TRIES = 5
_SAFE_FRACTION = 2 / 3
"""A renewal retries transient errors until this fraction of the lease's lifetime has passed since
its last heartbeat (:meth:`Lease.renew`): the third left is the margin before a take-over."""


def _renew_policy(ttl_s: float, sleep: Callable[[float], None]) -> RetryPolicy:
    wait = ttl_s / 3  # bounds the waits alone, for a clock that stands still
    return RetryPolicy(10_000, ttl_s / 60, ttl_s / 12, max_elapsed_s=wait, sleep=sleep)


class Lease:
    """A lease at ``url`` (for example ``<store>/_leases/<tile>.json``).

    Use as a context manager (:meth:`acquire` on entry, heartbeat thread, :meth:`release` on exit)
    or call the methods. ``storage_options`` are used for I/O only; ``worker`` goes into the lease
    objects it writes (:attr:`LeaseInfo.worker`).
    """

    def __init__(
        self,
        url: str,
        storage_options: Mapping[str, Any] | None = None,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        worker: str = "",
    ) -> None:
        self.url = storage.normalise_url(url)
        self.worker = worker
        self.storage_options = dict(storage_options or {})
        self.ttl_s = float(ttl_s)
        self.owner = uuid.uuid4().hex
        self._fs, self._path = storage.filesystem(self.url, self.storage_options)
        self._local = storage.is_local(self.url)
        self._etag: str | None = None
        self._held = False
        self._lost = False
        self._beat = 0.0  # the heartbeat of the last lease object this run wrote
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ content
    def _info(self, acquired: float | None = None) -> LeaseInfo:
        now = lease_info.clock()
        return LeaseInfo(
            self.owner, socket.gethostname(), os.getpid(), acquired or now, now, self.ttl_s, self.worker
        )

    def _bytes(self, info: LeaseInfo) -> bytes:
        return json.dumps(asdict(info), sort_keys=True).encode()

    def read(self) -> LeaseInfo | None:
        """The lease as stored now (None when there is none).

        A lease object that cannot be parsed (written by something else, or by an older version
        killed mid-create) counts as held by an unknown run whose heartbeat is the object's last
        modification: it is taken over ``ttl_s`` after that, never treated as free.
        """
        try:
            if self._local:
                with open(self._path, "rb") as fh:
                    data = fh.read()
            else:
                self._fs.invalidate_cache(self._path)
                data = self._fs.cat_file(self._path, **storage.one_get(self._fs))  # a GET, no HEAD
            return lease_info.parse(data) or self._unreadable(self._path)
        except FileNotFoundError:
            return None

    def _unreadable(self, path: str) -> LeaseInfo:
        modified = storage.modified_time(self._fs, path)
        return LeaseInfo(UNREADABLE, "", 0, modified, modified, self.ttl_s)

    # ------------------------------------------------------------------ primitives
    def _create(self, data: bytes) -> bool:
        """Create the lease object with ``data``, only if none exists; a reader never sees it
        without its content (a run killed while creating one leaves at most a temporary sibling)."""
        if self._local:
            return lease_local.create(self._path, data)
        created, etag = lease_remote.create(self._fs, self._path, data)
        if created:
            self._etag = etag
        return created

    def _remote_etag(self) -> str | None:
        return lease_remote.current_etag(self._fs, self._path)

    def _take_over(self, stale: LeaseInfo, data: bytes) -> bool:
        """Replace an expired lease, only if it is still the one judged expired."""
        if self._local:
            return lease_local.take_over(self._path, stale, data, self._parse_file, self.url)
        etag = self._remote_etag()
        if etag is None or self.read() != stale:
            return False
        replaced, new = lease_remote.replace(self._fs, self._path, data, etag)
        if replaced:
            self._etag = new
        return replaced

    def _parse_file(self, data: bytes, path: str) -> LeaseInfo:
        return lease_info.parse(data) or self._unreadable(path)

    def _renew_local(self) -> bool:
        """See :func:`pipelines.outputs.lease_local.renew`: a renewal never replaces a lease another
        run took over, and a reader never sees half a lease."""
        beat: list[float] = []

        def rewrite(data: bytes) -> bytes | None:
            current = lease_info.parse(data)
            if current is None or current.owner != self.owner:
                return None
            info = self._info(current.acquired)
            beat.append(info.heartbeat)
            return self._bytes(info)

        if lease_local.renew(self._path, rewrite):
            self._beat = beat[-1]
            return True
        self._lost = True
        return False

    def _read_settled(self) -> LeaseInfo | None:
        """:meth:`read`, looking again when the name is briefly free (see :func:`lease_local.take_over`)."""
        for _ in range(lease_local.SETTLE_TRIES - 1):
            info = self.read()
            if info is not None or not self._local:
                return info
            time.sleep(lease_local.SETTLE_S)
        return self.read()

    # ------------------------------------------------------------------ API
    def try_acquire(self, gone: Callable[[LeaseInfo], bool] | None = None) -> LeaseInfo | None:
        """Take the lease if free or abandoned (``gone``: :meth:`take`): None on success (this run
        holds it), else the live holder's lease."""
        # Live before it is in storage: another thread of this process that reads it at once must
        # not judge it abandoned (its pid is this process's; see LeaseInfo.abandoned).
        LIVE_OWNERS.add(self.owner)
        try:
            holder = self._try_acquire(gone)
        finally:
            if not self._held:
                LIVE_OWNERS.discard(self.owner)
        return holder

    def _try_acquire(self, gone: Callable[[LeaseInfo], bool] | None) -> LeaseInfo | None:
        holder: LeaseInfo | None = None
        for _ in range(_ACQUIRE_TRIES):
            mine = self._info()
            if self._create(self._bytes(mine)):
                self._took(mine.heartbeat)
                return None
            seen = self.read()
            if seen is None:
                continue  # released between the two calls: try again
            holder = seen
            if holder.owner == self.owner:
                self._took(holder.heartbeat)
                return None
            if not holder.abandoned(gone=gone):
                return holder
            mine = self._info()
            if self._take_over(holder, self._bytes(mine)):
                self._took(mine.heartbeat)
                return None
        if holder is None:  # freed and taken again by others on every try
            raise LeaseHeldError(
                f"{storage.redact_url(self.url)}: the lease changed hands {_ACQUIRE_TRIES} times "
                "while this run tried to take it; rerun later"
            )
        return holder

    def _took(self, heartbeat: float) -> None:
        self._held, self._lost, self._beat = True, False, heartbeat

    def acquire(self, wait_s: float = 0.0, poll_s: float = 1.0) -> None:
        """Take the lease, waiting up to ``wait_s`` for a live holder; LeaseHeldError after that."""
        deadline = time.monotonic() + wait_s
        while True:
            holder = self.try_acquire()
            if holder is None:
                self._start_heartbeat()
                return
            if time.monotonic() >= deadline:
                raise LeaseHeldError(
                    f"{storage.redact_url(self.url)} is being written by another {holder.describe()}; "
                    "wait for it to finish, or rerun after its lease expires"
                )
            time.sleep(poll_s)

    def take(self, gone: Callable[[LeaseInfo], bool] | None = None) -> LeaseInfo | None:
        """:meth:`try_acquire`, with the heartbeat started when it is taken: None (this run holds
        it now), else the live holder's lease. Never waits.

        ``gone(holder)`` may tell a holder dead before its TTL, asked only about a holder with a fresh
        heartbeat on another host (no pid to check) that names a Dask worker (e.g. one its scheduler
        no longer lists: :func:`pipelines.embed.dask_workers.worker_gone`); False when it cannot tell (the
        TTL rule then holds). The take-over stays conditional (S3: the ETag; locally: the locked
        replace): of two takers one wins. Safe even when the holder still runs (cut off from the
        scheduler, not from storage): its next renewal finds another owner (on S3 its PUT fails on
        the changed ETag) and marks the lease lost, and :meth:`check`, which a writer calls before its
        completion record, reads the lease: it records nothing after that. Its data writes before it
        may overlap the new holder's, as after a TTL take-over of a holder that hung."""
        holder = self.try_acquire(gone)
        if holder is None:
            self._start_heartbeat()
        return holder

    def acquire_unless(
        self, done: Callable[[], bool], poll_s: float | None = None, wait_s: float = HOLDER_WAIT_S
    ) -> bool:
        """Take the lease, waiting while another live run holds it; False (lease not taken) as soon
        as ``done()`` says the work is finished (e.g. the other run wrote the completion record).
        A holder that keeps it longer than ``wait_s`` (:class:`HolderWait`): LeaseHeldError."""
        wait = HolderWait(self.url, wait_s)
        while True:
            holder = self.take()
            if holder is None:
                return True
            if done():
                return False
            wait.check(holder)
            time.sleep(lease_info.POLL_S if poll_s is None else poll_s)

    def adopt(self, owner: str) -> bool:
        """Take the lease over from the run ``owner`` that holds it (the run hands a tile it leased
        to the task that writes it): the lease becomes this one's, with its heartbeat started, only
        while it is still ``owner``'s (locally a locked whole replace, as a renewal; on S3 a PUT
        conditional on its ETag). False, and nothing changed, when it is not ``owner``'s any more
        (it expired and another run took it over). The former holder's next renewal finds it gone."""
        LIVE_OWNERS.add(self.owner)
        mine = self._info()
        data = self._bytes(mine)
        ok = False
        try:
            if self._local:
                ok = lease_local.renew(
                    self._path, lambda old: data if lease_info.owned_by(old, owner) else None
                )
            else:
                ok = self._adopt_remote(owner, data)
        finally:
            if not ok:
                LIVE_OWNERS.discard(self.owner)
        if ok:
            self._took(mine.heartbeat)
            self._start_heartbeat()
        return ok

    def _adopt_remote(self, owner: str, data: bytes) -> bool:
        for _ in range(_ACQUIRE_TRIES):  # a renewal by ``owner`` in between changes the ETag: again
            etag = self._remote_etag()  # before the read: a change after it fails the PUT
            current = self.read()
            if etag is None or current is None or current.owner != owner:
                return False
            replaced, new = lease_remote.replace(self._fs, self._path, data, etag)
            if replaced:
                self._etag = new
                return True
        return False

    def renew(self) -> bool:
        """Move the heartbeat forward; False (and the lease marked lost) when another run holds it.

        On an object store a transient error (:func:`~pipelines.retry.is_transient`) is
        retried with backoff while the lease is safely this run's: until less than a third of its
        lifetime is left after the last heartbeat written. Only then is it lost; at once when the
        conditional write fails (another run took it) or on any other storage error."""
        if self._local:
            return self._renew_local()
        deadline = self._beat + self.ttl_s * _SAFE_FRACTION
        sent: list[LeaseInfo] = []

        def attempt() -> bool:
            current = self.read()
            if current is None or current.owner != self.owner:
                return False
            if sent and current == sent[-1]:  # an earlier attempt's PUT landed; its answer was lost
                self._etag = self._remote_etag()
                return True
            sent.append(self._info(current.acquired))
            out = self._fs.pipe_file(
                self._path, self._bytes(sent[-1]), IfMatch=self._etag or self._remote_etag()
            )
            self._etag = lease_remote.etag_of(out) or self._remote_etag()
            return True

        def retryable(exc: BaseException) -> bool:
            return is_transient(exc) and lease_info.clock() < deadline and not self._stop.is_set()

        def sleep(seconds: float) -> None:
            self._stop.wait(seconds)  # release() does not wait for the backoff

        try:
            ok = call_with_retry(
                attempt,
                policy=_renew_policy(self.ttl_s, sleep),
                is_retryable=retryable,
                describe=f"renewal of lease {storage.redact_url(self.url)}",
            )
        except Exception as exc:
            if not isinstance(exc, OSError | RetryError) and not is_transient(exc):
                raise
            log.warning(
                "lease %s lost: its renewal failed (%s)", storage.redact_url(self.url), type(exc).__name__
            )
            ok = False
        if ok:
            self._beat = sent[-1].heartbeat
        else:
            self._lost = True
        return ok

    def check(self) -> None:
        """Raise LeaseLostError unless this run still holds the lease."""
        holder = self._read_settled()
        if self._lost or holder is None or holder.owner != self.owner:
            self._lost = True
            raise LeaseLostError(
                f"{storage.redact_url(self.url)}: this run's lease was taken by another run "
                "(heartbeat missed); its work is not recorded: rerun to finish"
            )

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if this run still holds it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if not self._held:
            LIVE_OWNERS.discard(self.owner)
            return
        self._held = False
        try:  # live until deleted: another thread of this process must not take it over meanwhile
            etag = None if self._local else self._etag or self._remote_etag()  # before the read
            holder = self.read()
            if holder is not None and holder.owner == self.owner:
                self._delete(etag)
        except Exception as exc:  # storage down (any client's error): the lease stays and counts as abandoned (see abandoned)
            log.warning("could not release lease %s: %s", storage.redact_url(self.url), type(exc).__name__)
        finally:
            LIVE_OWNERS.discard(self.owner)
        if self._local:  # leave no empty lease folder behind (Zarr readers warn about it)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(self._path))

    def _delete(self, etag: str | None) -> None:
        """Delete this run's lease, never one another run took over since it was read: locally under
        the lease file's lock (:func:`pipelines.outputs.lease_local.release`), on S3 a DELETE
        conditional on the ETag of the lease this run last wrote (``If-Match``, ``etag``; a store
        that answers 501 to it, or has no ETags, gets a plain DELETE)."""
        if self._local:
            lease_local.release(self._path, self._is_mine)
        else:
            lease_remote.delete(self._fs, self._path, etag, self.url)

    def _is_mine(self, data: bytes) -> bool:
        return lease_info.owned_by(data, self.owner)

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        interval = max(0.05, self.ttl_s / 3)

        def beat() -> None:
            while not self._stop.wait(interval):
                try:
                    if not self.renew():
                        return
                except Exception:  # storage briefly unreachable (any client's error): next beat
                    continue

        self._thread = threading.Thread(target=beat, name="aom-lease-heartbeat", daemon=True)
        self._thread.start()

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
