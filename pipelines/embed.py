"""Embedding runs: cubes or STAC items -> AOM encoder -> the continent-scale embeddings store.

Public API (the Prefect flow passes URIs and plain values only)::

    from pipelines.embed import EmbedRequest, run_embedding

    summary = run_embedding(EmbedRequest(
        checkpoint="s3://models/aom-base.safetensors",
        aoi=(5.9, 44.9, 6.1, 45.1),                 # bbox (W, S, E, N) or a GeoJSON geometry dict
        datetime="2023-06-01/2023-08-31",           # one composite per range (comma = several)
        cubes="s3://bucket/cubes",                  # or catalog="s3://bucket/catalog/items.parquet"
        out="s3://bucket/embeddings",
    ))
    summary.to_dict()   # tiles done / nodata / skipped (with reasons) / failed, km², throughput

What a run does (``docs/embedding.md`` has the details):

1. **Checks first.** The checkpoint is read and hashed, the tiles of the grid over the AOI are
   listed, the input bands are resolved, and the request is checked against the checkpoint's
   config (token size vs tile size, patch range vs GSDs, normalisation statistics, an existing
   version's definition). Anything that does not fit raises :class:`EmbedConfigError` before
   anything is written.
2. **Version and zones.** ``embeddings_store.create_version`` (id = model + checkpoint hash) and
   ``ensure_zone`` per UTM zone.
3. **Fan-out.** One unit of work = a tile (or ``tiles_per_task`` tiles) x a period. Each unit is two
   Dask tasks: *load* (CPU: read, decode and composite the padded tile) and *embed* (annotated with
   the GPU resource when the cluster has one: overlapping chips through the encoder, keep the chip
   centres, quantise and write the tile's shard, then its completion record).
4. **Exactly once.** A tile is done when its record exists (written after the data, see
   :mod:`pipelines.embeddings_store`); units whose tiles are all done are skipped, a killed worker's
   unit is recomputed (same inputs, same bytes into the same shard), so reruns leave no duplicates
   and no holes.
5. **STAC.** ``write_stac`` (collection + one item per tile, ``emb`` extension).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pipelines import embeddings_store as es
from pipelines import storage
from pipelines.embed_chips import (
    BandInfo,
    ChipLayout,
    EmbedConfigError,
    Normaliser,
    check_gsds,
    choose_layout,
    embed_region,
    resolve_normaliser,
)
from pipelines.embed_sources import (
    CatalogSource,
    CubeSource,
    PaddedTile,
    Period,
    parse_periods,
    search_interval,
)
from pipelines.tiling import ItemIndex, Tile, TileGrid

log = logging.getLogger(__name__)

__all__ = [
    "EmbedConfigError",
    "EmbedRequest",
    "EmbedSummary",
    "TileResult",
    "load_checkpoint_url",
    "plan_run",
    "run_embedding",
]

COMPOSITES = ("median",)
PRECISIONS = ("fp32", "bf16")


# ------------------------------------------------------------------------------------------
# Request and results


@dataclass(frozen=True)
class EmbedRequest:
    """Everything a run needs, as URIs and plain values (picklable, JSON-able via :meth:`to_dict`).

    Inputs: exactly one of ``cubes`` (cube store URL) or ``catalog`` (local catalog file
    ``catalog.json``/``*.ndjson``/``*.parquet`` or a STAC API URL; ``catalog_name`` is its registry
    entry). ``aoi``: ``(W, S, E, N)`` or a GeoJSON geometry/Feature; ``tiles``: explicit tile ids
    (intersected with the AOI when both are given). ``datetime``: one RFC 3339 range per time slice,
    comma-separated. ``collections``/``bands``: restrict the inputs (default: every collection of
    the cubes; ``sentinel-2-l2a`` from a catalog; all bands).

    Execution: ``dask_address`` (an existing scheduler), else a LocalCluster of ``workers`` processes
    x ``threads_per_worker`` threads (``workers=0``: run in this process, no Dask); the encoder uses
    ``torch_threads`` threads (a fixed count keeps results bit-identical between runs). ``gpu_resource``:
    ``"auto"`` annotates embed tasks with ``{"GPU": 1}`` when some worker offers a ``GPU`` resource,
    a name requires that resource, ``"none"`` never annotates.

    ``storage_options`` are for ``out``; ``input_storage_options`` for cubes, catalog and
    checkpoint (default: the same); ``read_options`` are GDAL options for COG reads. They are never
    logged nor recorded.
    """

    checkpoint: str
    out: str
    datetime: str
    aoi: Any = None
    tiles: tuple[str, ...] = ()
    cubes: str | None = None
    catalog: str | None = None
    catalog_name: str = "sample"
    collections: tuple[str, ...] = ()
    bands: tuple[str, ...] = ()
    version: str | None = None
    tile_size_m: float = 7680.0
    core_tokens: int | None = None
    margin_tokens: int | None = None
    composite: str = "median"
    batch_size: int = 8
    tiles_per_task: int = 1
    dask_address: str | None = None
    workers: int = 2
    threads_per_worker: int = 2
    torch_threads: int = 1
    gpu_resource: str = "auto"
    device: str = "auto"
    precision: str = "fp32"
    max_in_flight: int | None = None
    strip_mb: float = 64.0
    write_stac: bool = True
    progress: bool = True
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    input_storage_options: Mapping[str, Any] | None = field(default=None, repr=False)
    read_options: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in ("tiles", "collections", "bands"):
            v = getattr(self, name)
            if isinstance(v, str):
                v = [p for p in v.split(",") if p]
            object.__setattr__(self, name, tuple(str(x) for x in (v or ())))
        if self.aoi is not None and not isinstance(self.aoi, Mapping):
            object.__setattr__(self, "aoi", tuple(float(v) for v in self.aoi))
        if (self.cubes is None) == (self.catalog is None):
            raise EmbedConfigError("give exactly one input: cubes=<cube store URL> or catalog=<catalog URL>")
        if self.aoi is None and not self.tiles:
            raise EmbedConfigError("give an area: aoi=(W, S, E, N) / a GeoJSON geometry, or tiles=[ids]")
        if self.composite not in COMPOSITES:
            raise EmbedConfigError(f"composite must be one of {COMPOSITES}, got {self.composite!r}")
        if self.precision not in PRECISIONS:
            raise EmbedConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if (
            self.batch_size < 1
            or self.tiles_per_task < 1
            or self.workers < 0
            or self.threads_per_worker < 1
            or self.torch_threads < 1
        ):
            raise EmbedConfigError(
                "batch_size, tiles_per_task, threads_per_worker, torch_threads must be >= 1 and workers >= 0"
            )

    @property
    def input_options(self) -> dict[str, Any]:
        return dict(
            self.storage_options if self.input_storage_options is None else self.input_storage_options
        )

    def options_for(self, url: str | None) -> dict[str, Any]:
        """Input options for ``url``: none for local paths (the local filesystem takes no credentials)."""
        return {} if url is None or storage.is_local(url) else self.input_options

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmbedRequest:
        """From plain JSON values (e.g. flow parameters); unknown keys are refused."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise EmbedConfigError(f"unknown EmbedRequest fields {unknown}; known: {sorted(known)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, credentials removed (for logs, Prefect parameters and the run summary)."""
        d = asdict(self)
        d["storage_options"] = storage.redact_options(self.storage_options)
        d["input_storage_options"] = (
            None if self.input_storage_options is None else storage.redact_options(self.input_storage_options)
        )
        d["read_options"] = storage.redact_options(self.read_options)
        for k in ("checkpoint", "out", "cubes", "catalog"):
            if d.get(k):
                d[k] = storage.redact_url(str(d[k]))
        d["tiles"], d["collections"], d["bands"] = list(self.tiles), list(self.collections), list(self.bands)
        if isinstance(self.aoi, tuple):
            d["aoi"] = list(self.aoi)
        return d


@dataclass
class TileResult:
    """What happened to one (tile, time slice).

    ``status``: ``done`` (written, has valid tokens), ``nodata`` (written and recorded as nodata),
    ``skipped`` (not written by this run: already complete, or no cube), ``failed`` (not recorded;
    the next run redoes it).
    """

    tile_id: str
    time_index: int
    status: str
    reason: str = ""
    valid_tokens: int = 0
    total_tokens: int = 0
    chips: int = 0
    chips_run: int = 0
    read_s: float = 0.0
    model_s: float = 0.0
    write_s: float = 0.0
    max_abs_quant_error: float | None = None
    worker: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EmbedSummary:
    """Run summary: counts, reasons, area, throughput (``format()`` for people, ``to_dict()`` for machines)."""

    out: str
    version: str
    tiles: int
    periods: list[str]
    results: list[TileResult] = field(default_factory=list)
    elapsed_s: float = 0.0
    token_ground_m: float = 160.0
    tile_size_m: float = 7680.0
    stac_collection: str | None = None
    notes: list[str] = field(default_factory=list)

    def _count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def done(self) -> int:
        return self._count("done")

    @property
    def nodata(self) -> int:
        return self._count("nodata")

    @property
    def failed(self) -> dict[str, str]:
        return {f"{r.tile_id}@t{r.time_index}": r.reason for r in self.results if r.status == "failed"}

    def _by_reason(self, status: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for r in self.results:
            if r.status == status:
                out.setdefault(r.reason or status, []).append(f"{r.tile_id}@t{r.time_index}")
        return out

    @property
    def skipped(self) -> dict[str, list[str]]:
        """Not written by this run, by reason (already complete, no cube ...)."""
        return self._by_reason("skipped")

    @property
    def nodata_reasons(self) -> dict[str, list[str]]:
        """Written as nodata and recorded, by reason (all cloud, no acquisition ...)."""
        return self._by_reason("nodata")

    @property
    def complete(self) -> bool:
        return not self.failed

    @property
    def chips(self) -> int:
        return sum(r.chips_run for r in self.results)

    @property
    def km2_covered(self) -> float:
        return sum(r.valid_tokens for r in self.results) * self.token_ground_m**2 / 1e6

    @property
    def km2_tiles(self) -> float:
        n = sum(1 for r in self.results if r.status in ("done", "nodata"))
        return n * self.tile_size_m**2 / 1e6

    def to_dict(self) -> dict[str, Any]:
        el = max(self.elapsed_s, 1e-9)
        model_s = sum(r.model_s for r in self.results)
        qerr = [r.max_abs_quant_error for r in self.results if r.max_abs_quant_error is not None]
        return {
            "out": storage.redact_url(self.out),
            "version": self.version,
            "periods": self.periods,
            "tiles": self.tiles,
            "units": len(self.results),
            "done": self.done,
            "nodata": self.nodata,
            "skipped": {k: len(v) for k, v in self.skipped.items()},
            "skipped_tiles": self.skipped,
            "nodata_tiles": self.nodata_reasons,
            "failed": self.failed,
            "complete": self.complete,
            "chips": self.chips,
            "km2_covered": round(self.km2_covered, 3),
            "km2_tiles_written": round(self.km2_tiles, 3),
            "elapsed_s": round(self.elapsed_s, 3),
            "chips_per_s": round(self.chips / el, 4),
            "km2_per_hour": round(self.km2_tiles * 3600.0 / el, 2),
            "model_s": round(model_s, 3),
            "read_s": round(sum(r.read_s for r in self.results), 3),
            "write_s": round(sum(r.write_s for r in self.results), 3),
            "max_abs_quant_error": max(qerr) if qerr else None,
            "quant_error_bound": es.QUANT_MAX_ABS_ERROR,
            "stac_collection": storage.redact_url(self.stac_collection) if self.stac_collection else None,
            "notes": self.notes,
        }

    def format(self, max_lines: int = 15) -> str:
        d = self.to_dict()
        lines = [
            f"embeddings {d['version']} -> {d['out']}: {self.tiles} tile(s) x {len(self.periods)} period(s): "
            f"{d['done']} done, {d['nodata']} nodata, {len(self.failed)} failed, "
            f"{sum(1 for r in self.results if r.status == 'skipped')} skipped",
            f"  {d['km2_covered']:.1f} km² covered by valid tokens, {d['km2_tiles_written']:.1f} km² of tiles written; "
            f"{d['chips']} chips in {d['elapsed_s']:.1f} s = {d['chips_per_s']:.2f} chips/s, "
            f"{d['km2_per_hour']:.0f} km²/h",
        ]
        if d["max_abs_quant_error"] is not None:
            lines.append(
                f"  int8 quantisation: max |error| {d['max_abs_quant_error']:.5f} (bound {es.QUANT_MAX_ABS_ERROR:.5f})"
            )
        for kind, table in (("skipped", self.skipped), ("nodata", self.nodata_reasons)):
            for reason, ids in table.items():
                more = f" ... (+{len(ids) - 3})" if len(ids) > 3 else ""
                lines.append(f"  {kind}: {len(ids)} x {reason}: {', '.join(ids[:3])}{more}")
        for i, (tid, reason) in enumerate(self.failed.items()):
            if i >= max_lines:
                lines.append(f"  ... and {len(self.failed) - max_lines} more failures")
                break
            lines.append(f"  FAILED {tid}: {reason}")
        if self.failed:
            lines.append("  rerun the same command to finish the failed tiles (completed tiles are skipped)")
        if self.stac_collection:
            lines.append(f"  STAC: {storage.redact_url(self.stac_collection)}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class LoadedCheckpoint:
    model: Any
    config: Any
    norm_stats: dict[str, Any] | None
    meta: dict[str, Any]
    sha256: str
    name: str
    model_version: str


_MODELS: dict[tuple[str, str], LoadedCheckpoint] = {}
_MODELS_LOCK = threading.Lock()


def _model_name(config: Any, extra: Mapping[str, Any]) -> str:
    from aom_model import AOMConfig

    if extra.get("model_name"):
        return str(extra["model_name"])
    for size in ("tiny", "small", "base"):
        if config == AOMConfig.named(size):
            return f"aom-{size}"
    return "aom-custom"


def load_checkpoint_url(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    expect_sha256: str | None = None,
    device: str = "cpu",
) -> LoadedCheckpoint:
    """Read a checkpoint from any fsspec URL, hash it, load the model (cached per process + device).

    With ``expect_sha256`` (workers) a cached model of that hash is reused without reading; without
    it (planning) the bytes are always read and hashed, so a replaced checkpoint is never stale.
    """
    key = (storage.normalise_url(url), device)
    with _MODELS_LOCK:
        hit = _MODELS.get(key)
        if hit is not None and expect_sha256 is not None and hit.sha256 == expect_sha256:
            return hit
    from aom_model import load_checkpoint

    fs, path = storage.filesystem(url, storage_options)
    try:
        with fs.open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise EmbedConfigError(f"checkpoint {storage.redact_url(url)} not found") from None
    sha = hashlib.sha256(data).hexdigest()
    if hit is not None and hit.sha256 == sha:
        return hit
    if expect_sha256 is not None and sha != expect_sha256:
        raise EmbedConfigError(
            f"checkpoint {storage.redact_url(url)} changed during the run (sha256 {sha[:12]} != {expect_sha256[:12]})"
        )
    try:
        model, config, norm_stats, meta = load_checkpoint(data, map_location=device)
    except ValueError as exc:
        raise EmbedConfigError(f"checkpoint {storage.redact_url(url)} cannot be loaded: {exc}") from None
    extra = dict(meta.get("extra") or {})
    loaded = LoadedCheckpoint(
        model=model,
        config=config,
        norm_stats=norm_stats,
        meta=meta,
        sha256=sha,
        name=_model_name(config, extra),
        model_version=str(extra.get("model_version") or f"sha256-{sha[:12]}"),
    )
    with _MODELS_LOCK:
        _MODELS[key] = loaded
    return loaded


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:  # pragma: no cover - torch is a dependency
        return "cpu"


# ------------------------------------------------------------------------------------------
# Planning (all checks, no writes)


@dataclass(frozen=True)
class Unit:
    """One unit of work: some tiles at one time slice."""

    tiles: tuple[Tile, ...]
    time_index: int
    items: tuple[tuple[Mapping[str, Any], ...], ...] = ()  # catalog mode: items touching each padded tile

    @property
    def name(self) -> str:
        first = self.tiles[0].tile_id
        return (
            f"{first}+{len(self.tiles) - 1}@t{self.time_index}"
            if len(self.tiles) > 1
            else f"{first}@t{self.time_index}"
        )


@dataclass(frozen=True)
class RunContext:
    """What every task needs (small, picklable; storage options travel but are never logged)."""

    checkpoint: str
    checkpoint_sha256: str
    input_options: Mapping[str, Any]
    out: str
    out_options: Mapping[str, Any]
    version: str
    layout: ChipLayout
    periods: tuple[Period, ...]
    source: CubeSource | CatalogSource
    normaliser: Normaliser
    batch_size: int
    device: str
    precision: str
    threads: int
    composite: str


@dataclass
class RunPlan:
    request: EmbedRequest
    checkpoint: LoadedCheckpoint
    grid: TileGrid
    tiles: list[Tile]
    periods: list[Period]
    layout: ChipLayout
    normaliser: Normaliser
    bands: list[BandInfo]
    version: es.EmbeddingsVersion
    context: RunContext
    units: list[Unit]
    skipped: list[TileResult]
    notes: list[str]


def _tiles_for(request: EmbedRequest, grid: TileGrid) -> list[Tile]:
    from pipelines.tiling import TileError

    try:
        tiles: list[Tile] | None = None
        if request.aoi is not None:
            if isinstance(request.aoi, Mapping):
                tiles = grid.tiles_for_geometry(request.aoi)
            else:
                tiles = grid.tiles_for_bbox(tuple(request.aoi))
        if request.tiles:
            explicit = [grid.tile(t) for t in request.tiles]
            if tiles is None:
                tiles = explicit
            else:
                keep = {t.tile_id for t in tiles}
                tiles = [t for t in explicit if t.tile_id in keep]
    except TileError as exc:
        raise EmbedConfigError(str(exc)) from None
    if not tiles:
        raise EmbedConfigError("the AOI / tile list selects no tile of the grid")
    return sorted({t.tile_id: t for t in tiles}.values(), key=lambda t: t.tile_id)


def _search_items(
    request: EmbedRequest,
    tiles: Sequence[Tile],
    periods: Sequence[Period],
    collections: tuple[str, ...],
    margin_m: float,
) -> list[dict[str, Any]]:
    """Items touching the padded tiles (not just the AOI: a tile is embedded whole, margins included)."""
    import shapely
    from shapely.geometry import mapping, shape
    from shapely.ops import unary_union

    from pipelines.embed_sources import padded_tile_obj
    from pipelines.search import SearchError, SearchRequest, search

    geom = unary_union([shape(padded_tile_obj(t, margin_m).footprint_wgs84()) for t in tiles])
    if shapely.get_num_coordinates(geom) > 5000:  # keep the request small (large AOIs: many tiles)
        geom = geom.convex_hull
    try:
        result = search(
            SearchRequest(
                collections=collections,
                intersects=dict(mapping(geom)),
                datetime=search_interval(periods),
                catalog=request.catalog_name,
            ),
            catalog_url=request.catalog,
            storage_options=request.options_for(request.catalog) or None,
        )
    except SearchError as exc:
        raise EmbedConfigError(f"catalog search failed: {exc}") from None
    return [dict(i) for i in result.items]


def plan_run(request: EmbedRequest) -> RunPlan:
    """Resolve and check everything; raises :class:`EmbedConfigError` before anything is written."""
    from pipelines.embed_sources import padded_tile_obj

    notes: list[str] = []
    periods = parse_periods(request.datetime)
    grid = TileGrid(request.tile_size_m)
    ckpt = load_checkpoint_url(request.checkpoint, request.options_for(request.checkpoint))
    cfg = ckpt.config
    token_m = float(cfg.token_ground_m)
    per_tile = grid.tile_size_m / token_m
    if abs(per_tile - round(per_tile)) > 1e-9:
        raise EmbedConfigError(
            f"checkpoint {ckpt.name} has {token_m:g} m tokens, which do not divide the {grid.tile_size_m:g} m "
            f"tiles ({per_tile:.3f} tokens a side): use a checkpoint whose token_ground_m divides the tile "
            "size, or another tile_size_m"
        )
    tiles = _tiles_for(request, grid)

    skipped: list[TileResult] = []
    source: CubeSource | CatalogSource
    items_index: ItemIndex | None = None
    if request.cubes is not None:
        source = CubeSource(
            request.cubes,
            request.options_for(request.cubes),
            request.collections,
            request.bands,
            grid,
            request.strip_mb,
        )
        try:
            records = source.records([t.tile_id for t in tiles])
        except Exception as exc:
            raise EmbedConfigError(
                f"cannot read cube store {storage.redact_url(request.cubes)}: {exc}"
            ) from None
        bands = source.band_infos({k: v for k, v in records.items() if v.get("status") == "complete"})
        missing = [t for t in tiles if t.tile_id not in records]
        for t in missing:
            for ti in range(len(periods)):
                skipped.append(TileResult(t.tile_id, ti, "skipped", "no cube for this tile (not built)"))
        if missing:
            notes.append(f"{len(missing)} tile(s) of the AOI have no cube: skipped")
        todo_tiles = [t for t in tiles if t.tile_id in records]
    else:
        collections = request.collections or ("sentinel-2-l2a",)
        source = CatalogSource(
            request.catalog or "",
            request.catalog_name,
            collections,
            request.bands,
            grid,
            dict(request.read_options),
            request.strip_mb,
        )
        try:
            bands = source.band_infos()
        except (KeyError, ValueError) as exc:
            raise EmbedConfigError(str(exc)) from None
        todo_tiles = tiles
    if request.bands:
        unknown = sorted(set(request.bands) - {b.name for b in bands})
        if unknown:
            raise EmbedConfigError(
                f"bands {unknown} are not among the inputs' bands {sorted({b.name for b in bands})}"
            )
    if not bands and todo_tiles:
        raise EmbedConfigError("no input band: the cubes/collections hold none of the requested bands")
    gsds = sorted({b.gsd_m for b in bands}) or [10.0]
    problems = check_gsds(cfg, gsds)
    if problems:
        raise EmbedConfigError(f"checkpoint {ckpt.name} does not fit the inputs: " + "; ".join(problems))
    layout = choose_layout(round(per_tile), token_m, gsds, request.core_tokens, request.margin_tokens)
    normaliser = resolve_normaliser(ckpt.norm_stats, bands)

    version_name = request.version or es.version_name(ckpt.name, ckpt.sha256)
    version = es.EmbeddingsVersion(
        name=version_name,
        model=ckpt.name,
        model_version=ckpt.model_version,
        checkpoint_sha256=ckpt.sha256,
        dim=int(cfg.embed_dim),
        token_ground_m=token_m,
        tile_size_m=grid.tile_size_m,
        times=tuple(p.label for p in periods),
        config={
            "aom_config": cfg.to_dict(),
            "chip": layout.to_dict(),
            "composite": request.composite,
            "periods": [p.text for p in periods],
            "pooled": "L2-normalised mean of the tile's valid unit token vectors",
        },
    )
    _check_existing_version(request, version)

    if isinstance(source, CatalogSource):
        items = _search_items(request, todo_tiles, periods, source.collections, layout.margin_m)
        notes.append(f"catalog search: {len(items)} item(s)")
        items_index = ItemIndex(items)

    ctx = RunContext(
        checkpoint=request.checkpoint,
        checkpoint_sha256=ckpt.sha256,
        input_options=request.options_for(request.checkpoint),
        out=storage.normalise_url(request.out),
        out_options={} if storage.is_local(request.out) else dict(request.storage_options),
        version=version_name,
        layout=layout,
        periods=tuple(periods),
        source=source,
        normaliser=normaliser,
        batch_size=request.batch_size,
        device=request.device,  # resolved on the worker ("auto": its GPU when it has one)
        precision=request.precision,
        threads=request.torch_threads,
        composite=request.composite,
    )
    units: list[Unit] = []
    for ti in range(len(periods)):
        for k in range(0, len(todo_tiles), request.tiles_per_task):
            group = tuple(todo_tiles[k : k + request.tiles_per_task])
            items_per: tuple[tuple[Mapping[str, Any], ...], ...] = ()
            if items_index is not None:
                items_per = tuple(
                    tuple(items_index.touching(padded_tile_obj(t, layout.margin_m))) for t in group
                )
            units.append(Unit(group, ti, items_per))
    return RunPlan(
        request, ckpt, grid, tiles, periods, layout, normaliser, bands, version, ctx, units, skipped, notes
    )


def _check_existing_version(request: EmbedRequest, version: es.EmbeddingsVersion) -> None:
    try:
        have = es.read_version(request.out, version.name, request.storage_options)
    except es.EmbeddingsStoreError:
        return  # no store or no such version yet: it will be created
    except FileNotFoundError:
        return
    want = version.definition()
    got = have.definition()
    diff = sorted(k for k in want if want[k] != got.get(k))
    if diff:
        raise EmbedConfigError(
            f"version {version.name!r} already exists in {storage.redact_url(request.out)} with a different "
            f"definition (differs in: {', '.join(diff)}); pass a new version name (--version) for this request"
        )


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


def load_unit(unit: Unit, ctx: RunContext) -> list[PaddedTile | LoadFailure | TileResult]:
    """CPU task: read and composite the padded tiles of a unit (skipping tiles already complete)."""
    out: list[PaddedTile | LoadFailure | TileResult] = []
    period = ctx.periods[unit.time_index]
    for k, tile in enumerate(unit.tiles):
        t0 = time.perf_counter()
        try:
            if _done_already(ctx, tile, unit.time_index):
                out.append(
                    TileResult(tile.tile_id, unit.time_index, "skipped", "already complete (record exists)")
                )
                continue
            if isinstance(ctx.source, CatalogSource):
                items = unit.items[k] if unit.items else ()
                padded = ctx.source.read(tile, period, unit.time_index, ctx.layout.margin_m, items)
            else:
                padded = ctx.source.read(tile, period, unit.time_index, ctx.layout.margin_m)
            out.append(padded)
        except Exception as exc:
            log.warning("load %s@t%d failed: %s", tile.tile_id, unit.time_index, _reason(exc))
            out.append(
                LoadFailure(
                    tile.tile_id, unit.time_index, f"read failed: {_reason(exc)}", time.perf_counter() - t0
                )
            )
    return out


def _set_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def embed_padded(padded: PaddedTile, ctx: RunContext) -> TileResult:
    """Encoder + write for one loaded tile (the data, then its completion record)."""
    tile = padded.tile
    res = TileResult(tile.tile_id, padded.time_index, "done", read_s=padded.read_s)
    n = ctx.layout.tile_tokens
    res.total_tokens = n * n
    res.chips = ctx.layout.chips_per_side**2
    if padded.status == "missing":
        res.status, res.reason = "skipped", padded.reason
        return res
    device = _resolve_device(ctx.device)
    ckpt = load_checkpoint_url(ctx.checkpoint, ctx.input_options, ctx.checkpoint_sha256, device)
    dim = int(ckpt.config.embed_dim)
    if padded.status == "ok":
        _set_threads(ctx.threads)
        region = embed_region(
            ckpt.model,
            padded.groups,
            ctx.layout,
            ctx.normaliser,
            batch_size=ctx.batch_size,
            device=device,
            precision=ctx.precision,
        )
        emb = region.embeddings
        res.chips_run, res.model_s = region.chips_run, region.model_s
    else:
        emb = np.full((n, n, dim), np.nan, dtype=np.float32)
    bands = [
        {**b.to_dict(), "normalisation": ctx.normaliser.sources.get(b.key, "identity")}
        for g in padded.groups
        for b in g.bands
    ]
    provenance = {
        "input_items": list(padded.input_items),
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
    if padded.status != "ok":
        provenance["nodata_reason"] = padded.reason
    t0 = time.perf_counter()
    record = es.write_tile(
        ctx.out, ctx.version, tile, padded.time_index, emb, None, provenance, ctx.out_options
    )
    res.write_s = time.perf_counter() - t0
    res.valid_tokens = int(record.get("valid_tokens", 0))
    res.max_abs_quant_error = (record.get("quantisation") or {}).get("max_abs_error")
    if record.get("status") == "nodata":
        res.status = "nodata"
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
            out.append(TileResult(item.tile_id, item.time_index, "failed", item.reason, read_s=item.read_s))
            continue
        try:
            res = embed_padded(item, ctx)
        except Exception as exc:
            log.warning("embed %s@t%d failed: %s", item.tile.tile_id, item.time_index, _reason(exc))
            res = TileResult(
                item.tile.tile_id, item.time_index, "failed", f"embed/write failed: {_reason(exc)}"
            )
        res.worker = f"{os.uname().nodename}:{os.getpid()}"
        out.append(res)
    return out


def process_unit(unit: Unit, ctx: RunContext) -> list[TileResult]:
    """Load + embed in one call (in-process runs, and clusters without a GPU split)."""
    return embed_loaded(load_unit(unit, ctx), ctx)


# ------------------------------------------------------------------------------------------
# The run


def run_embedding(
    request: EmbedRequest,
    on_result: Callable[[TileResult], None] | None = None,
) -> EmbedSummary:
    """Plan (checks first), create the version and zones, fan out, write STAC; return the summary.

    ``on_result`` is called in this process with each tile's result as it arrives. Raises
    :class:`EmbedConfigError` (nothing written) when the request does not fit; per-tile faults
    are reported in the summary (``failed``), never raised: rerun the same request to finish.
    """
    from pipelines.embed_dask import Fanout

    t0 = time.perf_counter()
    plan = plan_run(request)
    ctx = plan.context
    log.info(
        "embed: %d tile(s) x %d period(s), %d unit(s), model %s (%s), chips %d+2x%d tokens -> %s version %s",
        len(plan.tiles),
        len(plan.periods),
        len(plan.units),
        plan.checkpoint.name,
        plan.checkpoint.sha256[:12],
        plan.layout.core_tokens,
        plan.layout.margin_tokens,
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
    )

    def collect(results: list[TileResult]) -> None:
        for r in results:
            summary.results.append(r)
            if on_result is not None:
                on_result(r)

    with Fanout(request) as fanout:  # connects and checks the GPU resource before any write
        es.create_version(ctx.out, plan.version, ctx.out_options)
        for epsg in sorted({t.epsg for t in plan.tiles}):
            es.ensure_zone(ctx.out, plan.version.name, epsg, ctx.out_options)
        collect(plan.skipped)
        done = _complete_set(ctx, len(plan.periods))
        todo: list[Unit] = []
        for unit in plan.units:
            if all(t.tile_id in done.get(unit.time_index, set()) for t in unit.tiles):
                collect(
                    [
                        TileResult(t.tile_id, unit.time_index, "skipped", "already complete (record exists)")
                        for t in unit.tiles
                    ]
                )
            else:
                todo.append(unit)
        fanout.run(todo, ctx, collect, total=sum(len(u.tiles) for u in plan.units))
        summary.notes.extend(fanout.notes)
    if request.write_stac:
        try:
            summary.stac_collection = es.write_stac(ctx.out, plan.version.name, ctx.out_options)
        except Exception as exc:  # the data is safe; STAC can be rewritten by a rerun
            summary.notes.append(f"STAC not written: {_reason(exc)}")
    summary.elapsed_s = time.perf_counter() - t0
    log.info("%s", summary.format())
    return summary


def _complete_set(ctx: RunContext, n_periods: int) -> dict[int, set[str]]:
    try:
        listing = es.list_complete_tiles(ctx.out, ctx.version, storage_options=ctx.out_options)
    except Exception:
        return {}
    return {ti: set(listing.get(ti, [])) for ti in range(n_periods)}
