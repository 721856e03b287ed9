"""Selection by bbox (any CRS) and time, point look-ups, and merging of UTM zones.

Example::

    from pipelines.query import open_embeddings, select

    emb = open_embeddings("/data/emb")
    sel = select(emb, (5.95, 44.98, 6.05, 45.02))                 # lon/lat bbox across zones 31/32
    sel = select(emb, (7.3e5, 4.985e6, 7.36e5, 4.99e6), crs="EPSG:32631", time="2024-06-01")
    sel.dims                                                      # ('y', 'x', 'dim'), float32, NaN = nodata

A bbox inside one zone returns a lazy (Dask) window of that zone's native grid. A bbox that
needs several zones is resampled (nearest token) onto one grid: ``target_crs`` or the zone of
the bbox centre, at ``token_ground_m``; each output pixel takes the token of its own UTM zone
and falls back to a neighbouring zone where its own has no data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError

from pipelines.embeddings import NODATA_Q, ZoneGrid
from pipelines.query.open import Embeddings, QueryError, TileRef, TimeLike

BBox = tuple[float, float, float, float]
DEFAULT_MAX_TOKENS = 16_000_000
"""The most tokens :func:`select` loads (one zone or merged): 16 M x dim 64 x 4 bytes ~ 4 GB."""


class SelectionTooLargeError(QueryError):
    """A selection above ``max_tokens``, refused before anything is read."""


def parse_crs(crs: Any) -> CRS:
    """A pyproj CRS from ``EPSG:4326``, ``4326``, WKT, PROJ strings or a CRS; clear error otherwise."""
    if isinstance(crs, CRS):
        return crs
    try:
        return CRS.from_user_input(int(crs) if isinstance(crs, str) and crs.strip().isdigit() else crs)
    except (CRSError, TypeError, ValueError):
        raise QueryError(
            f"cannot parse CRS {crs!r}: give an EPSG code (e.g. 'EPSG:4326', 'EPSG:32631', 4326), WKT or a PROJ string"
        ) from None


def crs_label(crs: CRS) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_string()


def parse_bbox(bbox: str | Sequence[float]) -> BBox:
    """``(minx, miny, maxx, maxy)`` from a sequence or a ``"minx,miny,maxx,maxy"`` string."""
    parts: list[Any] = (
        [p for p in bbox.replace(" ", ",").split(",") if p] if isinstance(bbox, str) else list(bbox)
    )
    try:
        vals = [float(v) for v in parts]
    except (TypeError, ValueError):
        raise QueryError(f"bbox {bbox!r} must be four numbers: minx,miny,maxx,maxy") from None
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
        raise QueryError(f"bbox {bbox!r} must be four finite numbers: minx,miny,maxx,maxy")
    minx, miny, maxx, maxy = vals
    if not (minx < maxx and miny < maxy):
        raise QueryError(f"bbox {bbox!r} is empty or inverted: need minx < maxx and miny < maxy")
    return minx, miny, maxx, maxy


def transform_bbox(bbox: BBox, src: CRS, dst: CRS) -> BBox | None:
    """Bounds of ``bbox`` in ``dst`` (edges densified), or None where it cannot be projected."""
    if src == dst:
        return bbox
    try:
        out = Transformer.from_crs(src, dst, always_xy=True).transform_bounds(*bbox, densify_pts=21)
    except Exception:
        return None
    if not all(math.isfinite(v) for v in out):
        return None
    return float(out[0]), float(out[1]), float(out[2]), float(out[3])


def _extent_message(emb: Embeddings, ti: int) -> str:
    parts = []
    for epsg, refs in sorted(emb.tiles(ti).items()):
        ext = emb.extent(epsg, ti)
        if ext:
            parts.append(
                f"EPSG:{epsg} x {ext[0]:.0f}..{ext[2]:.0f}, y {ext[1]:.0f}..{ext[3]:.0f} ({len(refs)} tiles)"
            )
    w, s, e, n = emb.extent_wgs84(ti)
    return f"data extent lon {w:.5f}..{e:.5f}, lat {s:.5f}..{n:.5f} (EPSG:4326); " + "; ".join(parts)


def zone_windows(emb: Embeddings, bbox: BBox, crs: CRS, ti: int) -> dict[int, tuple[int, int, int, int]]:
    """Per zone with data: the token window ``(row0, row1, col0, col1)`` covering ``bbox`` there,
    clipped to that zone's complete tiles."""
    out: dict[int, tuple[int, int, int, int]] = {}
    for epsg, refs in sorted(emb.tiles(ti).items()):
        if not refs:
            continue
        zb = transform_bbox(bbox, crs, CRS.from_epsg(epsg))
        if zb is None:
            continue
        b = np.array([r.bounds for r in refs])
        hit = (b[:, 0] < zb[2]) & (b[:, 2] > zb[0]) & (b[:, 1] < zb[3]) & (b[:, 3] > zb[1])
        if not hit.any():
            continue
        minx = max(zb[0], b[hit, 0].min())
        maxx = min(zb[2], b[hit, 2].max())
        miny = max(zb[1], b[hit, 1].min())
        maxy = min(zb[3], b[hit, 3].max())
        g = emb.grid(epsg)
        r = g.token_ground_m
        col0 = math.floor((minx - g.x0) / r + 1e-9)
        col1 = math.ceil((maxx - g.x0) / r - 1e-9)
        row0 = math.floor((g.y1 - maxy) / r + 1e-9)
        row1 = math.ceil((g.y1 - miny) / r - 1e-9)
        if col1 > col0 and row1 > row0:
            out[epsg] = (row0, row1, col0, col1)
    return out


