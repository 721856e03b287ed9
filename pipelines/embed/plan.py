"""Planning an embedding run: tiles, periods and units of work, the store version, what is already done.

Planning reads completion records but no pixels; a unit is a small batch of (tile, period) pairs that a worker loads
and embeds on its own.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from pipelines import embeddings as es
from pipelines import storage
from pipelines.embed.checkpoint import LoadedCheckpoint, load_checkpoint_url
from pipelines.embed.chips import (
    STORE_QUANTISATION,
    ChipLayout,
    EmbedConfigError,
    Normaliser,
    check_gsds,
    checked_token_m,
    choose_layout,
    embedding_record,
    resolve_normaliser,
)
from pipelines.embed.request import EmbedRequest, TileResult
from pipelines.embed.sources import (
    CatalogSource,
    CubeSource,
    Period,
    parse_periods,
    search_interval,
)
from pipelines.outputs import HOLDER_WAIT_S
from pipelines.registry import BandSpec
from pipelines.runs import TileStatus
from pipelines.tiling import ItemIndex, Tile, TileGrid, square_groups, tile_cell

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------
# Planning (all checks, no writes)


@dataclass(frozen=True)
class Unit:
    """One unit of work: some tiles at one time slice."""

    tiles: tuple[Tile, ...]
    time_index: int
    items: tuple[tuple[Mapping[str, Any], ...], ...] = ()  # catalog mode: items touching each padded tile
    redo: frozenset[str] = frozenset()  # recorded tiles to embed again (pipelines.embed.freshness)
    claims: tuple[tuple[str, str, str | None], ...] = ()
    """(tile id, owner of the run's lease on it, digest of the record it replaces or None) of each
    tile, once the run has taken its lease (:class:`pipelines.embed.claims.TileClaims`)."""

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
    embedding: str  # aom_model.EMBEDDINGS: what a token vector is
    threads: int
    composite: str
    holder_wait_s: float = HOLDER_WAIT_S  # the run's wait for a tile another run holds (TileClaims)
    dask_scheduler: str = (
        ""  # the id of the run's Dask scheduler ("" without Dask): tile leases (dask_workers)
    )


@dataclass
class RunPlan:
    request: EmbedRequest
    checkpoint: LoadedCheckpoint
    grid: TileGrid
    tiles: list[Tile]
    periods: list[Period]
    layout: ChipLayout
    normaliser: Normaliser
    bands: list[BandSpec]
    version: es.EmbeddingsVersion
    context: RunContext
    units: list[Unit]
    skipped: list[TileResult]
    notes: list[str]
    cube_times: dict[str, float] = field(default_factory=dict)
    """Tile id -> modification time of its cube record, of every record in the plan tiles' columns
    (listings; cube stores: ``pipelines.embed.freshness`` looks up margin neighbours there)."""
    warnings: list[str] = field(default_factory=list)
    """Likely mistakes that are not errors (:func:`no_cube_warning`), for the caller to show."""


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

    from pipelines.embed.sources import padded_tile_obj
    from pipelines.retry import RetryPolicy
    from pipelines.search import CatalogUnavailableError, SearchError, SearchRequest, search

    geom = unary_union([shape(padded_tile_obj(t, margin_m).footprint_wgs84()) for t in tiles])
    if shapely.get_num_coordinates(geom) > 5000:  # keep the request small (large AOIs: many tiles)
        geom = geom.convex_hull
    try:
        result = search(
            SearchRequest(
                collections=collections,
                intersects=dict(mapping(geom)),
                datetime=search_interval(periods),
                catalog=request.catalog,
            ),
            catalog_url=request.catalog_url,
            storage_options=request.options_for(request.catalog_url) or None,
            retry=RetryPolicy(max_attempts=request.max_attempts),
        )
    except CatalogUnavailableError as exc:  # a failed run (exit 1, rerun later), not bad input
        raise CatalogUnavailableError(f"catalog search failed: {exc}") from None
    except SearchError as exc:
        raise EmbedConfigError(f"catalog search failed: {exc}") from None
    return [dict(i) for i in result.items]


def _check_cube_store(source: CubeSource, grid: TileGrid, collections: Sequence[str]) -> None:
    """The cube store's grid is the request's, and it holds the requested collections (one line
    naming the store's values otherwise), so a mismatch is refused rather than skipping every tile."""
    try:
        spec = dict(source.store().root_attrs().get("spec") or {})
    except EmbedConfigError:
        raise
    except Exception as exc:
        raise EmbedConfigError(f"cannot read cube store {storage.redact_url(source.url)}: {exc}") from None
    size = (spec.get("grid") or {}).get("tile_size_m")
    if size is not None and abs(float(size) - grid.tile_size_m) > 1e-6:
        raise EmbedConfigError(
            f"--tile-size-m {grid.tile_size_m:g} does not match the cube store {storage.redact_url(source.url)}, "
            f"built with {float(size):g} m tiles: give --tile-size-m {float(size):g}"
        )
    have = [str(c) for c in spec.get("collections") or []]
    unknown = sorted(set(collections) - set(have)) if have else []
    if unknown:
        raise EmbedConfigError(
            f"collections {unknown} are not in the cube store {storage.redact_url(source.url)}; "
            f"it holds {', '.join(have)}"
        )


def plan_run(request: EmbedRequest) -> RunPlan:
    """Resolve and check everything; raises :class:`EmbedConfigError` before anything is written."""
    from pipelines.embed.sources import padded_tile_obj

    notes: list[str] = []
    warnings: list[str] = []
    periods = parse_periods(request.datetime)
    grid = TileGrid(request.tile_size_m)
    ckpt = load_checkpoint_url(request.checkpoint, request.options_for(request.checkpoint))
    cfg = ckpt.config
    token_m = checked_token_m(cfg, request.token_m, ckpt.name)
    per_tile = grid.tile_size_m / token_m
    if abs(per_tile - round(per_tile)) > 1e-9:
        raise EmbedConfigError(
            f"{token_m:g} m tokens do not divide the {grid.tile_size_m:g} m tiles ({per_tile:.3f} tokens a "
            "side): choose a token_m that divides the tile size, or another tile_size_m"
        )
    tiles = _tiles_for(request, grid)

    skipped: list[TileResult] = []
    source: CubeSource | CatalogSource
    items_index: ItemIndex | None = None
    cube_times: dict[str, float] = {}
    if request.cubes is not None:
        source = CubeSource(
            request.cubes,
            request.options_for(request.cubes),
            request.collections,
            request.bands,
            grid,
            request.strip_mb,
        )
        _check_cube_store(source, grid, request.collections)
        try:
            cube_times, records = _cube_records(source, [t.tile_id for t in tiles])
            recorded = {t.tile_id for t in tiles} & set(cube_times)
        except Exception as exc:
            raise EmbedConfigError(
                f"cannot read cube store {storage.redact_url(request.cubes)}: {exc}"
            ) from None
        bands = source.band_infos(
            {k: v for k, v in records.items() if v.get("status") == TileStatus.COMPLETE}
        )
        missing = [t for t in tiles if t.tile_id not in recorded]
        for t in missing:
            for ti in range(len(periods)):
                skipped.append(
                    TileResult(t.tile_id, ti, TileStatus.SKIPPED, "no cube for this tile (not built)")
                )
        if missing:
            notes.append(f"{len(missing)} tile(s) of the AOI have no cube: skipped")
        if not recorded:  # skipped, as cubes may come later; but most likely the wrong AOI or store
            warnings.append(no_cube_warning(source, request, grid, tiles))
        todo_tiles = [t for t in tiles if t.tile_id in recorded]
    else:
        from pipelines.cubes.reading import read_attempts

        collections = request.collections or CatalogSource.collections
        source = CatalogSource(
            request.catalog_url or "",
            request.catalog,
            collections,
            request.bands,
            grid,
            {**read_attempts(request.max_attempts), **request.read_options},
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
    problems = check_gsds(cfg, gsds, token_m)
    if problems:
        raise EmbedConfigError(f"checkpoint {ckpt.name} does not fit the inputs: " + "; ".join(problems))
    layout = choose_layout(
        round(per_tile),
        token_m,
        gsds,
        request.core_tokens,
        request.margin_tokens,
        blend_tokens=request.blend_tokens,
    )
    normaliser = resolve_normaliser(ckpt.norm_stats, bands)
    own = sorted(k for k, v in normaliser.sources.items() if v == "input")
    if own:
        notes.append(
            f"the checkpoint has no statistics for bands {own}: each tile normalises them with its own "
            "(mean, std), never another band's"
        )

    version_name = request.version or es.version_name(ckpt.name, ckpt.sha256)
    if request.version is None and token_m != float(cfg.token_ground_m):
        version_name = f"{version_name}-{token_m:g}m"  # one version per token size
    if request.version is None and request.embedding != "position":
        version_name = f"{version_name}-{request.embedding}"  # and per embedding kind
    # the request was checked against es.QUANTISATIONS
    quantisation = cast(es.Quantisation, request.quantisation or STORE_QUANTISATION[request.embedding])
    if request.version is None and quantisation != STORE_QUANTISATION[request.embedding]:
        version_name = f"{version_name}-{quantisation}"  # and per storage encoding
    version = es.EmbeddingsVersion(
        name=version_name,
        model=ckpt.name,
        model_version=ckpt.model_version,
        checkpoint_sha256=ckpt.sha256,
        dim=ckpt.model.embedding_dim(request.embedding),
        token_ground_m=token_m,
        tile_size_m=grid.tile_size_m,
        times=tuple(p.label for p in periods),
        quantisation=quantisation,
        config={
            "aom_config": cfg.to_dict(),
            "chip": layout.to_dict(),
            "composite": request.composite,
            "periods": [p.text for p in periods],
            "pooled": "L2-normalised mean of the tile's valid unit token vectors",
            "embedding": embedding_record(ckpt.model, request.embedding),
        },
    )
    _check_existing_version(request, version)

    if isinstance(source, CatalogSource):
        items = _search_items(request, todo_tiles, periods, source.collections, layout.pad_m)
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
        embedding=request.embedding,
        threads=request.torch_threads,
        composite=request.composite,
        holder_wait_s=float(request.holder_wait_min) * 60,
    )
    per_task = tiles_per_task(request.tiles_per_task, source, len(todo_tiles))
    # neighbouring tiles together (squares of side isqrt(per_task)): a unit's tiles share margins
    ordered = [t for square in square_groups(todo_tiles, tile_cell, math.isqrt(per_task)) for t in square]
    units: list[Unit] = []
    for ti in range(len(periods)):
        for k in range(0, len(ordered), per_task):
            group = tuple(ordered[k : k + per_task])
            items_per: tuple[tuple[Mapping[str, Any], ...], ...] = ()
            if items_index is not None:
                items_per = tuple(
                    tuple(items_index.touching(padded_tile_obj(t, layout.pad_m))) for t in group
                )
            units.append(Unit(group, ti, items_per))
    return RunPlan(
        request,
        ckpt,
        grid,
        tiles,
        periods,
        layout,
        normaliser,
        bands,
        version,
        ctx,
        units,
        skipped,
        notes,
        cube_times,
        warnings,
    )


def _lonlat_text(bounds: Sequence[float]) -> str:
    w, s, e, n = (round(float(v), 4) for v in bounds)
    return f"lon {w:g}..{e:g}, lat {s:g}..{n:g}"


def _tiles_bounds(tiles: Sequence[Tile]) -> tuple[float, float, float, float]:
    """The lon/lat bounds of tiles: each zone's tiles as the rectangle of their bounds (one
    projection a zone, however many tiles)."""
    by_zone: dict[int, list[Tile]] = {}
    for t in tiles:
        by_zone.setdefault(t.epsg, []).append(t)
    boxes = []
    for epsg, zone_tiles in by_zone.items():
        left = min(t.bounds[0] for t in zone_tiles)
        bottom = min(t.bounds[1] for t in zone_tiles)
        right = max(t.bounds[2] for t in zone_tiles)
        top = max(t.bounds[3] for t in zone_tiles)
        boxes.append(Tile("", epsg, (left, bottom, right, top)).polygon_lonlat().bounds)
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def no_cube_warning(source: CubeSource, request: EmbedRequest, grid: TileGrid, tiles: Sequence[Tile]) -> str:
    """One line for a request none of whose tiles has a cube: the store's extent (its cube records,
    one listing) and the request's area, so that the likely mistake (another AOI, another store)
    shows. Not an error: tiles without a cube are skipped, and embedded once their cubes are built."""
    from pipelines.tiling import geometry_from_geojson, parse_tile_id

    if isinstance(request.aoi, Mapping):
        asked = f"--aoi ({_lonlat_text(geometry_from_geojson(request.aoi).bounds)})"
    elif request.aoi is not None:
        asked = "--aoi " + ",".join(f"{float(v):g}" for v in request.aoi)
    else:
        asked = f"--tiles ({_lonlat_text(_tiles_bounds(tiles))})"
    url = storage.redact_url(source.url)
    try:
        held, size = [], grid.tile_size_m
        for tile_id in source.store().recorded_tiles():
            try:
                epsg, ix, iy = parse_tile_id(tile_id)
            except ValueError:  # not a tile id of the grid: left out of the extent
                continue
            held.append(Tile(tile_id, epsg, (ix * size, iy * size, (ix + 1) * size, (iy + 1) * size)))
        where = (
            f"whose {len(held)} cube(s) cover {_lonlat_text(_tiles_bounds(held))}"
            if held
            else "which holds no cube"
        )
    except Exception as exc:  # a warning only: the run goes on
        where = f"whose extent could not be listed ({type(exc).__name__})"
    return (
        f"none of the {len(tiles)} tile(s) of {asked} has a cube in {url}, {where}: every tile was "
        "skipped; check --aoi/--tiles and --cubes"
    )


#: ``tiles_per_task`` 0 (auto) from a cube store: (at least this many tiles to embed, tiles per task).
AUTO_TILES_PER_TASK = ((288, 9), (64, 4))


def tiles_per_task(asked: int, source: Any, n_tiles: int) -> int:
    """Tiles per unit: ``asked`` when > 0; auto (0): from a cube store 3 x 3 squares of neighbouring
    tiles from 288 tiles to embed, 2 x 2 from 64 (at least 32 and 16 units: every worker stays
    busy), else 1; from a catalog 1 (catalog reads are per tile, nothing is shared)."""
    if asked > 0:
        return asked
    if isinstance(source, CatalogSource):
        return 1
    return next((n for least, n in AUTO_TILES_PER_TASK if n_tiles >= least), 1)


#: Cube records read per batch while planning (doubling up to the maximum) until the groups of the
#: records read cover every group the cube spec can hold.
RECORD_BATCH = 64
RECORD_BATCH_MAX = 4096


def _cube_records(
    source: CubeSource, tile_ids: Sequence[str]
) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """(tiles with a cube record in the plan's columns -> its modification time, the records planning
    needs to know the input bands).

    Which tiles are recorded comes from listings of their ``<epsg>_<ix>_`` columns (every record
    found is kept: the plan's neighbours in those columns, for ``pipelines.embed.freshness``). Records are read
    concurrently, in growing batches, only until their groups cover every ``(collection, GSD)`` group
    the store's spec can hold (usually the first batch); when the spec cannot say (or some group never
    occurs), every record of the plan is read, still in concurrent batches. The bands found are the
    same as from reading every record: a group is either among those seen or held by no tile.
    """
    store = source.store()
    times = store.record_times(among=tile_ids, whole_columns=True)
    recorded = sorted(set(tile_ids) & set(times))
    universe = store.group_keys()
    if universe is not None and source.collections:
        universe = {k for k in universe if k[0] in source.collections}
    records: dict[str, dict[str, Any]] = {}
    seen: set[tuple[str, str]] = set()
    k, batch = 0, RECORD_BATCH
    while k < len(recorded) and (universe is None or not universe <= seen):
        got = store.records(recorded[k : k + batch])
        records.update(got)
        seen.update(key for rec in got.values() for key in source.groups_of(rec))
        k, batch = k + batch, min(RECORD_BATCH_MAX, batch * 2)
    return times, records


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
