"""Cubes: STAC items -> per-tile Zarr v3 reflectance cubes, exactly once per tile.

Public API::

    spec = CubeSpec(grid=TileGrid(), collections=("sentinel-2-l2a",), catalog="sample")
    cube = assemble_tile(tile, items, spec)          # lazy, in memory; cube[(collection, "10m")]
    summary = write_cubes(items, tiles, spec, "s3://bucket/cubes", storage_options)
    store = CubeStore.open("s3://bucket/cubes", storage_options)
    store.complete_tiles(); store.record(tile_id); store.open_tile(tile_id)

Exactly once: a tile is written by one task into its own prefix, then its completion record
``_tiles/<tile_id>.json`` is written atomically. The task first takes the tile's lease
(``_leases/<tile_id>.json``, :meth:`CubeStore.tile_lease`): two runs into the same store cooperate
tile by tile, a run waiting while another live run builds a tile and then skipping it once its
record appears, never clearing a tile another live run is writing. A rerun skips tiles with a
record and deletes and redoes the rest, so an interrupted run (killed process, storage outage) resumes to output identical
to an uninterrupted one. Per-item problems are skipped and recorded; a tile fails (no record, retried
next run) only when storage fails or an asset is unreachable (``CubeSpec.skip_unreachable``).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from pipelines import runs
from pipelines.cubes.assembly import assemble_tile
from pipelines.cubes.composite import composite_group
from pipelines.cubes.diagnosis import diagnose_read_failure, unreachable_reason
from pipelines.cubes.freshness import freshness, item_versions
from pipelines.cubes.reading import (
    classify_error,
    configure_reads,
    is_read_error,
    item_datetime,
    items_touching,
    tile_failure_retryable,
)
from pipelines.cubes.rebuild import staging_store, swap_in
from pipelines.cubes.spec import INT16_FILL, INT16_SCALE, CubeSpec, SkippedAsset, gsd_label
from pipelines.cubes.store import CubeStore, CubeStoreError, group_entry, tile_record
from pipelines.cubes.summary import RunSummary, TileOutcome
from pipelines.cubes.tilecube import TileCube, decode
from pipelines.outputs import HOLDER_WAIT_S
from pipelines.runs import TileStatus
from pipelines.storage import redact_record, redact_url
from pipelines.tiling import ItemIndex, Tile, TileGrid

__all__ = [
    "INT16_FILL",
    "INT16_SCALE",
    "CubeSpec",
    "CubeStore",
    "CubeStoreError",
    "RunSummary",
    "SkippedAsset",
    "Tile",
    "TileCube",
    "TileGrid",
    "TileOutcome",
    "assemble_tile",
    "decode",
    "gsd_label",
    "item_datetime",
    "process_tile",
    "write_cubes",
]

log = logging.getLogger(__name__)

MAX_READ_RETRIES = 3  # load attempts after diagnosing unreadable assets


# ---------------------------------------------------------------------------------------------
# One tile


def _configure_reads(read_options: Mapping[str, Any] | None) -> None:
    """GDAL settings for odc-stac's reads in this process (assembly adds each catalog's access)."""
    configure_reads(read_options)


def process_tile(
    tile: Tile,
    items: Sequence[Mapping[str, Any]],
    spec: CubeSpec,
    out_url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    read_options: Mapping[str, Any] | None = None,
    scheduler: str | None = "threads",
    holder_wait_s: float = HOLDER_WAIT_S,
) -> TileOutcome:
    """Write one tile exactly once (skip when complete), or rebuild a complete tile when ``items``
    has items its record has not seen or newer versions of its items (:mod:`pipelines.cubes.freshness`):
    built aside and swapped in only once complete (:mod:`pipelines.cubes.rebuild`), so a failed
    rebuild keeps the tile. Never raises for bad inputs or storage faults. Another live run's lease
    on the tile is waited for at most ``holder_wait_s`` (:class:`~pipelines.outputs.HolderWait`)."""
    t0 = time.perf_counter()
    store = CubeStore(out_url, storage_options)
    lease = None
    changes = ""  # of a rebuild: "N new item(s)", "N updated item(s)" (freshness.py)
    recorded: dict[str, dict[str, Any]] = {}
    swapping = False
    try:
        recorded = store.records([tile.tile_id])
        if recorded:
            state = freshness(recorded[tile.tile_id], items)
            if not state.rebuild:
                return _skipped(tile.tile_id, recorded[tile.tile_id], state.reason())
            lease = store.tile_lease(tile.tile_id)
            lease.acquire_unless(lambda: False, wait_s=holder_wait_s)  # wait for a live writer, look again
            recorded = store.records([tile.tile_id])
            if recorded:
                state = freshness(recorded[tile.tile_id], items)
                if not state.rebuild:  # another run rebuilt it meanwhile
                    return _skipped(tile.tile_id, recorded[tile.tile_id], state.reason())
                changes = state.changes()
        else:
            lease = store.tile_lease(tile.tile_id)
            # another live run building this tile: wait for it (its record ends the wait)
            done = functools.partial(store.has_record, tile.tile_id)
            if not lease.acquire_unless(done, wait_s=holder_wait_s) or store.has_record(tile.tile_id):
                rec = store.records([tile.tile_id]).get(tile.tile_id, {})
                return _skipped(tile.tile_id, rec, "already complete (record exists)")
        _configure_reads(read_options)
        staging = staging_store(store)
        staging.clear_tile(tile.tile_id)  # what an interrupted rebuild left aside
        if not recorded:
            store.clear_tile(tile.tile_id)  # what an interrupted build left (no record: nobody reads it)
        # a rebuild is built aside: the complete tile stays, record and data, until the new one is whole
        outcome, record = _write_tile(
            staging if recorded else store, tile, items, spec, read_options, scheduler
        )
        if record is not None:
            lease.check()  # a run whose lease was taken over never records (the new holder rewrites)
            if recorded:
                swapping = True
                swap_in(store, staging, tile.tile_id, record)
            else:
                store.write_record(tile.tile_id, record)
        if changes and outcome.status != TileStatus.FAILED:
            outcome.reason = f"rebuilt with {changes}" + (f"; {outcome.reason}" if outcome.reason else "")
    except Exception as exc:  # storage down, or a bug: the tile stays absent and is redone next run
        reason, _ = classify_error(exc)
        log.warning("tile %s failed: %s: %s", tile.tile_id, type(exc).__name__, reason)
        outcome = TileOutcome(  # retryable: whether the flow run's retry may pass
            tile.tile_id,
            TileStatus.FAILED,
            f"{type(exc).__name__}: {reason}",
            retryable=tile_failure_retryable(exc),
        )
    finally:
        if lease is not None:
            lease.release()
    if changes and outcome.status == TileStatus.FAILED and not swapping:
        outcome.reason += f" (not rebuilt with {changes}: the complete tile is kept)"
    outcome.elapsed_s = time.perf_counter() - t0
    return outcome


def _skipped(tile_id: str, record: Mapping[str, Any], reason: str) -> TileOutcome:
    """The outcome of a tile a run leaves as recorded (``record``: its completion record)."""
    status = str(record.get("status") or "")
    if status == TileStatus.EMPTY and reason.startswith("already complete"):
        reason = f"already recorded empty: {record.get('reason') or 'no usable pixels'}"
    return TileOutcome(tile_id, TileStatus.SKIPPED, reason, record_status=status)


def _write_tile(
    store: CubeStore,
    tile: Tile,
    items: Sequence[Mapping[str, Any]],
    spec: CubeSpec,
    read_options: Mapping[str, Any] | None,
    scheduler: str | None,
) -> tuple[TileOutcome, dict[str, Any] | None]:
    """Build a tile's groups in ``store``: the outcome, and the completion record for the caller to
    write (None when the tile failed; its data is then cleared)."""
    excluded: set[tuple[str, str]] = set()
    diagnosed: list[SkippedAsset] = []
    fractions: dict[tuple[str, str], list[float]] = {}
    cube: TileCube | None = None
    for attempt in range(MAX_READ_RETRIES + 1):
        cube = assemble_tile(tile, items, spec, exclude=excluded, read_options=read_options)
        if spec.composite != "none":  # one median per group instead of every acquisition
            cube.encoded = {k: composite_group(ds, spec) for k, ds in cube.encoded.items()}
        unreachable = unreachable_reason([*cube.skipped, *diagnosed])
        if unreachable and not spec.skip_unreachable:
            store.clear_tile(tile.tile_id)
            transient = [x.to_dict() for x in [*cube.skipped, *diagnosed] if x.transient]
            # unreachable: a reason that passes (network, server, local I/O), so a rerun may read them
            return TileOutcome(tile.tile_id, TileStatus.FAILED, unreachable, skipped=transient), None
        fractions = {}
        try:
            for key, ds in cube.encoded.items():
                fractions[key] = store.write_group(tile.tile_id, ds, spec=spec, scheduler=scheduler)
            break
        except Exception as exc:
            if not is_read_error(exc) or attempt == MAX_READ_RETRIES:
                raise
            found = [
                f
                for f in diagnose_read_failure(cube, read_options=read_options, error=exc)
                if (f.item, f.asset) not in excluded
            ]
            if not found:
                raise
            log.info(
                "tile %s: leaving out unreadable assets %s", tile.tile_id, [(f.item, f.asset) for f in found]
            )
            diagnosed.extend(found)
            excluded.update((f.item, f.asset) for f in found)
            store.clear_tile(tile.tile_id)
    assert cube is not None

    groups: list[dict[str, Any]] = []
    dropped: list[dict[str, str]] = []
    output_mb = 0.0
    for key, ds in cube.encoded.items():
        frac = fractions[key]
        if not any(f > 0 for f in frac):
            store.delete_group(tile.tile_id, *key)
            dropped.append(
                {"collection": key[0], "gsd_label": key[1], "reason": "all pixels cloud, shadow or nodata"}
            )
            continue
        nbytes = float(ds["reflectance"].size * ds["reflectance"].dtype.itemsize) / 1e6
        output_mb += nbytes
        groups.append(group_entry(tile.tile_id, ds, frac))
    skipped = [s.to_dict() for s in [*cube.skipped, *diagnosed]]
    used = sorted({i for g in groups for s in g["source_items"] for i in str(s).split(",") if i})
    if groups:
        status, reason = TileStatus.COMPLETE, ""
    elif dropped:
        status, reason = TileStatus.EMPTY, "all pixels cloud, shadow or nodata"
    elif skipped:
        status, reason = (
            TileStatus.EMPTY,
            f"every item touching the tile was left out ({len(skipped)} asset problem(s))",
        )
    else:
        status, reason = TileStatus.EMPTY, "no items touch this tile"
    # reasons and notes may quote a URL: each goes through the one list of secret parameters
    record = redact_record(
        tile_record(
            tile_id=tile.tile_id,
            epsg=tile.epsg,
            bounds=tile.bounds,
            spec=spec,
            status=status,
            reason=reason,
            groups=groups,
            dropped_groups=dropped,
            items=used,
            skipped=skipped,
            considered_items=item_versions(items),  # ids and versions (updated, processing): freshness.py
        )
    )
    labels = [f"{g['collection']}/{g['gsd_label']}" for g in groups]
    outcome = TileOutcome(
        tile.tile_id,
        TileStatus.DONE if groups else TileStatus.EMPTY,
        reason,
        groups=labels,
        skipped=skipped,
        output_mb=output_mb,
    )
    return outcome, record


# ---------------------------------------------------------------------------------------------
# Runs


class _ItemIndex(ItemIndex):
    """Items by footprint; ``for_tile`` re-checks the index's hits with ``items_touching``."""

    def for_tile(self, tile: Tile) -> list[Mapping[str, Any]]:
        return items_touching(tile, self.touching(tile))