def _spatial_ref(crs: CRS, transform: Sequence[float]) -> xr.DataArray:
    attrs = {k: v for k, v in crs.to_cf().items() if k != "crs_wkt"}
    wkt = crs.to_wkt()
    attrs.update(
        {"crs_wkt": wkt, "spatial_ref": wkt, "GeoTransform": " ".join(repr(float(v)) for v in transform)}
    )
    return xr.DataArray(0, attrs=attrs)


def geo_dataarray(
    values: Any,
    xs: np.ndarray,
    ys: np.ndarray,
    crs: CRS,
    attrs: dict[str, Any],
    dims: tuple[str, ...] = ("y", "x", "dim"),
) -> xr.DataArray:
    """A georeferenced DataArray (token-centre coords, CF ``spatial_ref``)."""
    res_x = float(xs[1] - xs[0]) if len(xs) > 1 else float(attrs.get("resolution", 1.0))
    res_y = float(ys[0] - ys[1]) if len(ys) > 1 else float(attrs.get("resolution", 1.0))
    transform = (float(xs[0]) - res_x / 2, res_x, 0.0, float(ys[0]) + res_y / 2, 0.0, -res_y)
    coords = {"y": ("y", ys), "x": ("x", xs), "spatial_ref": _spatial_ref(crs, transform)}
    out = xr.DataArray(values, dims=dims, coords=coords, attrs={**attrs, "crs": crs_label(crs)})
    out.attrs["grid_mapping"] = "spatial_ref"
    return out


def _attrs(emb: Embeddings, ti: int, zones: Sequence[int]) -> dict[str, Any]:
    return {
        "version": emb.name,
        "model": emb.version.model,
        "model_version": emb.version.model_version,
        "checkpoint_sha256": emb.version.checkpoint_sha256,
        "time": emb.times[ti],
        "time_index": ti,
        "zones": [int(z) for z in zones],
        "resolution": emb.token_ground_m,
    }


def select_zones(
    emb: Embeddings, bbox: str | Sequence[float], crs: Any = "EPSG:4326", *, time: TimeLike = None
) -> dict[int, xr.DataArray]:
    """The bbox in each zone that has data there, each on its native grid (lazy Dask arrays)."""
    crs_obj = parse_crs(crs)
    box = parse_bbox(bbox)
    ti = emb.time_index(time)
    wins = zone_windows(emb, box, crs_obj, ti)
    if not wins:
        raise QueryError(
            f"bbox {box} ({crs_label(crs_obj)}) does not intersect the data; {_extent_message(emb, ti)}"
        )
    out = {}
    for epsg, (r0, r1, c0, c1) in wins.items():
        da = emb.dataset(epsg)["embeddings"].isel(time=ti, y=slice(r0, r1), x=slice(c0, c1))
        out[epsg] = geo_dataarray(
            _recorded_only(emb, epsg, ti, da.data, r0, c0),
            da["x"].values,
            da["y"].values,
            CRS.from_epsg(epsg),
            _attrs(emb, ti, [epsg]),
        )
    return out


