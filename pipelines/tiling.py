"""A deterministic tile grid over the globe: fixed-size square tiles in UTM zones.

Tiles are the unit of work, retry and resume for cube assembly, so their ids must never change:

* a tile is a square of ``tile_size_m`` metres in one UTM zone (WGS 84, EPSG:326zz north,
  EPSG:327zz south); its origin (lower-left corner) is ``(ix * size, iy * size)`` in that
  zone's coordinates (false easting/northing included);
* its id is ``f"{epsg}_{ix}_{iy}"``, e.g. ``32631_87_651``; :meth:`TileGrid.tile` parses it back;
* the default size (:data:`DEFAULT_TILE_SIZE_M`, 7680 m) is divisible by every native GSD of
  Sentinel-2 (10/20/60 m) and Landsat/HLS (30 m), so each GSD group of a tile is a whole number of pixels (768/384/128/256)
  on a pixel grid aligned to the tile origin (cube groups may move it by less than a pixel onto the
  sensor's native grid: :meth:`Tile.geobox`, ``shift_m``).

Which zone owns which ground: a tile of zone Z's grid belongs to the grid when it intersects
zone Z's longitude strip (6 degrees wide) in its hemisphere (north: latitude >= 0, south:
latitude <= 0); the tile that contains a point is the one of the point's own zone
(:meth:`TileGrid.tile_at`), which always has its centre in that zone or within half a tile of it.
UTM grids of neighbouring zones are rotated against each other (grid convergence), so the
edge tiles of two zones overlap by less than one tile, as MGRS tiles do; there are never gaps.
Latitudes are covered from 80 degrees S to 84 degrees N (the UTM domain); the polar caps are
outside the grid. AOIs that cross the antimeridian are split there (a bbox with west > east, or
a GeoJSON geometry whose rings jump by more than 180 degrees of longitude).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

import numpy as np
import shapely
from pyproj import Transformer
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry

from pipelines.errors import InputError

_T = TypeVar("_T")

DEFAULT_TILE_SIZE_M = 7680.0
"""The tile edge every layer defaults to (cubes, embed, flows, ``--tile-size-m``): 768 px at 10 m."""

MIN_LAT = -80.0
MAX_LAT = 84.0
SOUTH_FALSE_NORTHING = 10_000_000.0
_DENSIFY_DEG = 0.05  # lon/lat edges are curves in UTM: densify before projecting
_FOOTPRINT_POINTS_PER_EDGE = 16


class TileError(InputError):
    """An invalid tile id, grid parameter or area of interest."""


# ---------------------------------------------------------------------------------------------
# UTM helpers


def utm_zone(lon: float) -> int:
    """UTM zone number (1..60) of a longitude in degrees (180 is zone 60; values beyond +-180 wrap)."""
    if not -180.0 <= lon <= 180.0:
        lon = ((lon + 180.0) % 360.0) - 180.0
    return min(60, max(1, math.floor((lon + 180.0) / 6.0) + 1))


def utm_epsg(zone: int, south: bool) -> int:
    if not 1 <= zone <= 60:
        raise TileError(f"UTM zone must be in 1..60, got {zone}")
    return (32700 if south else 32600) + zone


def zone_of_epsg(epsg: int) -> tuple[int, bool]:
    """(zone, south) for a WGS 84 / UTM EPSG code; TileError for anything else."""
    if 32601 <= epsg <= 32660:
        return epsg - 32600, False
    if 32701 <= epsg <= 32760:
        return epsg - 32700, True
    raise TileError(f"EPSG:{epsg} is not a WGS 84 / UTM zone (326zz north or 327zz south)")


def zone_strip(zone: int) -> tuple[float, float]:
    """(west, east) longitudes of a UTM zone."""
    west = -180.0 + 6.0 * (zone - 1)
    return west, west + 6.0


def central_meridian(zone: int) -> float:
    return -183.0 + 6.0 * zone


@lru_cache(maxsize=256)
def _to_utm(epsg: int) -> Transformer:
    return Transformer.from_crs(4326, epsg, always_xy=True)


@lru_cache(maxsize=256)
def _from_utm(epsg: int) -> Transformer:
    return Transformer.from_crs(epsg, 4326, always_xy=True)


def _unwrap(lon: np.ndarray, centre: float) -> np.ndarray:
    """Longitudes shifted by multiples of 360 to lie within 180 degrees of ``centre``."""
    return centre + ((lon - centre + 180.0) % 360.0) - 180.0


# ---------------------------------------------------------------------------------------------
# Tiles


@dataclass(frozen=True)
class Tile:
    """One tile: id, UTM EPSG code and bounds ``(left, bottom, right, top)`` in metres of that CRS."""

    tile_id: str
    epsg: int
    bounds: tuple[float, float, float, float]

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    @property
    def zone(self) -> int:
        return zone_of_epsg(self.epsg)[0]

    @property
    def south(self) -> bool:
        return zone_of_epsg(self.epsg)[1]

    @property
    def size_m(self) -> float:
        return float(self.bounds[2] - self.bounds[0])

    @property
    def index(self) -> tuple[int, int]:
        """(ix, iy) grid indices, parsed from the id."""
        _, ix, iy = parse_tile_id(self.tile_id)
        return ix, iy

    def geobox(
        self, resolution_m: float, shift_m: tuple[float, float] = (0.0, 0.0)
    ):  # -> odc.geo.geobox.GeoBox
        """North-up pixel grid over the tile: ``ceil(size / resolution)`` pixels a side.

        By default the pixel lattice passes through the tile origin (lower-left corner), so for
        resolutions that divide the tile size the grid covers the tile exactly; otherwise it
        overhangs the top/right edges by less than one pixel. ``shift_m`` ``(dx, dy)`` moves the
        whole lattice by less than a pixel (same shape), onto a sensor's native pixel grid
        (:func:`pipelines.cubes.lattice.native_lattice`: Landsat's edges at 15 m mod 30 m).
        """
        from affine import Affine
        from odc.geo.geobox import GeoBox

        if not resolution_m > 0:
            raise TileError(f"resolution must be > 0, got {resolution_m}")
        dx, dy = (float(v) for v in shift_m)
        if not (abs(dx) < resolution_m and abs(dy) < resolution_m):
            raise TileError(f"lattice shift {shift_m} must be less than one {resolution_m:g} m pixel")
        left, bottom, right, top = self.bounds
        nx = max(1, math.ceil((right - left) / resolution_m - 1e-9))
        ny = max(1, math.ceil((top - bottom) / resolution_m - 1e-9))
        transform = Affine(resolution_m, 0.0, left + dx, 0.0, -resolution_m, bottom + dy + ny * resolution_m)
        return GeoBox((ny, nx), transform, self.crs)

    def polygon_lonlat(self) -> BaseGeometry:
        """Footprint in lon/lat as one polygon, longitudes unwrapped around the zone's central meridian
        (may exceed +-180 next to the antimeridian)."""
        left, bottom, right, top = self.bounds
        n = _FOOTPRINT_POINTS_PER_EDGE
        t = np.linspace(0.0, 1.0, n, endpoint=False)
        xs = np.concatenate(
            [left + (right - left) * t, np.full(n, right), right - (right - left) * t, np.full(n, left)]
        )
        ys = np.concatenate(
            [np.full(n, bottom), bottom + (top - bottom) * t, np.full(n, top), top - (top - bottom) * t]
        )
        lon, lat = _from_utm(self.epsg).transform(xs, ys)
        lon = _unwrap(np.asarray(lon), central_meridian(self.zone))
        return shapely.Polygon(np.column_stack([lon, lat]))

    def footprint_wgs84(self) -> dict[str, Any]:
        """GeoJSON geometry (EPSG:4326) of the tile; a MultiPolygon split at the antimeridian
        (RFC 7946) when the tile crosses it."""
        poly = self.polygon_lonlat()
        return mapping(_split_antimeridian(poly))

    def __str__(self) -> str:
        return self.tile_id


def column_prefixes(tile_ids: Iterable[str], limit: int | None = None) -> list[str]:
    """The distinct ``"<epsg>_<ix>_"`` prefixes of tile ids: a store listing per prefix finds the
    records named after those tiles without listing every tile of the store.

    ``limit``: when the tiles span more columns than that, their ``"<epsg>_"`` zone prefixes
    instead (a continent: ~560 columns, ~10 zones), so that the listings, each paged, still run
    concurrently rather than as one paged listing of the whole folder."""
    ids = list(tile_ids)
    columns = sorted({_column_prefix(t) for t in ids})
    if limit is None or len(columns) <= limit:
        return columns
    return sorted({_zone_prefix(t) for t in ids})


def square_groups(items: Iterable[_T], cell: Callable[[_T], tuple[int, ...]], side: int) -> list[list[_T]]:
    """``items`` grouped by the ``side`` x ``side`` square of grid cells they fall in, squares in
    sorted order, items in their given order within a square.

    ``cell(item)``: a tuple whose last two entries are the item's grid row and column (integers, any
    origin); entries before them (e.g. the EPSG code) separate grids. Squares are aligned to
    multiples of ``side``, so two callers with the same ``side`` draw the same squares: neighbouring
    tiles that share margins (embedding reads) or one read of a rectangle (similarity search) land
    in one group."""
    side = max(1, int(side))
    groups: dict[tuple[int, ...], list[_T]] = {}
    for it in items:
        c = cell(it)
        groups.setdefault((*c[:-2], c[-2] // side, c[-1] // side), []).append(it)
    return [groups[k] for k in sorted(groups)]


def tile_cell(tile: Tile) -> tuple[int, int, int]:
    """(EPSG, row from the north, column) of a tile: the grid cell :func:`square_groups` takes."""
    ix, iy = tile.index
    return (tile.epsg, -iy, ix)


def _zone_prefix(tile_id: str) -> str:
    parts = str(tile_id).split("_")
    return f"{parts[0]}_" if len(parts) == 3 else str(tile_id)


def _column_prefix(tile_id: str) -> str:
    parts = str(tile_id).split("_")
    return f"{parts[0]}_{parts[1]}_" if len(parts) == 3 else str(tile_id)  # other ids: the id itself


def parse_tile_id(tile_id: str) -> tuple[int, int, int]:
    """``(epsg, ix, iy)`` of a canonical tile id ``<epsg>_<ix>_<iy>`` (no projection: see
    :meth:`TileGrid.tile` for a checked tile); TileError when malformed."""
    parts = str(tile_id).split("_")
    if len(parts) != 3:
        raise TileError(f"tile id {tile_id!r} is not of the form '<epsg>_<ix>_<iy>'")
    try:
        epsg, ix, iy = (int(p) for p in parts)
    except ValueError:
        raise TileError(f"tile id {tile_id!r} is not of the form '<epsg>_<ix>_<iy>' (integers)") from None
    if f"{epsg}_{ix}_{iy}" != tile_id:
        raise TileError(f"tile id {tile_id!r} is not canonical (expected {epsg}_{ix}_{iy})")
    return epsg, ix, iy


# ---------------------------------------------------------------------------------------------
# Geometry helpers (lon/lat)


def _split_antimeridian(geom: BaseGeometry) -> BaseGeometry:
    """Longitudes outside [-180, 180] folded back, splitting the geometry at the antimeridian."""
    minx, _, maxx, _ = geom.bounds
    if minx >= -180.0 and maxx <= 180.0:
        return geom
    parts = []
    for k in range(math.floor((minx + 180.0) / 360.0), math.floor((maxx + 180.0) / 360.0) + 1):
        lo = -180.0 + 360.0 * k
        piece = geom.intersection(box(lo, -90.0, lo + 360.0, 90.0))
        if piece.is_empty:
            continue
        piece = shapely.transform(piece, lambda c, k=k: c - np.array([360.0 * k, 0.0]))
        parts.extend(_polygons(piece))
    return shapely.MultiPolygon(parts) if len(parts) > 1 else parts[0]


def _polygons(geom: BaseGeometry) -> list[shapely.Polygon]:
    if geom.is_empty:
        return []
    if isinstance(geom, shapely.Polygon):
        return [geom]
    if isinstance(geom, shapely.MultiPolygon | shapely.GeometryCollection):
        out: list[shapely.Polygon] = []
        for g in geom.geoms:
            out.extend(_polygons(g))
        return out
    return []  # points/lines have no area: buffered by the caller where that matters


def _normalise_aoi(geom: BaseGeometry) -> list[BaseGeometry]:
    """AOI parts with longitudes in [-180, 180]; rings that jump across the antimeridian are mended."""
    out: list[BaseGeometry] = []
    if isinstance(geom, shapely.Point | shapely.MultiPoint | shapely.LineString | shapely.MultiLineString):
        geom = geom.buffer(1e-6)
    for poly in _polygons(geom):
        minx, _, maxx, _ = poly.bounds
        if maxx - minx > 180.0:
            # a ring crossing the antimeridian written with raw longitudes: shift the west half
            poly = shapely.transform(
                poly, lambda c: np.column_stack([np.where(c[:, 0] < 0, c[:, 0] + 360.0, c[:, 0]), c[:, 1]])
            )
            if not poly.is_valid:
                poly = poly.buffer(0)
        out.extend(_polygons(_split_antimeridian(poly)))
    return out


_GEOMETRY_TYPES = (
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
)


def _geojson_parts(obj: Any, where: str = "") -> list[Mapping[str, Any]]:
    """The GeoJSON geometries (null ones left out) of a Geometry, Feature or FeatureCollection;
    anything else is a :class:`TileError` starting "not GeoJSON" and saying what is wrong where."""
    at = f"{where} " if where else ""
    if not isinstance(obj, Mapping):
        raise TileError(
            f"not GeoJSON: {at}is {type(obj).__name__!r}, not a geometry, Feature or FeatureCollection object"
        )
    kind = obj.get("type")
    if kind == "FeatureCollection":
        features = obj.get("features")
        if not isinstance(features, list):
            raise TileError(f"not GeoJSON: {at}a FeatureCollection needs a 'features' list")
        parts: list[Mapping[str, Any]] = []
        for i, feature in enumerate(features):
            if not isinstance(feature, Mapping) or feature.get("type") != "Feature":
                got = feature.get("type") if isinstance(feature, Mapping) else type(feature).__name__
                raise TileError(f"not GeoJSON: {at}features[{i}] is not a Feature (got {got!r})")
            parts.extend(_geojson_parts(feature, f"{at}features[{i}]".strip()))
        return parts
    if kind == "Feature":
        if "geometry" not in obj:
            raise TileError(f"not GeoJSON: {at}a Feature needs a 'geometry' member (null for none)")
        geom = obj["geometry"]
        return [] if geom is None else _geojson_parts(geom, f"{at}geometry".strip())
    if kind not in _GEOMETRY_TYPES:
        raise TileError(
            f"not GeoJSON: {at}'type' is {kind!r}; valid: {', '.join(_GEOMETRY_TYPES)}, Feature, FeatureCollection"
        )
    try:
        shape(obj)
    except Exception as exc:
        raise TileError(f"not GeoJSON: {at}not a valid {kind}: {exc}") from None
    return [obj]


def geometry_from_geojson(obj: Any) -> BaseGeometry:
    """A shapely geometry from a GeoJSON Geometry, Feature or FeatureCollection (EPSG:4326); empty
    when every feature's geometry is null. Anything else: :class:`TileError` ("not GeoJSON: ...")."""
    geoms = [g for g in (shape(p) for p in _geojson_parts(obj)) if not g.is_empty]
    if not geoms:
        return shapely.Polygon()
    return geoms[0] if len(geoms) == 1 else shapely.union_all(geoms)


