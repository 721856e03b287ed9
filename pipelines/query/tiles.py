"""Tile-level queries: one pooled vector per tile, read from the consolidated tile grid.

Example::

    from pipelines.query import open_embeddings, similar_tiles, tile_vectors, tiles_geoparquet

    emb = open_embeddings("/data/emb")
    tv = tile_vectors(emb, 32631)                 # TileVectors: [tile_y, tile_x, dim] float32 + grid
    res = similar_tiles(emb, lon=5.99, lat=45.0, k=20)
    tiles_geoparquet(emb, "tiles.parquet")        # one row per tile: footprint polygon + vector
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyproj import CRS, Transformer

from pipelines.embeddings import unit
from pipelines.query.open import Embeddings, QueryError, TimeLike, as_points
from pipelines.query.select import natural_epsg
from pipelines.query.similarity import SimilarityResult
from pipelines.query.twins import Lattice, once_per_place, twin_notes


@dataclass(frozen=True)
class TileVectors:
    """The tile vectors of one zone at one time, on the tile lattice (north-up)."""

    epsg: int
    """the zone"""
    vectors: np.ndarray
    """``[tile_y, tile_x, dim]`` float32, NaN where no tile is recorded"""
    x: np.ndarray
    """tile centre eastings (m), ``[tile_x]``"""
    y: np.ndarray
    """tile centre northings (m), ``[tile_y]``, descending"""
    consolidated: bool
    """True when read from the consolidated grid (few objects); False: one read per tile"""


def tile_vectors(emb: Embeddings, epsg: int, time: TimeLike = None) -> TileVectors:
    """All tile vectors of a zone: the consolidated ``tiles/vectors`` grid (a few objects per zone)
    where it exists, else the per-tile ``pooled`` chunks of the recorded tiles."""
    import zarr

    from pipelines.embeddings import TILES_GROUP, zarr_store

    ti = emb.time_index(time)
    epsg = int(epsg)
    g = emb.grid(epsg)
    tny, tnx = g.tile_shape
    xs, ys = g.tile_x_coords(), g.tile_y_coords()
    store = zarr_store(emb.url, emb.storage_options, read_only=True)
    try:
        arr: Any = zarr.open_array(store=store, path=f"{emb.name}/{epsg}/{TILES_GROUP}/vectors", mode="r")
    except (FileNotFoundError, KeyError, zarr.errors.ArrayNotFoundError, zarr.errors.NodeTypeValidationError):
        arr = None
    if arr is not None:
        vec = np.asarray(arr[ti]).astype(np.float32).transpose(1, 2, 0)  # [dim, y, x] -> [y, x, dim]
        return TileVectors(epsg, vec, xs, ys, True)
    pooled: Any = zarr.open_array(store=store, path=f"{emb.name}/{epsg}/pooled", mode="r")
    band_first = tuple(getattr(pooled.metadata, "dimension_names", ()) or ())[1:2] == ("dim",)
    out = np.full((tny, tnx, emb.dim), np.nan, np.float32)
    n = emb.version.tokens_per_tile
    for ref in emb.tiles(ti).get(epsg, []):
        r, c = ref.row0 // n, ref.col0 // n
        out[r, c] = np.asarray(pooled[ti, :, r, c] if band_first else pooled[ti, r, c, :])
    return TileVectors(epsg, out, xs, ys, False)


def _tile_id(epsg: int, x: float, y: float, s: float) -> str:
    return f"{epsg}_{int(np.floor(x / s))}_{int(np.floor(y / s))}"


def similar_tiles(
    emb: Embeddings,
    *,
    lon: float | Sequence[float] | None = None,
    lat: float | Sequence[float] | None = None,
    vectors: np.ndarray | None = None,
    k: int = 10,
    time: TimeLike = None,
) -> SimilarityResult:
    """The ``k`` tiles whose pooled vectors are most similar (cosine) to the tiles under the example
    points and/or to ``vectors``. ``row``/``col`` of the result are tile indices in the zone.

    A point's tile is looked up in the point's own UTM zone first, then in the others (as
    :func:`~pipelines.query.select.vectors_at` does). Each place is given once: a tile more than half of
    whose footprint lies in a higher-ranked result of another zone (its twin: edge tiles of adjacent
    zones overlap) is left out (:data:`~pipelines.query.twins.TWIN_OVERLAP`) and the next one taken;
    ``notes`` counts them."""
    if k < 1:
        raise QueryError(f"k must be >= 1, got {k}")
    ti = emb.time_index(time)
    s = emb.version.tile_size_m
    per_zone = {z: tile_vectors(emb, z, ti) for z in sorted(emb.tiles(ti)) if emb.tiles(ti)[z]}
    qs: list[np.ndarray] = []
    if lon is not None or lat is not None:
        if lon is None or lat is None:
            raise QueryError("give both lon and lat")
        lo, la = as_points(lon, lat)
        own = natural_epsg(lo, la)
        for a, b, o in zip(lo.tolist(), la.tolist(), own.tolist()):
            found = None
            for z in sorted(per_zone, key=lambda e: (e != o, e)):  # the point's own zone first (vectors_at)
                tv = per_zone[z]
                x, y = Transformer.from_crs(4326, z, always_xy=True).transform(a, b)
                c = int(np.floor((x - (tv.x[0] - s / 2)) / s))
                r = int(np.floor(((tv.y[0] + s / 2) - y) / s))
                if 0 <= r < tv.vectors.shape[0] and 0 <= c < tv.vectors.shape[1]:
                    v = tv.vectors[r, c]
                    if np.isfinite(v).all():
                        found = v
                        break
            if found is None:
                raise QueryError(f"no tile vector at lon {a:.5f}, lat {b:.5f} (time {emb.times[ti]})")
            qs.append(found)
    if vectors is not None:
        qs += list(np.atleast_2d(np.asarray(vectors, dtype=np.float32)))
    if not qs:
        raise QueryError("give example locations (lon/lat) and/or query vectors")
    q = unit(unit(np.stack(qs)).mean(axis=0))
    if q.shape != (emb.dim,):
        raise QueryError(f"query vectors must have {emb.dim} components")
    scores, keys = [], []
    searched = 0
    for z, tv in per_zone.items():
        flat = tv.vectors.reshape(-1, emb.dim)
        ok = np.flatnonzero(np.isfinite(flat[:, 0]))
        searched += ok.size
        sc = unit(flat[ok]) @ q
        scores.append(sc)
        keys += [(z, int(i) // tv.vectors.shape[1], int(i) % tv.vectors.shape[1]) for i in ok]
    all_s = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    order, twins = _rank_once_per_place(np.argsort(-all_s, kind="stable"), keys, per_zone, s, k)
    epsg = np.array([keys[i][0] for i in order], np.int64)
    rows = np.array([keys[i][1] for i in order], np.int64)
    cols = np.array([keys[i][2] for i in order], np.int64)
    xs = np.array([per_zone[int(z)].x[c] for z, c in zip(epsg, cols)], np.float64)
    ys = np.array([per_zone[int(z)].y[r] for z, r in zip(epsg, rows)], np.float64)
    lons = np.empty(order.size)
    lats = np.empty(order.size)
    for i in range(order.size):
        lons[i], lats[i] = Transformer.from_crs(int(epsg[i]), 4326, always_xy=True).transform(xs[i], ys[i])
    return SimilarityResult(
        scores=all_s[order].astype(np.float32),
        epsg=epsg,
        x=xs,
        y=ys,
        lon=lons,
        lat=lats,
        row=rows,
        col=cols,
        tile_id=[_tile_id(int(z), x, y, s) for z, x, y in zip(epsg, xs, ys)],
        time=emb.times[ti],
        version=emb.name,
        query=q,
        searched_vectors=int(searched),
        notes=twin_notes(order.size, k, twins, "tiles with vectors", "tile"),
    )


def _rank_once_per_place(
    ranked: np.ndarray,
    keys: Sequence[tuple[int, int, int]],
    per_zone: Mapping[int, TileVectors],
    s: float,
    k: int,
) -> tuple[np.ndarray, int]:
    """The first ``k`` of ``ranked`` (indices into ``keys``: zone, tile row, tile col) without twins
    (:func:`~pipelines.query.twins.once_per_place`, as for tokens). Returns the kept indices and how many
    were left out."""
    lattices = {
        z: Lattice(z, float(tv.x[0]) - s / 2, float(tv.y[0]) + s / 2, s) for z, tv in per_zone.items()
    }
    kept, twins = once_per_place(np.array(keys, np.int64).reshape(-1, 3)[ranked], lattices, k)
    return ranked[kept], twins


def tiles_geoparquet(
    emb: Embeddings,
    out: str,
    *,
    time: TimeLike = None,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Every recorded tile as one GeoParquet row: its footprint (OGC:CRS84, split at the antimeridian),
    ``tile_id``, ``epsg``, tile centre ``x``/``y`` (zone CRS) and the pooled ``embedding``."""
    import shapely
    from shapely.geometry import shape

    from pipelines.query.export import write_geometries_geoparquet
    from pipelines.tiling import Tile

    ti = emb.time_index(time)
    s = emb.version.tile_size_m
    geoms, ids, epsgs, xs, ys, vecs = [], [], [], [], [], []
    for z in sorted(emb.tiles(ti)):
        tv = tile_vectors(emb, z, ti)
        for ref in emb.tiles(ti)[z]:
            n = emb.version.tokens_per_tile
            v = tv.vectors[ref.row0 // n, ref.col0 // n]
            if not np.isfinite(v).all():
                continue
            geoms.append(shape(Tile(ref.tile_id, z, ref.bounds).footprint_wgs84()))
            ids.append(ref.tile_id)
            epsgs.append(z)
            xs.append(ref.bounds[0] + s / 2)
            ys.append(ref.bounds[1] + s / 2)
            vecs.append(v)
    if not ids:
        raise QueryError(f"no tile vectors at time {emb.times[ti]}")
    arr = np.array(geoms, dtype=object)
    gtypes = sorted({str(t) for t in shapely.get_type_id(arr).tolist()})
    gtype = "Polygon" if gtypes == ["3"] else "MultiPolygon" if gtypes == ["6"] else "Polygon"
    if gtypes not in (["3"], ["6"]):  # both kinds (an antimeridian tile): write all as MultiPolygon
        arr = np.array(
            [shapely.multipolygons([g]) if g.geom_type == "Polygon" else g for g in arr], dtype=object
        )
        gtype = "MultiPolygon"
    return write_geometries_geoparquet(
        out,
        arr,
        gtype,
        CRS.from_user_input("OGC:CRS84"),
        {
            "tile_id": ids,
            "epsg": np.array(epsgs, np.int32),
            "x": np.array(xs),
            "y": np.array(ys),
            "area_m2": np.full(len(ids), s * s),
            "time": [emb.times[ti]] * len(ids),
            "version": [emb.name] * len(ids),
        },
        storage_options,
        embedding=np.stack(vecs),
    )