def _recorded_only(emb: Embeddings, epsg: int, ti: int, data: Any, r0: int, c0: int) -> Any:
    """``data`` (a lazy ``[h, w, dim]`` window at ``r0, c0`` of the zone grid) with NaN outside the
    tiles that have a completion record at ``ti``, as :meth:`Embeddings.read_recorded` reads: the
    shard of a killed writer, or of a tile complete at another time only, never counts."""
    import dask.array as dsa

    h, w = int(data.shape[0]), int(data.shape[1])
    nt = emb.version.tokens_per_tile
    mask = np.zeros((h, w), dtype=bool)
    for r in emb.tiles(ti).get(int(epsg), []):
        a0, a1 = max(r.row0 - r0, 0), min(r.row0 + nt - r0, h)
        b0, b1 = max(r.col0 - c0, 0), min(r.col0 + nt - c0, w)
        if a1 > a0 and b1 > b0:
            mask[a0:a1, b0:b1] = True
    if mask.all():
        return data
    chunks = data.chunks[:2] if hasattr(data, "chunks") and data.chunks else "auto"
    keep = dsa.from_array(mask, chunks=chunks)[..., None]
    return dsa.where(keep, data, np.float32(np.nan))


def _covers(emb: Embeddings, epsg: int, box: BBox, crs: CRS, ti: int) -> bool:
    """True when the complete tiles of zone ``epsg`` cover all of ``box``."""
    zb = transform_bbox(box, crs, CRS.from_epsg(epsg))
    if zb is None:
        return False
    s = emb.version.tile_size_m
    have = {(round(r.bounds[0] / s), round(r.bounds[1] / s)) for r in emb.tiles(ti).get(epsg, [])}
    ix = range(math.floor(zb[0] / s), math.ceil(zb[2] / s))
    iy = range(math.floor(zb[1] / s), math.ceil(zb[3] / s))
    return all((i, j) in have for i in ix for j in iy)


