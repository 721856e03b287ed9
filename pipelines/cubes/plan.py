"""Planning a cube run: which collections, items and tiles. One plan for `aom cubes` and the `ingest` flow.

Both build a :class:`CubeRequest` with :meth:`CubeRequest.from_dict` (plain values: comma-separated
text or lists, ``"W,S,E,N"`` text or a 4-sequence, None for "the default") and call
:func:`plan_cubes` on the items they found; neither holds planning rules of its own.

Rules, in order:

0. **Catalog**: ``request.catalog``, else the one the items come from by evidence
   (:meth:`~pipelines.registry.Registry.catalog_of`: their root/self links, or asset hrefs on a
   catalog's signing hosts), else ``sample``; items of several catalogs need ``catalog`` named.
1. **Collections**: ``request.collections``, else the registry collections of the catalog
   that the items belong to; none is an :class:`~pipelines.errors.InputError` naming the fix.
   Catalog spellings are resolved to the registry's id (``HLSS30.v2.0`` -> ``HLSS30_2.0``).
2. **Items**: those of the chosen collections; an item without ``collection`` is kept when exactly
   one collection is wanted (static catalogs often leave it out).
3. **Tiles**: ``request.tiles`` (ids of the grid) when given, else every tile the kept items touch;
   either way restricted to the tiles of ``request.aoi`` (a bbox or a GeoJSON geometry) when given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

from pipelines.cubes.spec import COMPOSITES, CubeSpec, Encoding
from pipelines.errors import InputError, check_bbox, check_choice, check_number
from pipelines.registry import DEFAULT_CATALOG, Registry, load_registry
from pipelines.retry import RetryPolicy
from pipelines.storage import parse_storage_options, redact_url
from pipelines.tiling import DEFAULT_TILE_SIZE_M, Tile, TileGrid


@dataclass(frozen=True)
class CubeRequest:
    """What a cube run builds (never where to, nor credentials): the verb's and the flow's request."""

    catalog: str | None = None
    """Registry catalog the collections belong to (``aom sensors`` lists them); None: inferred from
    the items (their links / asset hosts), else ``sample``."""
    collections: tuple[str, ...] = ()
    """Registry collection ids; empty: those of ``catalog`` found in the items."""
    aoi: tuple[float, float, float, float] | Mapping[str, Any] | None = None
    """Only tiles of this area: ``(W, S, E, N)`` in degrees (W > E crosses the antimeridian) or a
    GeoJSON geometry; None: no restriction."""
    tiles: tuple[str, ...] = ()
    """Only these tile ids of the grid; empty: every tile the items touch."""
    tile_size_m: float = DEFAULT_TILE_SIZE_M
    """Tile edge in metres (a multiple of 60)."""
    encoding: Encoding = CubeSpec.encoding
    """``int16`` (reflectance x 1e4) or ``float16``."""
    chunk_px: int = CubeSpec.chunk_px
    """Zarr chunk edge in pixels (the training chip size)."""
    skip_unreachable: bool = CubeSpec.skip_unreachable
    """Leave out unreachable assets instead of failing their tiles."""
    missing_proj: Literal["skip", "read_header"] = CubeSpec.missing_proj
    """Items without projection metadata: ``skip`` or ``read_header``."""
    composite: str = CubeSpec.composite
    """``none`` (every acquisition) or ``median`` (one stored median per tile and group)."""

    def __post_init__(self) -> None:
        for name in ("collections", "tiles"):
            object.__setattr__(self, name, _names(getattr(self, name)))
        object.__setattr__(self, "aoi", _aoi(self.aoi))
        check_number("tile_size_m (--tile-size-m)", self.tile_size_m, above=0)
        object.__setattr__(self, "tile_size_m", float(self.tile_size_m))
        _ = self.grid  # a size the grid cannot tile is refused here, before any work
        check_choice("encoding (--encoding)", self.encoding, ("int16", "float16"))
        check_number("chunk_px (--chunk-px)", self.chunk_px, minimum=1)
        check_choice("missing_proj (--missing-proj)", self.missing_proj, ("skip", "read_header"))
        check_choice("composite (--composite)", self.composite, COMPOSITES)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CubeRequest:
        """From plain values (CLI options, flow parameters); None means the default; unknown keys
        are refused with the known ones listed."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown cube request fields {unknown}; known: {sorted(known)}")
        return cls(**{k: v for k, v in values.items() if v is not None})

    @property
    def grid(self) -> TileGrid:
        return TileGrid(self.tile_size_m)

    def spec(self, collections: Sequence[str], catalog: str | None = None) -> CubeSpec:
        """The :class:`CubeSpec` of this request for ``collections`` (of ``catalog``, default the request's)."""
        return CubeSpec(
            grid=self.grid,
            collections=tuple(collections),
            catalog=catalog or self.catalog or DEFAULT_CATALOG,
            encoding=self.encoding,
            chunk_px=self.chunk_px,
            skip_unreachable=self.skip_unreachable,
            missing_proj=self.missing_proj,
            composite=self.composite,
        )


@dataclass(frozen=True)
class CubePlan:
    """The outcome of planning: the spec, the items it keeps and the tiles to build."""

    spec: CubeSpec
    """Settings of the run (collections resolved)."""
    items: tuple[Mapping[str, Any], ...]
    """Items of the spec's collections."""
    tiles: tuple[Tile, ...]
    """Tiles to build, in grid order."""

    @property
    def tile_ids(self) -> list[str]:
        return [t.tile_id for t in self.tiles]

    def describe(self) -> str:
        """``"3 item(s) of sentinel-2-l2a; 2 tile(s) of 7680 m"``."""
        return (
            f"{len(self.items)} item(s) of {', '.join(self.spec.collections)}; {len(self.tiles)} tile(s) "
            f"of {self.spec.grid.tile_size_m:g} m"
        )