def geojson_geometry(obj: Any) -> dict[str, Any]:
    """The one GeoJSON geometry of a Geometry, Feature or FeatureCollection (several features: a
    GeometryCollection), as given; a search's ``intersects``. Checked as
    :func:`geometry_from_geojson`; no geometry at all is a :class:`TileError` too."""
    parts = _geojson_parts(obj)
    if not parts:
        raise TileError("has no geometry (every feature's geometry is null)")
    if len(parts) == 1:
        return dict(parts[0])
    return {"type": "GeometryCollection", "geometries": [dict(p) for p in parts]}


# ---------------------------------------------------------------------------------------------
# The grid


@dataclass(frozen=True)
class TileGrid:
    """Square UTM tiles of ``tile_size_m`` metres (default :data:`DEFAULT_TILE_SIZE_M`)."""

    tile_size_m: float = DEFAULT_TILE_SIZE_M

    def __post_init__(self) -> None:
        size = float(self.tile_size_m)
        if not math.isfinite(size) or size <= 0:
            raise TileError(f"tile_size_m must be a positive number, got {self.tile_size_m!r}")
        if abs(size / 60.0 - round(size / 60.0)) > 1e-9:
            raise TileError(
                f"tile_size_m must be divisible by 60 so that 10/20/30/60 m pixels tile it exactly, got {size:g}"
            )
        object.__setattr__(self, "tile_size_m", size)

    # ------------------------------------------------------------------ single tiles
    def _make(self, epsg: int, ix: int, iy: int) -> Tile:
        s = self.tile_size_m
        return Tile(f"{epsg}_{ix}_{iy}", epsg, (ix * s, iy * s, (ix + 1) * s, (iy + 1) * s))

    def tile(self, tile_id: str) -> Tile:
        """The tile with this id; TileError when the id is malformed or outside its zone."""
        epsg, ix, iy = parse_tile_id(tile_id)
        zone, south = zone_of_epsg(epsg)
        tile = self._make(epsg, ix, iy)
        if not self._in_domain(tile, zone, south):
            raise TileError(
                f"tile {tile_id} lies outside UTM zone {zone}{'S' if south else 'N'} for size {self.tile_size_m:g} m"
            )
        return tile

    def _in_domain(self, tile: Tile, zone: int, south: bool) -> bool:
        left, bottom, right, top = tile.bounds
        if not (left > -1e6 and right < 2e6):  # far outside any UTM zone: projections blow up
            return False
        if south and (bottom >= SOUTH_FALSE_NORTHING or top <= 0):
            return False
        if not south and (top <= 0 or bottom >= 1e7):
            return False
        poly = tile.polygon_lonlat()
        if not poly.is_valid:
            return False
        west, east = zone_strip(zone)
        lat_lo, lat_hi = (MIN_LAT, 0.0) if south else (0.0, MAX_LAT)
        return bool(poly.intersects(box(west, lat_lo, east, lat_hi)))

    def tile_at(self, lon: float, lat: float) -> Tile:
        """The tile of the point's own UTM zone that contains it."""
        if not MIN_LAT <= lat <= MAX_LAT:
            raise TileError(f"latitude {lat} is outside the UTM grid ({MIN_LAT}..{MAX_LAT})")
        zone = utm_zone(lon)
        south = lat < 0
        epsg = utm_epsg(zone, south)
        x, y = _to_utm(epsg).transform(lon, lat)
        return self._make(epsg, math.floor(x / self.tile_size_m), math.floor(y / self.tile_size_m))

    # ------------------------------------------------------------------ coverage
    def tiles_for_bbox(self, bbox_wgs84: Sequence[float]) -> list[Tile]:
        """Tiles covering a lon/lat bbox ``(west, south, east, north)``; west > east crosses the antimeridian."""
        if len(bbox_wgs84) != 4:
            raise TileError(f"bbox must be (west, south, east, north), got {bbox_wgs84!r}")
        west, south, east, north = (float(v) for v in bbox_wgs84)
        if not all(math.isfinite(v) for v in (west, south, east, north)):
            raise TileError(f"bbox has non-finite values: {bbox_wgs84!r}")
        if south > north:
            raise TileError(f"bbox south {south} > north {north}")
        if not (-180.0 <= west <= 180.0 and -180.0 <= east <= 180.0):
            raise TileError(f"bbox longitudes must be within [-180, 180], got {bbox_wgs84!r}")
        if west <= east:
            parts: list[BaseGeometry] = [box(west, south, east, north)]
        else:
            parts = [box(west, south, 180.0, north), box(-180.0, south, east, north)]
        return self._cover(parts)

    def tiles_for_geometry(self, geojson: Mapping[str, Any]) -> list[Tile]:
        """Tiles covering a GeoJSON Geometry/Feature/FeatureCollection in EPSG:4326."""
        geom = geometry_from_geojson(geojson)
        if geom.is_empty:
            return []
        return self._cover(_normalise_aoi(geom))

    def tiles_for_items(self, items: Iterable[Mapping[str, Any]]) -> list[Tile]:
        """Tiles touched by the footprints (``geometry``, else ``bbox``) of STAC items (dicts)."""
        parts: list[BaseGeometry] = []
        for item in items:
            geom = item_geometry(item)
            if geom is not None:
                parts.extend(_normalise_aoi(geom))
        return self._cover(parts)

    def _cover(self, parts: Iterable[BaseGeometry]) -> list[Tile]:
        found: list[np.ndarray] = []
        for part in parts:
            if part.is_empty:
                continue
            w, s, e, n = part.bounds
            s, n = max(s, MIN_LAT), min(n, MAX_LAT)
            if s > n:
                continue
            for zone in range(utm_zone(w), utm_zone(min(e, 179.999999)) + 1):
                zw, ze = zone_strip(zone)
                for south_hemi, (lo, hi) in ((True, (MIN_LAT, 0.0)), (False, (0.0, MAX_LAT))):
                    if hi < s or lo > n:
                        continue
                    region = part.intersection(box(zw, lo, ze, hi))
                    if region.is_empty:
                        continue
                    found.append(self._tiles_in_region(region, utm_epsg(zone, south_hemi)))
        if not found:
            return []
        keys = np.unique(np.concatenate(found), axis=0)  # sorted by (epsg, ix, iy), duplicates gone
        return [self._make(int(e), int(i), int(j)) for e, i, j in keys.tolist()]

    def _tiles_in_region(self, region: BaseGeometry, epsg: int) -> np.ndarray:
        """Rows (epsg, ix, iy) of tiles of ``epsg``'s grid that intersect a lon/lat region of its zone."""
        if region.area == 0:  # a degenerate sliver (e.g. a bbox edge on a zone boundary)
            region = region.buffer(1e-9)
        region = shapely.segmentize(region, _DENSIFY_DEG)
        tr = _to_utm(epsg)
        utm = shapely.transform(region, lambda c: np.column_stack(tr.transform(c[:, 0], c[:, 1])))
        if not utm.is_valid:
            utm = utm.buffer(0)
        s = self.tile_size_m
        minx, miny, maxx, maxy = utm.bounds
        ix0, ix1 = math.floor(minx / s), math.floor(maxx / s)
        iy0, iy1 = math.floor(miny / s), math.floor(maxy / s)
        gx, gy = np.meshgrid(np.arange(ix0, ix1 + 1), np.arange(iy0, iy1 + 1), indexing="ij")
        ixs, iys = gx.ravel(), gy.ravel()
        eps = 1e-3  # 1 mm: an AOI edge lying on a tile edge does not pull in the neighbour tile
        boxes = shapely.box(ixs * s + eps, iys * s + eps, (ixs + 1) * s - eps, (iys + 1) * s - eps)
        shapely.prepare(utm)
        hit = shapely.intersects(utm, boxes)
        return np.column_stack([np.full(int(hit.sum()), epsg), ixs[hit], iys[hit]]).astype(np.int64)