def natural_epsg(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """EPSG code of each point's own UTM zone."""
    zone = np.clip(np.floor(((lon + 180.0) % 360.0) / 6.0).astype(np.int64) + 1, 1, 60)
    return np.where(lat < 0, 32700, 32600) + zone


def held_by_own_zone(emb: Embeddings, ti: int, epsg: int, rows: slice, cols: slice) -> np.ndarray:
    """``[rows, cols]`` mask of zone ``epsg``'s tokens whose ground location lies in another UTM
    zone that has a valid token of a complete tile there: that location is the other zone's, so a
    search over every zone counts it once (edge tiles of adjacent zones overlap). Tile results
    (:func:`pipelines.query.similar_tiles`) count a place once by footprint overlap instead: an edge tile
    straddles the border that a token lies on one side of (docs/query.md, "Tile vectors")."""
    g = emb.grid(epsg)
    out = np.zeros((rows.stop - rows.start, cols.stop - cols.start), dtype=bool)
    others = [e for e in emb.tiles(ti) if e != epsg]
    if not others:
        return out
    to_lonlat = Transformer.from_crs(epsg, 4326, always_xy=True)
    rr, cc = np.arange(rows.start, rows.stop), np.arange(cols.start, cols.stop)
    # the window's border holds its extreme longitudes: most windows lie in their zone's own area
    er = np.concatenate([np.full(cc.size, rr[0]), np.full(cc.size, rr[-1]), rr, rr])
    ec = np.concatenate([cc, cc, np.full(rr.size, cc[0]), np.full(rr.size, cc[-1])])
    blon, blat = to_lonlat.transform(*g.token_centres(er, ec))
    if not {int(e) for e in natural_epsg(np.asarray(blon), np.asarray(blat))} & set(others):
        return out
    xs, ys = g.token_centres(rr, cc)
    xx, yy = np.meshgrid(xs, ys)
    lon, lat = to_lonlat.transform(xx, yy)
    own = natural_epsg(np.asarray(lon), np.asarray(lat))
    for other in others:
        m = own == other
        if not m.any():
            continue
        og = emb.grid(other)
        sx, sy = Transformer.from_crs(epsg, other, always_xy=True).transform(xx[m], yy[m])
        col = np.floor((np.asarray(sx) - og.x0) / og.token_ground_m).astype(np.int64)
        row = np.floor((og.y1 - np.asarray(sy)) / og.token_ground_m).astype(np.int64)
        r0, c0 = int(row.min()), int(col.min())
        rows_o, cols_o = slice(r0, int(row.max()) + 1), slice(c0, int(col.max()) + 1)
        first = emb.read_recorded(other, ti, rows_o, cols_o, decode=False)[row - r0, col - c0, 0]  # codes
        out[m] = first != NODATA_Q if first.dtype == np.int8 else np.isfinite(first)
    return out


def select(
    emb: Embeddings,
    bbox: str | Sequence[float],
    crs: Any = "EPSG:4326",
    *,
    time: TimeLike = None,
    target_crs: Any = None,
    resolution: float | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> xr.DataArray:
    """Embeddings ``(y, x, dim)`` float32 (NaN = nodata) inside ``bbox`` given in ``crs``, at one time
    (``time=None``: the latest time with data).

    One zone and no ``target_crs``: a lazy window of the native grid. Otherwise zones are merged
    by nearest-token resampling onto ``target_crs`` (default: the zone of the bbox centre) at
    ``resolution`` (default ``token_ground_m``; degrees for geographic CRSs), loaded eagerly.
    """
    plan = _plan(emb, bbox, crs, time, target_crs, resolution)
    check_tokens(*_plan_shape(emb, plan, resolution), max_tokens)  # before anything is read
    box, crs_obj, ti, wins, zone, target = plan
    if zone is not None:
        return select_zones(emb, box, crs_obj, time=ti)[zone]
    return _merge(emb, box, crs_obj, target, ti, wins, resolution)


def selection_shape(
    emb: Embeddings,
    bbox: str | Sequence[float],
    crs: Any = "EPSG:4326",
    *,
    time: TimeLike = None,
    target_crs: Any = None,
    resolution: float | None = None,
) -> tuple[int, int]:
    """``(ny, nx)`` of what :func:`select` would return for these arguments, from metadata only."""
    return _plan_shape(emb, _plan(emb, bbox, crs, time, target_crs, resolution), resolution)


def check_tokens(ny: int, nx: int, max_tokens: int) -> None:
    """Refuse a selection of ``ny x nx`` tokens above ``max_tokens`` (it would be loaded whole)."""
    if ny * nx > max_tokens:
        raise SelectionTooLargeError(
            f"selection of {ny} x {nx} = {ny * nx} tokens exceeds max_tokens={max_tokens} (it would be "
            "loaded into memory whole); pass a smaller bbox (--bbox) or a coarser resolution, or raise "
            "max_tokens (Python argument)"
        )


_Plan = tuple[BBox, CRS, int, dict[int, tuple[int, int, int, int]], int | None, CRS]


def _plan(
    emb: Embeddings,
    bbox: str | Sequence[float],
    crs: Any,
    time: TimeLike,
    target_crs: Any,
    resolution: float | None,
) -> _Plan:
    """``(box, crs, time index, zone windows, zone, target)``: ``zone`` is the zone whose native
    window :func:`select` returns, or None when zones are merged onto ``target``."""
    crs_obj = parse_crs(crs)
    box = parse_bbox(bbox)
    ti = emb.time_index(time)
    wins = zone_windows(emb, box, crs_obj, ti)
    if not wins:
        raise QueryError(
            f"bbox {box} ({crs_label(crs_obj)}) does not intersect the data; {_extent_message(emb, ti)}"
        )
    target = parse_crs(target_crs) if target_crs is not None else None
    lon_c, lat_c = Transformer.from_crs(crs_obj, 4326, always_xy=True).transform(
        (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    )
    nat = int(natural_epsg(np.array([lon_c]), np.array([lat_c]))[0])
    if resolution is None:
        # one zone whose complete tiles cover the whole bbox: its native grid, lazily (the bbox's own
        # CRS first, then the zone of the bbox centre)
        covering = [z for z in wins if _covers(emb, z, box, crs_obj, ti)]
        if len(wins) == 1:
            covering = list(wins)
        prefer = sorted(covering, key=lambda z: (z != crs_obj.to_epsg(), z != nat, z))
        if target is not None:
            prefer = [z for z in prefer if z == target.to_epsg()]
        if prefer:
            return box, crs_obj, ti, wins, prefer[0], CRS.from_epsg(prefer[0])
    if target is None:
        if nat in wins:
            target = CRS.from_epsg(nat)
        else:
            target = CRS.from_epsg(
                max(wins, key=lambda z: (wins[z][1] - wins[z][0]) * (wins[z][3] - wins[z][2]))
            )
    return box, crs_obj, ti, wins, None, target


def _plan_shape(emb: Embeddings, plan: _Plan, resolution: float | None) -> tuple[int, int]:
    box, crs_obj, _, wins, zone, target = plan
    if zone is not None:
        r0, r1, c0, c1 = wins[zone]
        return r1 - r0, c1 - c0
    *_, nx, ny = _merge_grid(emb, box, crs_obj, target, wins, resolution)
    return ny, nx


def _merge_grid(
    emb: Embeddings,
    box: BBox,
    crs: CRS,
    target: CRS,
    wins: dict[int, tuple[int, int, int, int]],
    resolution: float | None,
) -> tuple[float, float, float, float, float, int, int]:
    """The merged output grid in ``target``: ``(res, x0, y0, x1, y1, nx, ny)``."""
    res = (
        float(resolution)
        if resolution
        else (emb.token_ground_m if target.is_projected else emb.token_ground_m / 111_320.0)
    )
    # the union of the zone windows, seen from the target CRS, limited to the requested bbox
    tb = transform_bbox(box, crs, target)
    if tb is None:
        raise QueryError(f"bbox {box} cannot be projected to {crs_label(target)}")
    ext: list[BBox] = []
    for epsg, (r0, r1, c0, c1) in wins.items():
        g = emb.grid(epsg)
        zb = (
            g.x0 + c0 * g.token_ground_m,
            g.y1 - r1 * g.token_ground_m,
            g.x0 + c1 * g.token_ground_m,
            g.y1 - r0 * g.token_ground_m,
        )
        t = transform_bbox(zb, CRS.from_epsg(epsg), target)
        if t is not None:
            ext.append(t)
    if ext:
        e = np.array(ext)
        tb = (
            max(tb[0], e[:, 0].min()),
            max(tb[1], e[:, 1].min()),
            min(tb[2], e[:, 2].max()),
            min(tb[3], e[:, 3].max()),
        )
    x0 = math.floor(tb[0] / res) * res
    x1 = math.ceil(tb[2] / res) * res
    y0 = math.floor(tb[1] / res) * res
    y1 = math.ceil(tb[3] / res) * res
    nx, ny = round((x1 - x0) / res), round((y1 - y0) / res)
    return res, x0, y0, x1, y1, nx, ny


def _merge(
    emb: Embeddings,
    box: BBox,
    crs: CRS,
    target: CRS,
    ti: int,
    wins: dict[int, tuple[int, int, int, int]],
    resolution: float | None,
) -> xr.DataArray:
    res, x0, y0, x1, y1, nx, ny = _merge_grid(emb, box, crs, target, wins, resolution)
    # the output rectangle reaches past the bbox where the CRSs are rotated: read what covers it
    wins = zone_windows(emb, (x0, y0, x1, y1), target, ti) or wins
    xs = x0 + (np.arange(nx) + 0.5) * res
    ys = y1 - (np.arange(ny) + 0.5) * res
    xx, yy = np.meshgrid(xs, ys)
    lon, lat = Transformer.from_crs(target, 4326, always_xy=True).transform(xx, yy)
    nat = natural_epsg(np.asarray(lon), np.asarray(lat))
    out = np.full((ny, nx, emb.dim), np.nan, dtype=np.float32)
    filled = np.zeros((ny, nx), dtype=bool)
    candidates: list[tuple[int, np.ndarray, np.ndarray]] = []
    for epsg, (r0, r1, c0, c1) in wins.items():
        g = emb.grid(epsg)
        sx, sy = Transformer.from_crs(target, epsg, always_xy=True).transform(xx, yy)
        col = np.floor((np.asarray(sx) - g.x0) / g.token_ground_m).astype(np.int64)
        row = np.floor((g.y1 - np.asarray(sy)) / g.token_ground_m).astype(np.int64)
        inside = (row >= r0) & (row < r1) & (col >= c0) & (col < c1)
        if not inside.any():
            continue
        window = emb.read_recorded(epsg, ti, slice(r0, r1), slice(c0, c1))
        vals = np.full((ny, nx, emb.dim), np.nan, dtype=np.float32)
        vals[inside] = window[row[inside] - r0, col[inside] - c0]
        avail = inside & np.isfinite(vals[..., 0])
        candidates.append((epsg, vals, avail))
    for epsg, vals, avail in candidates:  # each pixel's own zone first ...
        m = avail & (nat == epsg) & ~filled
        out[m] = vals[m]
        filled |= m
    for _, vals, avail in candidates:  # ... then any zone with data there
        m = avail & ~filled
        out[m] = vals[m]
        filled |= m
    attrs = _attrs(emb, ti, sorted(wins)) | {"resolution": res, "merged": "nearest token, own UTM zone first"}
    return geo_dataarray(out, xs, ys, target, attrs)


def vectors_at(
    emb: Embeddings,
    x: float | Sequence[float] | np.ndarray,
    y: float | Sequence[float] | np.ndarray,
    crs: Any = "EPSG:4326",
    *,
    time: TimeLike = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Embedding of the token under each point (lon/lat by default).

    Returns ``(vectors [n, dim] float32 with NaN rows where there is no data, info)`` where
    ``info`` has per-point ``epsg``, ``row``, ``col`` (zone grid, -1 when missing). A point's own
    UTM zone is tried first, then the others.
    """
    crs_obj = parse_crs(crs)
    xa = np.atleast_1d(np.asarray(x, dtype=np.float64))
    ya = np.atleast_1d(np.asarray(y, dtype=np.float64))
    if xa.shape != ya.shape:
        raise QueryError(f"x and y must have the same length ({xa.size} vs {ya.size})")
    ti = emb.time_index(time)
    lon, lat = Transformer.from_crs(crs_obj, 4326, always_xy=True).transform(xa, ya)
    nat = natural_epsg(np.asarray(lon), np.asarray(lat))
    n = xa.size
    out = np.full((n, emb.dim), np.nan, dtype=np.float32)
    info = {"epsg": np.zeros(n, np.int64), "row": np.full(n, -1, np.int64), "col": np.full(n, -1, np.int64)}
    tiles = emb.tiles(ti)
    nt = emb.version.tokens_per_tile
    for attempt in ("own", "any"):
        for epsg, refs in sorted(tiles.items()):
            todo = ~np.isfinite(out[:, 0])
            if attempt == "own":
                todo &= nat == epsg
            if not todo.any() or not refs:
                continue
            g: ZoneGrid = emb.grid(epsg)
            sx, sy = Transformer.from_crs(crs_obj, epsg, always_xy=True).transform(xa[todo], ya[todo])
            sx, sy = np.atleast_1d(np.asarray(sx, np.float64)), np.atleast_1d(np.asarray(sy, np.float64))
            there = np.isfinite(sx) & np.isfinite(sy)  # a point far outside the zone projects to inf
            idx = np.flatnonzero(todo)[there]
            col = np.floor((sx[there] - g.x0) / g.token_ground_m).astype(np.int64)
            row = np.floor((g.y1 - sy[there]) / g.token_ground_m).astype(np.int64)
            by_tile: dict[tuple[int, int], TileRef] = {(r.row0 // nt, r.col0 // nt): r for r in refs}
            keys = np.column_stack([row // nt, col // nt])
            for key in {tuple(k) for k in keys.tolist()}:
                ref = by_tile.get((int(key[0]), int(key[1])))
                if ref is None:
                    continue
                sel = np.flatnonzero((keys[:, 0] == key[0]) & (keys[:, 1] == key[1]))
                tile = emb.read_tile(ref, ti)
                vals = tile[row[sel] - ref.row0, col[sel] - ref.col0]
                ok = np.isfinite(vals[:, 0])
                pts = idx[sel[ok]]
                out[pts] = vals[ok]
                info["epsg"][pts] = epsg
                info["row"][pts] = row[sel[ok]]
                info["col"][pts] = col[sel[ok]]
    return out, info