def write_cubes(
    items: Iterable[Mapping[str, Any]],
    tiles: Iterable[Tile | str],
    spec: CubeSpec,
    out_url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    progress: bool = True,
    dask_client: Any = None,
    dask_address: str | None = None,
    workers: int = 1,
    read_options: Mapping[str, Any] | None = None,
    on_tile: Callable[[TileOutcome], None] | None = None,
    holder_wait_s: float = HOLDER_WAIT_S,
) -> RunSummary:
    """Build the cubes of ``tiles`` from ``items`` into ``out_url``, exactly once per tile.

    ``tiles``: :class:`Tile` objects or tile ids of ``spec.grid``. Tiles are independent tasks:
    ``dask_client`` (a ``distributed.Client``) runs them on a cluster, as does the scheduler at
    ``dask_address`` (else ``$DASK_SCHEDULER_ADDRESS``, see :func:`pipelines.runs.dask_address`);
    without either, ``workers`` local workers (threads) run them here (``workers=1``: one tile at a
    time, each using all cores through dask threads).
    ``read_options``: GDAL options for reading assets (not recorded). ``on_tile`` is called with
    each outcome as it arrives. ``holder_wait_s``: how long a tile whose lease another live run holds
    (and renews) is waited for before it fails naming that run (0: at once;
    :class:`~pipelines.outputs.HolderWait`). Returns the :class:`RunSummary`; raises only for an
    unusable output location or spec (CubeStoreError, ValueError).
    """
    t0 = time.perf_counter()
    item_list = list(items)
    tile_list = [spec.grid.tile(t) if isinstance(t, str) else t for t in tiles]
    tile_list = list({t.tile_id: t for t in tile_list}.values())
    store = CubeStore(out_url, storage_options)
    store.ensure_root(spec)
    summary = RunSummary(out_url=store.url)
    already = set(store.recorded_tiles())
    index = _ItemIndex(item_list)
    todo: list[Tile] = []
    outcomes: dict[str, TileOutcome] = {}
    records = store.records([t.tile_id for t in tile_list if t.tile_id in already])
    for tile in tile_list:
        state = freshness(records[tile.tile_id], index.for_tile(tile)) if tile.tile_id in records else None
        if state is not None and not state.rebuild:
            outcomes[tile.tile_id] = _skipped(tile.tile_id, records[tile.tile_id], state.reason())
        else:  # never built, or given items its record has not seen (freshness.py)
            todo.append(tile)
    log.info(
        "cubes: %d tile(s), %d already complete, %d to build -> %s",
        len(tile_list),
        len(already & set(outcomes)),
        len(todo),
        redact_url(store.url),
    )

    bar = _progress_bar(len(tile_list), progress, initial=len(tile_list) - len(todo))

    def finish(outcome: TileOutcome) -> None:
        outcomes[outcome.tile_id] = outcome
        if bar is not None:
            bar.update(1)
            counts = {
                s.value: sum(1 for o in outcomes.values() if o.status == s)
                for s in (TileStatus.DONE, TileStatus.EMPTY, TileStatus.FAILED)
            }
            bar.set_postfix(counts, refresh=False)
        if on_tile is not None:
            on_tile(outcome)

    address = None if dask_client is not None or not todo else runs.dask_address(dask_address)
    job = _tile_job(spec, store, read_options, holder_wait_s)
    try:
        if dask_client is not None:
            runs.log_dashboard(dask_client, "cubes")
            _run_distributed(dask_client, todo, index, job, finish)
        elif address is not None:
            with runs.dask_client(address) as client:
                _run_distributed(client, todo, index, job, finish)
        elif workers <= 1:
            for tile in todo:
                finish(
                    process_tile(
                        tile,
                        index.for_tile(tile),
                        spec,
                        store.url,
                        storage_options,
                        read_options=read_options,
                        holder_wait_s=holder_wait_s,
                    )
                )
        else:
            _run_threads(workers, todo, index, job, finish)
    finally:
        if bar is not None:
            bar.close()
    summary.outcomes = [outcomes[t.tile_id] for t in tile_list if t.tile_id in outcomes]
    summary.elapsed_s = time.perf_counter() - t0
    return summary


