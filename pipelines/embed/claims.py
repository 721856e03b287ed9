"""The tile leases of an ``aom embed`` run, taken by the run itself before any pixel of a tile is read.

One writer per tile: a tile is read, encoded and written only under its lease
(:func:`pipelines.embeddings.tile_lease`, ``<out>/_leases/tile@<version>@t<i>@<tile_id>.json``). The
process that fans the units out (:class:`pipelines.embed.fanout.Fanout`, or :func:`run_units`)
takes the leases of a unit's tiles before it submits the unit (:meth:`TileClaims.claim`) and keeps
their heartbeat until the task that writes a tile takes its lease over
(:meth:`pipelines.outputs.Lease.adopt`, in :func:`pipelines.embed.tasks.embed_padded`); after taking a
lease it reads the tile's record once more (another run may have finished it since the plan). So a
tile that turns out to be done is skipped unread, and no task ever waits for a lease:

* a tile whose lease another live run holds is not waited for in a task (it would keep the task's
  encoder slot, or a reader, idle): it is deferred to the end of the queue and claimed again after
  :data:`~pipelines.outputs.lease_info.POLL_S`, while the other tiles are read and encoded;
* it is skipped (``written by another run meanwhile``) once that run's record is there (for a tile
  embedded again because its inputs changed: a record other than the one it replaces), and taken
  when that run ends without one;
* a run waits for another run's tile at most ``RunContext.holder_wait_s`` (``--holder-wait``,
  ``EmbedRequest.holder_wait_min``; default :data:`~pipelines.outputs.HOLDER_WAIT_S`; the rule
  ``aom cubes`` follows too: :class:`~pipelines.outputs.HolderWait`); then the tile is reported
  ``failed``, naming that run, and a rerun retries it (0: at once, not waited for).
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable

from pipelines import embeddings as es
from pipelines import storage
from pipelines.embed.plan import RunContext, Unit
from pipelines.embed.request import TileResult, _reason
from pipelines.embeddings.records import read_record
from pipelines.outputs import HolderWait, Lease, lease_info
from pipelines.runs import TileStatus

log = logging.getLogger(__name__)

WRITTEN_MEANWHILE = "written by another run meanwhile (record exists)"


def record_digest(ctx: RunContext, tile_id: str, time_index: int) -> str | None:
    """A digest of the tile's completion record as stored now; None when it has none (an access
    failure raises: the tile fails, it is never taken as unrecorded)."""
    rec = read_record(es.record_url(ctx.out, ctx.version, tile_id, time_index), ctx.out_options)
    return None if rec is None else hashlib.sha256(storage.json_dumps(rec).encode()).hexdigest()


def written_meanwhile(ctx: RunContext, tile_id: str, time_index: int, replaces: str | None) -> bool:
    """Another run recorded the tile: a record where there was none, or, for a tile embedded again
    (``replaces``: the digest of the record it replaces), a record other than that one. A record
    that cannot be read (403, a permission error, a 503 past its retries) raises: the caller reports
    the tile failed, and it is neither read nor encoded again."""
    if replaces is None:
        return es.tile_is_complete(ctx.out, ctx.version, tile_id, time_index, ctx.out_options)
    return record_digest(ctx, tile_id, time_index) != replaces


@dataclasses.dataclass
class _Waiting:
    """A tile another live run holds: since when (the rule's clock) and the record it replaces."""

    wait: HolderWait
    replaces: str | None


class TileClaims:
    """The leases this run holds on tiles it has handed to tasks, and the tiles it waits for."""

    def __init__(self, ctx: RunContext, wait_s: float | None = None) -> None:
        self.ctx = ctx
        self.wait_s = ctx.holder_wait_s if wait_s is None else wait_s
        self.held: dict[tuple[int, str], Lease] = {}
        self.waiting: dict[tuple[int, str], _Waiting] = {}
        self._deferred: list[tuple[float, int, Unit]] = []  # (monotonic time it is due, order, unit)
        self._order = 0

    def claim(self, unit: Unit) -> tuple[Unit | None, list[TileResult]]:
        """Take the leases of the unit's tiles: the unit of the tiles now this run's to write (each
        with its lease owner, see :attr:`Unit.claims`), or None; and the results of the tiles settled
        at once (skipped: recorded by another run; failed: a storage error, or another run held the
        tile too long). Tiles another live run holds are deferred (:meth:`due`)."""
        ctx, t = self.ctx, unit.time_index
        mine: list[int] = []
        claims: list[tuple[str, str, str | None]] = []
        later: list[int] = []
        settled: list[TileResult] = []
        for k, tile in enumerate(unit.tiles):
            key = (t, tile.tile_id)
            lease: Lease | None = None
            try:
                waiting = self.waiting.get(key)
                replaces = waiting.replaces if waiting else None
                if waiting is None and tile.tile_id in unit.redo:  # the record this run replaces
                    replaces = record_digest(ctx, tile.tile_id, t)
                lease = es.tile_lease(ctx.out, ctx.version, tile.tile_id, t, ctx.out_options)
                holder = lease.take()
                if holder is None:
                    self.waiting.pop(key, None)
                    if written_meanwhile(ctx, tile.tile_id, t, replaces):
                        lease.release()
                        settled.append(TileResult(tile.tile_id, t, TileStatus.SKIPPED, WRITTEN_MEANWHILE))
                    else:
                        self.held[key] = lease
                        mine.append(k)
                        claims.append((tile.tile_id, lease.owner, replaces))
                    continue
                lease = None
                if written_meanwhile(ctx, tile.tile_id, t, replaces):
                    self.waiting.pop(key, None)
                    settled.append(TileResult(tile.tile_id, t, TileStatus.SKIPPED, WRITTEN_MEANWHILE))
                    continue
                if waiting is None:
                    waiting = self.waiting[key] = _Waiting(
                        HolderWait(lease_url(ctx, key), self.wait_s), replaces
                    )
                    log.info(
                        "tile %s@t%d is being written by another %s: the other tiles first",
                        tile.tile_id,
                        t,
                        holder.describe(),
                    )
                waiting.wait.check(holder)  # LeaseHeldError once it held the tile too long
                later.append(k)
            except Exception as exc:
                from pipelines.cubes import tile_failure_retryable

                self.waiting.pop(key, None)
                if lease is not None:
                    self.held.pop(key, None)
                    lease.release()
                log.warning("tile %s@t%d not claimed: %s", tile.tile_id, t, _reason(exc))
                reason = f"tile lease or record: {_reason(exc)}"  # a held lease: worth a retry
                retryable = tile_failure_retryable(exc)
                settled.append(TileResult(tile.tile_id, t, TileStatus.FAILED, reason, retryable=retryable))
        if later:
            self._order += 1
            due = time.monotonic() + lease_info.POLL_S
            heapq.heappush(self._deferred, (due, self._order, _part(unit, later, ())))
        return (_part(unit, mine, tuple(claims)) if mine else None), settled

    def due(self) -> list[Unit]:
        """The deferred units whose time to be claimed again has come (for the end of the queue)."""
        now = time.monotonic()
        out = []
        while self._deferred and self._deferred[0][0] <= now:
            out.append(heapq.heappop(self._deferred)[2])
        return out

    def next_due(self) -> float | None:
        """Seconds until the next deferred unit is due (0 when it is); None when none is deferred."""
        if not self._deferred:
            return None
        return max(0.0, self._deferred[0][0] - time.monotonic())

    def release(self, unit: Unit) -> None:
        """Release this run's leases of a unit's tiles whose task is over (a lease its task took
        over, :meth:`~pipelines.outputs.Lease.adopt`, is that task's: left as it is)."""
        for tile_id, _, _ in unit.claims:
            lease = self.held.pop((unit.time_index, tile_id), None)
            if lease is not None:
                lease.release()

    def close(self) -> None:
        for lease in self.held.values():
            lease.release()
        self.held.clear()


def lease_url(ctx: RunContext, key: tuple[int, str]) -> str:
    return es.tile_lease(ctx.out, ctx.version, key[1], key[0], ctx.out_options).url


def _part(unit: Unit, indices: list[int], claims: tuple[tuple[str, str, str | None], ...]) -> Unit:
    tiles = tuple(unit.tiles[k] for k in indices)
    items = tuple(unit.items[k] for k in indices) if unit.items else ()
    redo = frozenset(t.tile_id for t in tiles) & unit.redo
    return dataclasses.replace(unit, tiles=tiles, items=items, redo=redo, claims=claims)


def run_units(
    units: Iterable[Unit],
    ctx: RunContext,
    process: Callable[[Unit], list[TileResult]],
    finish: Callable[[list[TileResult]], None],
) -> None:
    """Claim and run units one after the other in this process (``--workers 0``): deferred tiles
    come back at the end of the queue; while only they are left, it sleeps until the next is due."""
    claims = TileClaims(ctx)
    queue = deque(units)
    try:
        while queue or claims.next_due() is not None:
            if not queue:
                time.sleep(claims.next_due() or 0.0)
            queue.extend(claims.due())
            if not queue:
                continue
            unit = queue.popleft()
            run, settled = claims.claim(unit)
            if settled:
                finish(settled)
            if run is not None:
                try:
                    results = process(run)
                finally:
                    claims.release(run)
                finish(results)
    finally:
        claims.close()
