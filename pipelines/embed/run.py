"""``run_embedding``: plan, fan the units out (threads or Dask), collect results, write STAC."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from pipelines import embeddings as es
from pipelines import storage
from pipelines.embed.plan import RunContext, RunPlan, Unit, plan_run
from pipelines.embed.request import EmbedRequest, EmbedSummary, TileResult, _reason
from pipelines.errors import RunFailedError
from pipelines.outputs import OutputKind, claim_output
from pipelines.retry import RetryError, RetryPolicy, call_with_retry, is_transient
from pipelines.runs import TileStatus
from pipelines.tiling import Tile

log = logging.getLogger(__name__)

#: Of :func:`_record_times`: how the listing of the output's completion records is retried when it
#: fails transiently (:func:`pipelines.retry.is_transient`); ``max_attempts`` is the request's.
RECORD_LISTING_RETRY = RetryPolicy()


# ------------------------------------------------------------------------------------------
# The run


def run_embedding(
    request: EmbedRequest,
    on_result: Callable[[TileResult], None] | None = None,
) -> EmbedSummary:
    """Plan (checks first), create the version and zones, fan out, write STAC; return the summary.

    ``on_result`` is called in this process with each tile's result as it arrives. Raises
    :class:`EmbedConfigError` (nothing written) when the request does not fit, and
    :class:`~pipelines.errors.RunFailedError` (nothing written) when the output's completion records
    cannot be listed (a transient failure after ``request.max_attempts`` attempts); per-tile faults
    are reported in the summary (``failed``), never raised: rerun the same request to finish.
    """
    from pipelines.embed.fanout import Fanout

    t0 = time.perf_counter()
    plan = plan_run(request)
    ctx = plan.context
    log.info(
        "embed: %d tile(s) x %d period(s), %d unit(s), model %s (%s), chips %d+2x%d tokens, seams blended "
        "over %d -> %s version %s",
        len(plan.tiles),
        len(plan.periods),
        len(plan.units),
        plan.checkpoint.name,
        plan.checkpoint.sha256[:12],
        plan.layout.core_tokens,
        plan.layout.margin_tokens,
        plan.layout.blend_tokens,
        storage.redact_url(ctx.out),
        plan.version.name,
    )
    summary = EmbedSummary(
        out=ctx.out,
        version=plan.version.name,
        tiles=len(plan.tiles),
        periods=[p.text for p in plan.periods],
        token_ground_m=plan.layout.token_m,
        tile_size_m=plan.grid.tile_size_m,
        notes=list(plan.notes),
        quantisation=plan.version.quantisation,
        warnings=list(plan.warnings),
    )

    written: set[str] = set()  # tiles whose record this run wrote: their STAC items are rewritten

    def collect(results: list[TileResult]) -> None:
        for r in results:
            if r.status in (TileStatus.DONE, TileStatus.EMPTY):
                written.add(r.tile_id)
            summary.results.append(r)
            if on_result is not None:
                on_result(r)

    # the recorded tiles, before any write: a listing that still fails after its retries fails the run here
    listing = dataclasses.replace(RECORD_LISTING_RETRY, max_attempts=request.max_attempts)
    times = _record_times(ctx, [t.tile_id for t in plan.tiles], listing)
    # an existing --out is used only when it is an aom embeddings store (docs/safety.md)
    claim_output(
        ctx.out,
        OutputKind.EMBEDDINGS,
        storage_options=ctx.out_options,
        inputs=[request.cubes, request.checkpoint],
    )
    with Fanout(request) as fanout:  # connects and checks the GPU resource before any write
        # geoemb:source_data: the catalog or cube store the inputs come from (absolute URI, redacted);
        # geoemb:chip_layout: tokens in pixels of the finest input band (as the STAC says)
        source_url = ctx.source.describe().partition(":")[2]
        finest = min((b.gsd_m for b in plan.bands), default=None)
        es.create_version(
            ctx.out, plan.version, ctx.out_options, source_data=[source_url], input_gsd_m=finest
        )
        for epsg in sorted({t.epsg for t in plan.tiles}):
            es.ensure_zone(ctx.out, plan.version.name, epsg, ctx.out_options)
        collect(plan.skipped)
        done = {ti: set(found) for ti, found in times.items()}
        stale = _stale(plan, times, summary.notes)
        todo: list[Unit] = []
        for unit in plan.units:
            redo = frozenset(t.tile_id for t in unit.tiles if t.tile_id in stale.get(unit.time_index, set()))
            if redo:
                todo.append(dataclasses.replace(unit, redo=redo))
            elif all(t.tile_id in done.get(unit.time_index, set()) for t in unit.tiles):
                collect(
                    [
                        TileResult(
                            t.tile_id, unit.time_index, TileStatus.SKIPPED, "already complete (record exists)"
                        )
                        for t in unit.tiles
                    ]
                )
            else:
                todo.append(unit)
        fanout.run(todo, ctx, collect, total=sum(len(u.tiles) for u in plan.units))
        summary.notes.extend(fanout.notes)
    try:  # tile leases a killed run left on tiles it had recorded (this run skipped them)
        es.remove_abandoned_tile_leases(ctx.out, ctx.out_options)
    except Exception as exc:  # they are taken over by the next writer of their tile all the same
        summary.notes.append(f"abandoned tile leases not removed: {_reason(exc)}")
    try:  # the tile vectors of the run's tiles into the few-object grid (incremental, one writer)
        es.consolidate_tile_vectors(ctx.out, plan.version.name, ctx.out_options, rewritten=stale)
    except Exception as exc:  # the per-tile vectors are safe; a rerun consolidates
        summary.notes.append(f"tile vectors not consolidated: {_reason(exc)}")
    if request.write_stac:
        try:
            summary.stac_collection = _write_stac(ctx, plan.tiles, written)
        except Exception as exc:  # the data is safe; STAC can be rewritten by a rerun
            summary.notes.append(f"STAC not written: {_reason(exc)}")
    summary.elapsed_s = time.perf_counter() - t0
    # one line: the caller shows the summary (aom embed prints summary.format(), the flows publish it)
    log.info(
        "embed: %d done, %d empty, %d failed, %d skipped in %.1f s",
        summary.done,
        summary.empty,
        len(summary.failed),
        sum(len(ids) for ids in summary.skipped.values()),
        summary.elapsed_s,
    )
    return summary


def _record_times(ctx: RunContext, tile_ids: list[str], policy: RetryPolicy) -> dict[int, dict[str, float]]:
    """Recorded tiles of the plan and their records' modification times, per time index, from
    listings of their ``<epsg>_<ix>_`` columns only; none where the version has no records folder yet
    (a fresh output). The listing is one call retried under ``policy`` while it fails transiently
    (:func:`pipelines.retry.is_transient`: a 503, an endpoint that does not answer); one that fails
    otherwise (a 403; anything but a missing records folder) or still fails when the attempts are spent raises
    :class:`RunFailedError` naming the store, caused by the last failure (so a flow retries it exactly
    when that is transient): never "no records", which made every tile's read under its lease fail in
    turn, one request and one failed tile each."""
    where = f"version {ctx.version!r} in {storage.redact_url(ctx.out)}"
    try:
        return call_with_retry(
            lambda: es.record_times(ctx.out, ctx.version, None, ctx.out_options, tile_ids),
            policy=policy,
            is_retryable=is_transient,
            describe=f"listing the completion records of {where}",
        )
    except Exception as exc:  # the last failure, not call_with_retry's wrapper: one readable line
        cause: BaseException = exc
        tries = ""
        if isinstance(exc, RetryError) and exc.last is not None:
            cause, tries = exc.last, f" after {exc.attempts} attempts"
        raise RunFailedError(
            f"cannot list the completion records of {where}{tries}: "
            f"{storage.redact_text(_reason(cause))}; nothing was embedded: rerun once the store answers"
        ) from cause


def _stale(plan: RunPlan, times: dict[int, dict[str, float]], notes: list[str]) -> dict[int, set[str]]:
    """Recorded tiles whose inputs gained items since they were embedded (``pipelines.embed.freshness``):
    from a cube store, their cube or a margin neighbour's was rebuilt or built since; from a catalog,
    the run's search gives them items of the period they were not given, or newer versions of them."""
    from pipelines.embed.freshness import find_stale, find_stale_catalog
    from pipelines.embed.sources import CatalogSource

    ctx = plan.context
    try:
        if isinstance(ctx.source, CatalogSource):
            source: CatalogSource = ctx.source
            found: dict[int, dict[str, dict[str, str | None]]] = {}
            for unit in plan.units:
                recorded = times.get(unit.time_index, {})
                for tile, items in zip(unit.tiles, unit.items, strict=True):
                    if tile.tile_id in recorded:
                        versions = source.period_versions(items, ctx.periods[unit.time_index])
                        found.setdefault(unit.time_index, {})[tile.tile_id] = versions
            stale, _ = find_stale_catalog(ctx.out, ctx.version, ctx.out_options, found, times)
            why = "the catalog gives them items of the period they were not given, or newer versions"
        else:
            stale, _ = find_stale(
                ctx.source,
                ctx.out,
                ctx.version,
                ctx.out_options,
                [t.tile_id for t in plan.tiles],
                plan.cube_times,
                times,
                ctx.periods,
                ctx.layout.pad_m,
            )
            why = "their cube or a margin neighbour's gained items since"
    except Exception as exc:  # the recorded tiles stay as they are; the next run checks again
        notes.append(f"input changes not checked: {_reason(exc)}")
        return {}
    n = sum(len(v) for v in stale.values())
    if n:
        notes.append(f"{n} recorded tile(s) embedded again: {why}")
    return stale


def _write_stac(ctx: RunContext, tiles: list[Tile], written: set[str]) -> str:
    """Items of the tiles this run wrote, plus those of the plan's recorded tiles whose item is missing
    or older than a record (an interrupted or STAC-less earlier run); the collection updated in place."""
    stale, fresh = es.stale_items(ctx.out, ctx.version, [t.tile_id for t in tiles], ctx.out_options)
    return es.write_stac(ctx.out, ctx.version, ctx.out_options, tiles=written | stale, linked=fresh)