def item_geometry(item: Mapping[str, Any]) -> BaseGeometry | None:
    """Footprint of a STAC item dict (``geometry``, else ``bbox``), or None when it has neither."""
    geom = item.get("geometry")
    if geom:
        try:
            g = shape(geom)
            if not g.is_empty:
                return g
        except Exception:
            pass
    bbox = item.get("bbox")
    if bbox and len(bbox) >= 4:
        if len(bbox) == 6:
            bbox = [bbox[0], bbox[1], bbox[3], bbox[4]]
        w, s, e, n = (float(v) for v in bbox[:4])
        if w <= e:
            return box(w, s, e, n)
        return shapely.MultiPolygon([box(w, s, 180.0, n), box(-180.0, s, e, n)])
    return None


class ItemIndex:
    """STAC items by footprint (an STRtree over their antimeridian-split geometries), for picking
    the ones whose footprint intersects a tile."""

    def __init__(self, items: Sequence[Mapping[str, Any]]) -> None:
        self.items = list(items)
        geoms: list[BaseGeometry] = []
        owners: list[int] = []
        for i, item in enumerate(self.items):
            g = item_geometry(item)
            if g is None:
                continue
            for part in _normalise_aoi(g):
                geoms.append(part)
                owners.append(i)
        self._owners = owners
        self._tree = shapely.STRtree(geoms) if geoms else None

    def touching(self, tile: Tile) -> list[Mapping[str, Any]]:
        """Items whose footprint intersects the tile's WGS84 footprint, in input order."""
        if self._tree is None:
            return []
        hits = self._tree.query(shape(tile.footprint_wgs84()), predicate="intersects")
        return [self.items[i] for i in sorted({self._owners[int(h)] for h in hits})]