def plan_cubes(request: CubeRequest, items: Iterable[Mapping[str, Any]]) -> CubePlan:
    """Collections, items and tiles of a cube run (the rules are in the module docstring)."""
    item_list = list(items)
    registry = load_registry()
    catalog = request.catalog or _infer_catalog(registry, item_list)
    known = {c.collection for c in registry.collections_in(catalog)}

    def canonical(cid: Any) -> str | None:
        return None if cid is None else registry.canonical_collection(catalog, str(cid))

    wanted = tuple(dict.fromkeys(str(canonical(c)) for c in request.collections))
    if not wanted:
        wanted = tuple(sorted({str(canonical(i.get("collection"))) for i in item_list} & known))
        if not wanted:
            raise InputError(
                f"no item belongs to a {catalog!r} collection of the registry; "
                "name them with --collections (`aom sensors` lists the registry)"
            )
    spec = request.spec(wanted, catalog)
    kept = tuple(
        i
        for i in item_list
        if canonical(i.get("collection")) in spec.collections
        or (i.get("collection") is None and len(wanted) == 1)
    )
    grid = spec.grid
    tiles = [grid.tile(t) for t in request.tiles] if request.tiles else grid.tiles_for_items(kept)
    if request.aoi is not None:
        inside = {t.tile_id for t in _aoi_tiles(grid, request.aoi)}
        tiles = [t for t in tiles if t.tile_id in inside]
    return CubePlan(spec, kept, tuple(dict.fromkeys(tiles)))


def complete_projection(
    plan: CubePlan,
    items_url: str | None = None,
    out: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    read_options: Mapping[str, Any] | None = None,
) -> tuple[CubePlan, list[str]]:
    """With ``missing_proj="read_header"``: the plan's items without projection metadata get it
    from their file headers, read once with the catalog's credentials and cached beside the items
    (``<items_url>.proj.json``; storage options as for :func:`read_items`), so a rerun reads none
    again. Other plans come back unchanged. Returns (plan, notes)."""
    if plan.spec.missing_proj != "read_header" or not plan.items:
        return plan, []
    from pipelines.cubes.headers import fill_projection, header_cache_url

    options = None
    if items_url is not None and out is not None and _scheme(items_url) == _scheme(out):
        options = parse_storage_options(storage_options)
    items, notes = fill_projection(
        plan.items,
        plan.spec.catalog,
        plan.spec.registry(),
        read_options=read_options,
        cache_url=header_cache_url(items_url) if items_url else None,
        storage_options=options,
    )
    return CubePlan(plan.spec, tuple(items), plan.tiles), notes


def _infer_catalog(registry: Registry, items: Sequence[Mapping[str, Any]]) -> str:
    """The one catalog the items come from by evidence, else the default; several is an InputError."""
    found = sorted({c for c in (registry.catalog_of(i) for i in items) if c is not None})
    if len(found) > 1:
        raise InputError(
            f"the items come from several catalogs ({', '.join(found)}): name one with --catalog"
        )
    return found[0] if found else DEFAULT_CATALOG


def read_items(
    items_url: str,
    out: str,
    storage_options: Mapping[str, Any] | None = None,
    retry: RetryPolicy | None = None,
) -> list[dict[str, Any]]:
    """The items of a saved search or local catalog (ndjson / parquet / catalog.json, any URL).

    ``storage_options`` are those of the cube store ``out``; they are used for ``items_url`` only
    when both live on the same kind of storage (scheme), so a local item file never gets S3
    credentials. Each read is retried under ``retry`` (default :class:`RetryPolicy`'s) while it
    fails transiently. A source that cannot be read for a reason the user can fix (no such file,
    not a catalog, bad content) is an :class:`~pipelines.errors.InputError` (exit 2); one the
    network or the server failed to give (refused, or still failing after the retries) is the
    search's :class:`~pipelines.search.CatalogUnavailableError` (exit 1, caused by the failure, so
    a retry is worth it exactly when the failure was transient): never bad input.
    """
    from pipelines.search import CatalogUnavailableError, iter_items

    options = parse_storage_options(storage_options) if _scheme(items_url) == _scheme(out) else None
    try:
        return list(iter_items(items_url, options, retry=retry or RetryPolicy()))
    except (InputError, CatalogUnavailableError):
        raise
    except Exception as exc:
        raise InputError(
            f"cannot read items from {redact_url(items_url)}: {type(exc).__name__}: {exc}"
        ) from None


def _scheme(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else "file"


def _aoi_tiles(grid: TileGrid, aoi: tuple[float, float, float, float] | Mapping[str, Any]) -> list[Tile]:
    if isinstance(aoi, Mapping):
        return grid.tiles_for_geometry(aoi)
    return grid.tiles_for_bbox(aoi)


def _names(value: Any) -> tuple[str, ...]:
    """``"a, b,,c"`` or ``["a", "b"]`` -> ``("a", "b", "c")``, order kept, duplicates dropped."""
    parts = value.split(",") if isinstance(value, str) else list(value or ())
    return tuple(dict.fromkeys(str(p).strip() for p in parts if str(p).strip()))


def _aoi(value: Any) -> tuple[float, float, float, float] | Mapping[str, Any] | None:
    """None, a GeoJSON geometry (kept), ``"W,S,E,N"`` text or four numbers (a bbox tuple)."""
    if value is None or isinstance(value, Mapping):
        return value
    parts = [p for p in value.replace(" ", "").split(",") if p] if isinstance(value, str) else list(value)
    try:
        w, s, e, n = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise InputError(
            f"an area must be W,S,E,N (4 numbers) or a GeoJSON geometry, got {value!r}"
        ) from None
    return check_bbox("the area (--bbox / aoi)", (w, s, e, n))
