"""The work of one unit: load padded tiles, embed them, write them exactly once.

The same functions run in threads, in Dask workers and in tests; a unit's failure is a ``TileResult`` with status
``failed``, never an exception that stops the run.

One writer per tile: a loaded tile is encoded and written only under its lease
(:func:`pipelines.embeddings.tile_lease`, ``<out>/_leases/tile@<version>@t<i>@<tile_id>.json``), as
the cube builder does. A tile whose lease another live run holds is waited for, then skipped once
that run's record is there (``written by another run meanwhile``); when that run ends without a
record, this one takes the lease and writes the tile. The record is written only while the lease is
still this run's (``Lease.check``), so a run whose lease was taken over reports the tile failed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipelines import embeddings as es
from pipelines import storage
from pipelines.embed.checkpoint import _resolve_device, load_checkpoint_url
from pipelines.embed.chips import band_record, embed_region
from pipelines.embed.plan import RunContext, Unit
from pipelines.embed.request import TileResult
from pipelines.embed.sources import CatalogSource, CubeSource, PaddedTile
from pipelines.runs import TileStatus
from pipelines.tiling import Tile

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------
# Tasks (run on workers; also in-process with workers=0)


@dataclass
class LoadFailure:
    tile_id: str
    time_index: int
    reason: str
    read_s: float = 0.0


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return storage.redact_url(f"{type(exc).__name__}: {text}"[:400])


def _done_already(ctx: RunContext, tile: Tile, time_index: int) -> bool:
    return es.tile_is_complete(ctx.out, ctx.version, tile.tile_id, time_index, ctx.out_options)


def record_digest(ctx: RunContext, tile_id: str, time_index: int) -> str | None:
    """A digest of the tile's completion record as stored now; None when it has none (an access
    failure raises: the tile fails, it is never taken as unrecorded)."""
    try:
        rec = es.read_tile_record(ctx.out, ctx.version, tile_id, time_index, ctx.out_options)
    except FileNotFoundError:
        return None
    return hashlib.sha256(storage.json_dumps(rec).encode()).hexdigest()


def _written_meanwhile(ctx: RunContext, padded: PaddedTile) -> bool:
    """Another run recorded the tile since it was loaded: a record where there was none, or, for a
    tile embedded again, a record other than the one it replaces."""
    if padded.replaces is None:
        return _done_already(ctx, padded.tile, padded.time_index)
    return record_digest(ctx, padded.tile.tile_id, padded.time_index) != padded.replaces


def load_unit(unit: Unit, ctx: RunContext) -> list[PaddedTile | LoadFailure | TileResult]:
    """CPU task: read and composite the padded tiles of a unit (skipping tiles already complete).

    From a cube store the unit's tiles are read together (:meth:`CubeSource.read_block`: margins that
    neighbouring tiles share are decoded once); if that fails, each tile is read on its own so that
    one tile's failure stays that tile's."""
    period = ctx.periods[unit.time_index]
    done: dict[str, TileResult] = {}
    failed: dict[str, LoadFailure] = {}
    replaces: dict[str, str | None] = {}  # tiles embedded again: the record they replace
    pending: list[Tile] = []
    for tile in unit.tiles:
        t0 = time.perf_counter()
        try:
            if tile.tile_id in unit.redo:
                replaces[tile.tile_id] = record_digest(ctx, tile.tile_id, unit.time_index)
                pending.append(tile)
            elif _done_already(ctx, tile, unit.time_index):
                done[tile.tile_id] = TileResult(
                    tile.tile_id, unit.time_index, TileStatus.SKIPPED, "already complete (record exists)"
                )
            else:
                pending.append(tile)
        except Exception as exc:
            failed[tile.tile_id] = _load_failure(tile, unit.time_index, exc, t0)
    read: dict[str, PaddedTile] = {}
    if isinstance(ctx.source, CubeSource) and len(pending) > 1:
        try:
            blocks = ctx.source.read_block(pending, period, unit.time_index, ctx.layout.pad_m)
            read = {p.tile.tile_id: p for p in blocks}
        except Exception as exc:
            log.warning("block read of %d tiles failed (%s): reading each alone", len(pending), _reason(exc))
    for k, tile in enumerate(unit.tiles):
        if tile.tile_id in done or tile.tile_id in failed or tile.tile_id in read:
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
    for tile_id, digest in replaces.items():
        if tile_id in read:
            read[tile_id].replaces = digest
    return [done.get(t.tile_id) or failed.get(t.tile_id) or read[t.tile_id] for t in unit.tiles]


def _load_failure(tile: Tile, time_index: int, exc: BaseException, t0: float) -> LoadFailure:
    log.warning("load %s@t%d failed: %s", tile.tile_id, time_index, _reason(exc))
    return LoadFailure(tile.tile_id, time_index, f"read failed: {_reason(exc)}", time.perf_counter() - t0)


def _set_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


WRITTEN_MEANWHILE = "written by another run meanwhile (record exists)"


def embed_padded(padded: PaddedTile, ctx: RunContext) -> TileResult:
    """Encoder + write for one loaded tile (the data, then its completion record), under the tile's
    lease (see the module docstring)."""
    tile = padded.tile
    res = TileResult(tile.tile_id, padded.time_index, TileStatus.DONE, read_s=padded.read_s)
    n = ctx.layout.tile_tokens
    res.total_tokens = n * n
    res.chips = ctx.layout.chips_per_side**2
    if padded.status == TileStatus.SKIPPED:
        res.status, res.reason = TileStatus.SKIPPED, padded.reason
        return res
    lease = es.tile_lease(ctx.out, ctx.version, tile.tile_id, padded.time_index, ctx.out_options)
    # another live run writing this tile: wait for it; its record ends the wait
    if not lease.acquire_unless(lambda: _written_meanwhile(ctx, padded)):
        res.status, res.reason = TileStatus.SKIPPED, WRITTEN_MEANWHILE
        return res
    try:
        if _written_meanwhile(ctx, padded):  # recorded between this run's load and its lease
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
                TileResult(item.tile_id, item.time_index, TileStatus.FAILED, item.reason, read_s=item.read_s)
            )
            continue
        try:
            res = embed_padded(item, ctx)
        except Exception as exc:
            log.warning("embed %s@t%d failed: %s", item.tile.tile_id, item.time_index, _reason(exc))
            res = TileResult(
                item.tile.tile_id, item.time_index, TileStatus.FAILED, f"embed/write failed: {_reason(exc)}"
            )
        res.worker = f"{os.uname().nodename}:{os.getpid()}"
        out.append(res)
    return out


def process_unit(unit: Unit, ctx: RunContext) -> list[TileResult]:
    """Load + embed in one call (in-process runs, and clusters without a GPU split)."""
    return embed_loaded(load_unit(unit, ctx), ctx)