def _progress_bar(total: int, enabled: bool, initial: int = 0) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="cubes", unit="tile", dynamic_ncols=True)


_TileJob = Callable[[Tile, Sequence[Mapping[str, Any]]], TileOutcome]


def _tile_job(
    spec: CubeSpec, store: CubeStore, read_options: Mapping[str, Any] | None, holder_wait_s: float
) -> _TileJob:
    """``process_tile(tile, items)`` bound to one run's spec and store, for the thread and Dask runners.

    A ``functools.partial`` of a module-level function, so it pickles for Dask workers; each task
    reads synchronously (the runner already runs tiles in parallel).
    """
    return functools.partial(
        process_tile,
        spec=spec,
        out_url=store.url,
        storage_options=store.storage_options,
        read_options=read_options,
        scheduler="synchronous",
        holder_wait_s=holder_wait_s,
    )


def _run_threads(
    workers: int, todo: list[Tile], index: _ItemIndex, job: _TileJob, finish: Callable[[TileOutcome], None]
) -> None:
    """Up to ``workers * 2`` tiles submitted at a time. An interrupt (Ctrl-C, the ``aom`` SIGTERM
    handler's :class:`~pipelines.errors.Terminated`) or an error in ``finish`` cancels the tiles not
    started yet (every queued one, also one whose submit the interrupt cut short); the pool's exit
    still waits for the running ones (threads are not interrupted)."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cube-tile")
    try:
        pending: set[Future[TileOutcome]] = set()
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < workers * 2:
                tile = queue.pop(0)
                pending.add(pool.submit(job, tile, index.for_tile(tile)))
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                finish(fut.result())
    finally:  # only a tile not started yet is cancelled: it takes no lease, writes nothing
        pool.shutdown(wait=True, cancel_futures=True)


def _run_distributed(
    client: Any, todo: list[Tile], index: _ItemIndex, job: _TileJob, finish: Callable[[TileOutcome], None]
) -> None:
    from distributed import as_completed

    futures = [
        client.submit(
            job,
            tile,
            index.for_tile(tile),
            key=f"aom-cube-{tile.tile_id}-{os.getpid()}-{time.time_ns()}",
            pure=False,
        )
        for tile in todo
    ]
    for fut in as_completed(futures):
        try:
            finish(fut.result())
        except Exception as exc:  # the worker died: the tile stays absent
            tile_id = str(fut.key).split("-")[2] if str(fut.key).startswith("aom-cube-") else "?"
            reason = f"worker error: {type(exc).__name__}: {exc}"
            finish(TileOutcome(tile_id, TileStatus.FAILED, reason, retryable=tile_failure_retryable(exc)))
