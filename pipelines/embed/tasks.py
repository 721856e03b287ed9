"""The work of one unit: load padded tiles, embed them, write them exactly once.

The same functions run in threads, in Dask workers and in tests; a unit's failure is a ``TileResult`` with status
``failed``, never an exception that stops the run.

One writer per tile: the run takes a tile's lease (:func:`pipelines.embeddings.tile_lease`,
``<out>/_leases/tile@<version>@t<i>@<tile_id>.json``) before the unit is submitted, and reads its
record once more under it (:mod:`pipelines.embed.claims`: a tile another live run holds is deferred,
never waited for in a task); only then are its pixels read (:func:`load_unit`). The task that encodes
and writes the tile takes the lease over from the run (:meth:`~pipelines.outputs.Lease.adopt`, with
its own heartbeat) and writes the record only while the lease is still its own
(``Lease.check``), so a task whose lease was taken over reports the tile failed. A task Dask reruns
because its worker died takes the dead task's lease over at once
(:func:`pipelines.embed.dask_workers.worker_gone`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipelines import embeddings as es
from pipelines.embed.checkpoint import _resolve_device, load_checkpoint_url
from pipelines.embed.chips import band_record, embed_region
from pipelines.embed.claims import WRITTEN_MEANWHILE, written_meanwhile
from pipelines.embed.dask_workers import lease_worker, worker_gone
from pipelines.embed.plan import RunContext, Unit
from pipelines.embed.request import TileResult, _reason
from pipelines.embed.sources import CatalogSource, CubeSource, PaddedTile
from pipelines.runs import TileStatus
from pipelines.tiling import Tile

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------
# Tasks (run on workers; also in-process with workers=0)


@dataclass
class LoadFailure:
    """A tile whose pixels could not be read (its ``retryable``: :attr:`TileResult.retryable`)."""

    tile_id: str
    time_index: int
    reason: str
    read_s: float = 0.0
    retryable: bool = True


def load_unit(unit: Unit, ctx: RunContext) -> list[PaddedTile | LoadFailure | TileResult]:
    """CPU task: read and composite the padded tiles of a unit, whose leases the run has taken and
    whose records it has checked under them (:attr:`Unit.claims`, :mod:`pipelines.embed.claims`).

    From a cube store the unit's tiles are read together (:meth:`CubeSource.read_block`: margins that
    neighbouring tiles share are decoded once); if that fails, each tile is read on its own so that
    one tile's failure stays that tile's."""
    period = ctx.periods[unit.time_index]
    failed: dict[str, LoadFailure] = {}
    claims = {tile_id: (owner, replaces) for tile_id, owner, replaces in unit.claims}
    for tile in unit.tiles:
        if tile.tile_id not in claims:  # never read without the run's lease (a rerun claims it)
            failed[tile.tile_id] = LoadFailure(
                tile.tile_id, unit.time_index, "not claimed: the run holds no lease"
            )
    pending = [t for t in unit.tiles if t.tile_id not in failed]
    read: dict[str, PaddedTile] = {}
    if isinstance(ctx.source, CubeSource) and len(pending) > 1:
        try:
            blocks = ctx.source.read_block(pending, period, unit.time_index, ctx.layout.pad_m)
            read = {p.tile.tile_id: p for p in blocks}
        except Exception as exc:
            log.warning("block read of %d tiles failed (%s): reading each alone", len(pending), _reason(exc))
    for k, tile in enumerate(unit.tiles):
        if tile.tile_id in failed or tile.tile_id in read:
            continue
        t0 = time.perf_counter()
        try:
            if isinstance(ctx.source, CatalogSource):
                items = unit.items[k] if unit.items else ()
                read[tile.tile_id] = ctx.source.read(tile, period, unit.time_index, ctx.layout.pad_m, items)
            else:
                read[tile.tile_id] = ctx.source.read(tile, period, unit.time_index, ctx.layout.pad_m)
        except Exception as exc:
            failed[tile.tile_id] = _load_failure(tile, unit.time_index, exc, t0)
    for tile_id, padded in read.items():
        padded.lease_owner, padded.replaces = claims[tile_id]
    return [failed.get(t.tile_id) or read[t.tile_id] for t in unit.tiles]


def _load_failure(tile: Tile, time_index: int, exc: BaseException, t0: float) -> LoadFailure:
    from pipelines.cubes import tile_failure_retryable

    log.warning("load %s@t%d failed: %s", tile.tile_id, time_index, _reason(exc))
    reason = f"read failed: {_reason(exc)}"
    return LoadFailure(
        tile.tile_id, time_index, reason, time.perf_counter() - t0, tile_failure_retryable(exc)
    )


def _set_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def embed_padded(padded: PaddedTile, ctx: RunContext) -> TileResult:
    """Encoder + write for one loaded tile (the data, then its completion record), under the tile's
    lease, taken over from the run that took it (see the module docstring)."""
    tile = padded.tile
    res = TileResult(tile.tile_id, padded.time_index, TileStatus.DONE, read_s=padded.read_s)
    n = ctx.layout.tile_tokens
    res.total_tokens = n * n
    res.chips = ctx.layout.chips_per_side**2
    if padded.status == TileStatus.SKIPPED:
        res.status, res.reason = TileStatus.SKIPPED, padded.reason
        return res
    worker = lease_worker(ctx)  # "" outside Dask
    lease = es.tile_lease(ctx.out, ctx.version, tile.tile_id, padded.time_index, ctx.out_options, worker)
    adopted = padded.lease_owner is not None and lease.adopt(padded.lease_owner)
    if not adopted:
        # the run's lease expired and was taken over (or this is a retry of a unit whose worker
        # died holding it: that worker gone from the cluster counts as abandoned at once, see
        # dask_workers.worker_gone): as any writer, take it only when free or abandoned
        holder = lease.take(worker_gone(ctx))
        if holder is not None:  # another live run's: worth a retry (res.retryable stays True)
            res.status = TileStatus.FAILED
            res.reason = f"LeaseLostError: the tile's lease is held by another {holder.describe()}; rerun"
            return res
    try:
        if not adopted and written_meanwhile(ctx, tile.tile_id, padded.time_index, padded.replaces):
            res.status, res.reason = TileStatus.SKIPPED, WRITTEN_MEANWHILE
            return res
        return _embed_and_write(padded, ctx, res, lease.check)
    finally:
        lease.release()


def _embed_and_write(
    padded: PaddedTile, ctx: RunContext, res: TileResult, before_record: Callable[[], None]
) -> TileResult:
    tile = padded.tile
    n = ctx.layout.tile_tokens
    device = _resolve_device(ctx.device)
    ckpt = load_checkpoint_url(ctx.checkpoint, ctx.input_options, ctx.checkpoint_sha256, device)
    dim = ckpt.model.embedding_dim(ctx.embedding)
    if padded.status == TileStatus.DONE:
        _set_threads(ctx.threads)
        region = embed_region(
            ckpt.model,
            padded.groups,
            ctx.layout,
            ctx.normaliser,
            batch_size=ctx.batch_size,
            device=device,
            precision=ctx.precision,
            embedding=ctx.embedding,
        )
        emb = region.embeddings
        res.chips_run, res.model_s = region.chips_run, region.model_s
    else:
        emb = np.full((n, n, dim), np.nan, dtype=np.float32)
    bands = [
        {**band_record(b, g.collection), "normalisation": ctx.normaliser.sources.get(b.key, "identity")}
        for g in padded.groups
        for b in g.bands
    ]
    provenance = {
        "input_items": list(padded.input_items),
        **({"cube_written_at": padded.cube_written_at} if padded.cube_written_at else {}),
        **({"margin_cubes": dict(padded.margin_cubes)} if padded.cube_written_at else {}),
        **(
            {"considered_items": list(padded.considered_items)} if padded.considered_items is not None else {}
        ),
        **({"item_versions": dict(padded.item_versions)} if padded.item_versions is not None else {}),
        **(
            {"margin_item_versions": {n: dict(v) for n, v in padded.margin_item_versions.items()}}
            if padded.margin_item_versions is not None
            else {}
        ),
        "bands": bands,
        "gsds_m": sorted({float(g.gsd_m) for g in padded.groups}),
        "collections": sorted({g.collection for g in padded.groups}),
        "source": ctx.source.describe(),
        "period": ctx.periods[padded.time_index].text,
        "composite": ctx.composite,
        "observations": dict(padded.observations),
        "chip": ctx.layout.to_dict(),
        "chips_run": res.chips_run,
        "precision": ctx.precision,
        "notes": list(padded.notes[:20]),
    }
    if padded.status != TileStatus.DONE:
        provenance["nodata_reason"] = padded.reason
    t0 = time.perf_counter()
    record = es.write_tile(
        ctx.out, ctx.version, tile, padded.time_index, emb, None, provenance, ctx.out_options, before_record
    )
    res.write_s = time.perf_counter() - t0
    res.valid_tokens = int(record.get("valid_tokens", 0))
    res.max_abs_quant_error = (record.get("quantisation") or {}).get("max_abs_error")
    if record.get("status") == TileStatus.NODATA:
        res.status = TileStatus.EMPTY
        res.reason = padded.reason or "no valid token (all inputs masked)"
    return res


def embed_loaded(loaded: list[PaddedTile | LoadFailure | TileResult], ctx: RunContext) -> list[TileResult]:
    """GPU task: embed and write every loaded tile of a unit; never raises for one tile's fault."""
    out = []
    for item in loaded:
        if isinstance(item, TileResult):
            out.append(item)
            continue
        if isinstance(item, LoadFailure):
            out.append(
                TileResult(
                    item.tile_id,
                    item.time_index,
                    TileStatus.FAILED,
                    item.reason,
                    read_s=item.read_s,
                    retryable=item.retryable,
                )
            )
            continue
        try:
            res = embed_padded(item, ctx)
        except Exception as exc:
            from pipelines.cubes import tile_failure_retryable

            log.warning("embed %s@t%d failed: %s", item.tile.tile_id, item.time_index, _reason(exc))
            res = TileResult(
                item.tile.tile_id, item.time_index, TileStatus.FAILED, f"embed/write failed: {_reason(exc)}"
            )
            res.retryable = tile_failure_retryable(exc)
        res.worker = f"{os.uname().nodename}:{os.getpid()}"
        out.append(res)
    return out


def process_claimed(unit: Unit, ctx: RunContext) -> list[TileResult]:
    """Load + embed in one call, of a unit whose tiles' leases the run holds (:attr:`Unit.claims`)."""
    return embed_loaded(load_unit(unit, ctx), ctx)


def process_unit(unit: Unit, ctx: RunContext) -> list[TileResult]:
    """Claim the unit's tiles (:mod:`pipelines.embed.claims`), then load + embed them, in this process."""
    from pipelines.embed.claims import run_units

    out: list[TileResult] = []
    run_units([unit], ctx, lambda claimed: process_claimed(claimed, ctx), out.extend)
    return out
