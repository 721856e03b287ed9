"""Similarity search: exact top-k cosine over the stored vectors, chunked with Dask.

Example::

    from pipelines.query import open_embeddings, similar

    emb = open_embeddings("/data/emb")
    res = similar(emb, lon=5.99, lat=45.0, k=20)                       # whole dataset
    res = similar(emb, lon=[5.99, 6.01], lat=[45.0, 45.01], k=20,      # mean of two examples,
                  aoi=(5.9, 44.9, 6.1, 45.1), exclude_radius_m=500)    # inside an AOI, not next door
    res.to_records()[0]   # {'score': 0.97, 'lon': ..., 'lat': ..., 'epsg': 32631, 'x': ..., 'y': ..., ...}

How it scales: every Dask task reads a block of up to ``tiles_per_task`` complete tiles (one
Zarr shard each), decodes the int8 codes with a 256-entry table, scores them with one float32
matrix product and keeps only its own top ``2 k``; the driver merges them and leaves out twins
(``twins.py``: the same ground from two zones). Memory is bounded by the block size, not by the
zone, and the work spreads over the threads of the local machine or the workers of a
``dask.distributed`` client. No approximate index is used: see ``docs/query.md`` (measured: exact
search is already minutes per 10^8 vectors and an IVF index only pays off for many repeated queries).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyproj import CRS, Transformer

from pipelines import storage
from pipelines.embeddings import NODATA_Q, dequantize
from pipelines.query.open import Embeddings, QueryError, TileRef, TimeLike, as_points
from pipelines.query.select import (
    crs_label,
    held_by_own_zone,
    parse_bbox,
    parse_crs,
    transform_bbox,
    vectors_at,
)
from pipelines.query.twins import Lattice, best_once_per_place, candidates_per_task, twin_notes
from pipelines.tiling import square_groups

# ------------------------------------------------------------------------------------------
# Kernel


def _decode_scaled(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[n, dim]`` codes -> (float32 vectors proportional to the decoded ones, valid-row mask).

    ``int8-sqrt`` decodes to ``q * |q| / 127**2``; the constant cancels in a cosine, so the kernel
    uses ``q * |q|`` (two cheap element-wise passes instead of a table gather).
    """
    f = block.astype(np.float32)
    if block.dtype == np.int8:
        valid = block[:, 0] != NODATA_Q  # nodata vectors are -128 everywhere
        f *= np.abs(f)
    else:
        valid = np.isfinite(f[:, 0])
        f[~valid] = 0.0
    return f, valid


def score_block(
    block: np.ndarray, queries: np.ndarray, k: int, whitening: Whitening | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine of ``queries [m, dim]`` (unit vectors) against ``block [n, dim]`` (int8 codes or floats).

    With ``whitening`` the block's vectors are decoded exactly and whitened first, and ``queries``
    are unit vectors of the whitened space (``[m, whitening.k]``).
    Returns ``(scores [m, kk], rows [m, kk])`` with ``kk = min(k, valid rows)``, unsorted.
    """
    m = queries.shape[0]
    if block.shape[0] == 0:
        return np.empty((m, 0), np.float32), np.empty((m, 0), np.int64)
    if whitening is None:
        vecs, valid = _decode_scaled(block)
    else:
        decoded = dequantize(block)  # [n, dim] float32, NaN = nodata
        valid = np.isfinite(decoded[:, 0])
        decoded[~valid] = 0.0
        vecs = whitening.apply(decoded)  # [n, k]
    norms = np.sqrt(np.einsum("ij,ij->i", vecs, vecs))
    ok = valid & (norms > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = (vecs @ queries.T).T / norms  # [m, n]
    scores[:, ~ok] = -np.inf
    n_ok = int(ok.sum())
    if n_ok == 0:
        return np.empty((m, 0), np.float32), np.empty((m, 0), np.int64)
    rows = np.arange(block.shape[0])
    if n_ok <= k:
        keep = np.flatnonzero(ok)
        return scores[:, keep].astype(np.float32), np.broadcast_to(keep, (m, keep.size)).copy()
    return _topk_rows(scores.astype(np.float32, copy=False), rows, k)


def _topk_rows(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    n = scores.shape[1]
    if n <= k:
        return scores, np.broadcast_to(rows, scores.shape).copy()
    # the k-th best score, then every row scoring at least that: argpartition alone picks an
    # arbitrary subset of the rows tied at the k-th score, and the documented tie-break (lower
    # row first, so lower zone/row/col in a search) must hold whatever the block layout
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(scores, part, axis=1).min(axis=1)
    out_s = np.empty((scores.shape[0], k), dtype=scores.dtype)
    out_r = np.empty((scores.shape[0], k), dtype=rows.dtype)
    for i in range(scores.shape[0]):
        cand = np.flatnonzero(scores[i] >= kth[i])
        best = cand[np.lexsort((rows[cand], -scores[i, cand]))[:k]]
        out_s[i], out_r[i] = scores[i, best], rows[best]
    return out_s, out_r


def _merge(scores: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """Indices of the best k (descending score; ties broken by the key columns, ascending)."""
    finite = np.flatnonzero(np.isfinite(scores))
    order = np.lexsort((*[keys[finite, j] for j in range(keys.shape[1] - 1, -1, -1)], -scores[finite]))
    return finite[order[:k]]


def unit_queries(vectors: np.ndarray) -> np.ndarray:
    q = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    if not np.isfinite(q).all():
        raise QueryError("query vectors contain NaN/Inf (an example location without data?)")
    n = np.linalg.norm(q, axis=1, keepdims=True)
    if np.any(n == 0):
        raise QueryError("query vectors must be non-zero")
    return q / n


def topk_cosine(
    vectors: Any, queries: np.ndarray, k: int, scheduler: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k cosine over ``vectors [N, dim]`` (numpy or Dask array of int8 codes or floats).

    A Dask array is processed block by block (chunk along rows, whole ``dim`` per chunk) in parallel.
    Returns ``(scores [m, k], indices [m, k])`` sorted by descending score (ties: lower index first).
    """
    import dask

    q = unit_queries(queries)
    if k < 1:
        raise QueryError(f"k must be >= 1, got {k}")
    if hasattr(vectors, "to_delayed"):
        if len(vectors.chunks[1]) != 1:
            vectors = vectors.rechunk({1: -1})
        offsets = np.concatenate([[0], np.cumsum(vectors.chunks[0])[:-1]])
        blocks = vectors.to_delayed().ravel()
        parts = dask.compute(
            *[dask.delayed(_offset_block)(b, q, k, int(o)) for b, o in zip(blocks, offsets)],
            scheduler=scheduler,
        )
    else:
        parts = [score_block(np.asarray(vectors), q, k)]
    return _merge_parts(parts, q.shape[0], k)


def _offset_block(block: np.ndarray, q: np.ndarray, k: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    s, r = score_block(block, q, k)
    return s, r + offset


def _merge_parts(
    parts: Sequence[tuple[np.ndarray, np.ndarray]], m: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    scores = np.full((m, k), -np.inf, np.float32)
    idx = np.full((m, k), -1, np.int64)
    for qi in range(m):
        s = np.concatenate([p[0][qi] for p in parts]) if parts else np.empty(0, np.float32)
        r = np.concatenate([p[1][qi] for p in parts]) if parts else np.empty(0, np.int64)
        best = _merge(s, r[:, None], k)
        scores[qi, : best.size] = s[best]
        idx[qi, : best.size] = r[best]
    return scores, idx


# ------------------------------------------------------------------------------------------
# Whitened cosine

METRICS = ("cosine", "whitened")
"""Similarity metrics of :func:`similar`: ``cosine`` of the stored vectors, or ``whitened``: cosine
after :class:`Whitening` (fitted on a sample of the searched vectors, no labels)."""

WHITEN_AXES = 32
"""Principal axes the whitened metric keeps (fixed before measuring; the sweep is in docs/query.md)."""

WHITEN_SAMPLE = 20_000
"""Vectors :func:`sample_vectors` draws to fit the whitening."""

INT8_WHITENED_NOTE = (
    "this version stores int8-sqrt codes, whose rounding is as large as the variation along the "
    "whitening's smaller axes: the whitened metric keeps only part of its gain here (a float16 version, "
    "aom embed --quantisation float16, keeps all of it; docs/query.md)"
)
"""The note a whitened search of an ``int8-sqrt`` version carries (measured in docs/query.md)."""


@dataclass(frozen=True)
class Whitening:
    """Centre, project on the leading principal axes, scale each axis to unit variance.

    The cosine of whitened vectors weighs every kept direction of variation alike; the raw cosine
    of an embedding whose tokens share a large component, or whose variance sits in a few
    directions, mostly sees those (docs/query.md, "Whitened cosine").
    """

    mean: np.ndarray
    """``[dim]`` mean vector of the sample."""
    axes: np.ndarray
    """``[k, dim]`` principal axes, leading first (orthonormal rows)."""
    scale: np.ndarray
    """``[k]`` standard deviation of the sample along each axis."""

    @property
    def k(self) -> int:
        return int(self.axes.shape[0])

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """``[..., dim]`` -> ``[..., k]`` float32 (NaN vectors stay NaN)."""
        v = np.asarray(vectors, dtype=np.float32)
        return np.asarray(((v - self.mean) @ self.axes.T) / self.scale, dtype=np.float32)


def fit_whitening(
    vectors: np.ndarray, k: int = WHITEN_AXES, sample: int | None = WHITEN_SAMPLE, seed: int = 0
) -> Whitening:
    """The :class:`Whitening` of ``vectors [..., dim]`` (vectors with NaN are left out; more than
    ``sample`` valid ones: a seeded random ``sample`` of them), ``k`` axes at most (no more than
    ``dim`` and than the sample's rank)."""
    x = np.asarray(vectors, dtype=np.float64)
    x = x.reshape(-1, x.shape[-1])
    x = x[np.isfinite(x).all(axis=1)]
    if sample is not None and x.shape[0] > sample:
        x = x[np.random.default_rng(seed).permutation(x.shape[0])[:sample]]
    if x.shape[0] < 2:
        raise QueryError("whitening needs at least 2 valid vectors to fit")
    mean = x.mean(axis=0)
    _, sv, vt = np.linalg.svd(x - mean, full_matrices=False)
    sd = sv / math.sqrt(x.shape[0])
    keep = min(k, int(np.count_nonzero(sd > sd[0] * 1e-6)))
    return Whitening(
        mean=mean.astype(np.float32), axes=vt[:keep].astype(np.float32), scale=sd[:keep].astype(np.float32)
    )


def metric_whitening(
    emb: Embeddings, time_index: int, metric: str, whitening: Whitening | None = None
) -> Whitening | None:
    """The whitening a search with ``metric`` uses: None for ``cosine``; for ``whitened``, the
    given one or one fitted on :func:`sample_vectors` of ``emb`` at ``time_index``."""
    if metric not in METRICS:
        raise QueryError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    if metric == "cosine":
        return None
    return whitening if whitening is not None else fit_whitening(sample_vectors(emb, time_index))


def sample_vectors(
    emb: Embeddings, time_index: int, n: int = WHITEN_SAMPLE, max_tiles: int = 16, seed: int = 0
) -> np.ndarray:
    """Up to ``n`` decoded vectors ``[n, dim]`` drawn (seeded) from up to ``max_tiles`` complete
    tiles spread evenly over the sorted tile list of every zone at ``time_index``."""
    refs = sorted(
        ((epsg, r) for epsg, rs in emb.tiles(time_index).items() for r in rs), key=lambda t: t[1].tile_id
    )
    if not refs:
        raise QueryError(f"no complete tile at time {emb.times[time_index]}")
    pick = np.unique(np.linspace(0, len(refs) - 1, min(max_tiles, len(refs))).round().astype(int))
    nt = emb.version.tokens_per_tile
    parts = []
    for i in pick:
        epsg, r = refs[int(i)]
        v = emb.read_recorded(epsg, time_index, slice(r.row0, r.row0 + nt), slice(r.col0, r.col0 + nt))
        v = v.reshape(-1, v.shape[-1])
        parts.append(v[np.isfinite(v).all(axis=1)])
    x = np.concatenate(parts)
    if x.shape[0] > n:
        x = x[np.sort(np.random.default_rng(seed).choice(x.shape[0], n, replace=False))]
    return x


# ------------------------------------------------------------------------------------------
# Store search


@dataclass
class SimilarityResult:
    """Top-k locations, best first. Arrays are aligned; ``query`` is the unit query vector."""

    scores: np.ndarray
    epsg: np.ndarray
    x: np.ndarray
    y: np.ndarray
    lon: np.ndarray
    lat: np.ndarray
    row: np.ndarray
    col: np.ndarray
    tile_id: list[str]
    time: str
    version: str
    query: np.ndarray
    searched_vectors: int = 0
    notes: list[str] = field(default_factory=list)
    metric: str = "cosine"
    """``cosine`` or ``whitened`` (:data:`METRICS`); ``query`` lives in that metric's space."""

    def __len__(self) -> int:
        return int(self.scores.size)

    def to_records(self) -> list[dict[str, Any]]:
        return [
            {
                "rank": i + 1,
                "score": float(self.scores[i]),
                "lon": float(self.lon[i]),
                "lat": float(self.lat[i]),
                "epsg": int(self.epsg[i]),
                "x": float(self.x[i]),
                "y": float(self.y[i]),
                "tile_id": self.tile_id[i],
                "time": self.time,
            }
            for i in range(len(self))
        ]

    def to_geojson(self) -> dict[str, Any]:
        return {
            "type": "FeatureCollection",
            "features": [
                {
                    "type": "Feature",
                    "geometry": {"type": "Point", "coordinates": [r["lon"], r["lat"]]},
                    "properties": r,
                }
                for r in self.to_records()
            ],
        }

    def to_geoparquet(self, url: str, storage_options: Mapping[str, Any] | None = None) -> str:
        """Points (lon/lat, OGC:CRS84) with rank, score, zone coordinates and tile id."""
        from pipelines.query.export import write_points_geoparquet

        recs = self.to_records()
        cols = {k: [r[k] for r in recs] for k in ("rank", "score", "epsg", "x", "y", "tile_id", "time")}
        return write_points_geoparquet(
            url, self.lon, self.lat, CRS.from_user_input("OGC:CRS84"), cols, storage_options
        )


def query_vector(
    emb: Embeddings,
    *,
    lon: float | Sequence[float] | None = None,
    lat: float | Sequence[float] | None = None,
    vectors: np.ndarray | None = None,
    time: TimeLike = None,
    whitening: Whitening | None = None,
) -> np.ndarray:
    """One unit query vector: the normalised mean of the unit vectors at the example locations
    (lon/lat) and/or of the given ``vectors`` (whitened first when ``whitening`` is given)."""
    prep = (lambda v: v) if whitening is None else whitening.apply
    parts = []
    if lon is not None or lat is not None:
        if lon is None or lat is None:
            raise QueryError("give both lon and lat for example locations")
        lo, la = as_points(lon, lat)
        vecs, _ = vectors_at(emb, lo, la, "EPSG:4326", time=time)
        missing = ~np.isfinite(vecs[:, 0])
        if missing.any():
            bad = ", ".join(f"({a:.5f}, {b:.5f})" for a, b in zip(lo[missing], la[missing]))
            w, s, e, n = emb.extent_wgs84(emb.time_index(time))
            raise QueryError(
                f"no embedding at example location(s) {bad} (lon, lat); data covers lon {w:.5f}..{e:.5f}, "
                f"lat {s:.5f}..{n:.5f}"
            )
        parts.append(unit_queries(prep(vecs)))
    if vectors is not None:
        v = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if v.shape[1] != emb.dim:
            raise QueryError(f"query vectors have dim {v.shape[1]}; this version has dim {emb.dim}")
        parts.append(unit_queries(prep(v)))
    if not parts:
        raise QueryError("give example locations (lon/lat) or query vectors")
    return unit_queries(np.concatenate(parts).mean(axis=0))[0]


def _search_group(
    emb: Embeddings,
    epsg: int,
    ti: int,
    refs: list[TileRef],
    q: np.ndarray,
    k: int,
    aoi: tuple[tuple[float, float, float, float], str] | None,
    exclude: tuple[np.ndarray, np.ndarray, float] | None,
    whitening: Whitening | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Top-k of one rectangle of tiles: (scores, rows, cols, vectors searched)."""
    nt = emb.version.tokens_per_tile
    r0 = min(r.row0 for r in refs)
    r1 = max(r.row0 for r in refs) + nt
    c0 = min(r.col0 for r in refs)
    c1 = max(r.col0 for r in refs) + nt
    raw = emb.read_recorded(epsg, ti, slice(r0, r1), slice(c0, c1), decode=False)
    h, w = raw.shape[:2]
    keep = np.zeros((h, w), dtype=bool)
    for r in refs:  # only complete tiles count (a crashed writer may have left a shard behind)
        keep[r.row0 - r0 : r.row0 - r0 + nt, r.col0 - c0 : r.col0 - c0 + nt] = True
    keep &= ~held_by_own_zone(emb, ti, epsg, slice(r0, r1), slice(c0, c1))  # a location counts once
    if aoi is not None or exclude is not None:
        g = emb.grid(epsg)
        xs, ys = g.token_centres(np.arange(r0, r1), np.arange(c0, c1))
        xx, yy = np.meshgrid(xs, ys)
        if aoi is not None:
            (minx, miny, maxx, maxy), aoi_crs = aoi
            ax, ay = Transformer.from_crs(epsg, CRS.from_user_input(aoi_crs), always_xy=True).transform(
                xx, yy
            )
            ax, ay = np.asarray(ax), np.asarray(ay)
            keep &= (ax >= minx) & (ax <= maxx) & (ay >= miny) & (ay <= maxy)
        if exclude is not None:
            lon, lat, radius = exclude
            px, py = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
            for a, b in zip(np.atleast_1d(px), np.atleast_1d(py)):
                keep &= (xx - a) ** 2 + (yy - b) ** 2 > radius**2
    flat = raw.reshape(h * w, -1)
    sel = np.flatnonzero(keep.ravel())
    block = flat[sel]
    s, rr = score_block(block, q[None, :], k, whitening)
    pos = sel[rr[0]]
    n_valid = (
        int(np.count_nonzero(block[:, 0] != NODATA_Q))
        if block.dtype == np.int8
        else int(np.isfinite(block[:, 0].astype(np.float32)).sum())
    )
    return s[0], r0 + pos // w, c0 + pos % w, n_valid


def similar(
    emb: Embeddings,
    *,
    lon: float | Sequence[float] | None = None,
    lat: float | Sequence[float] | None = None,
    vectors: np.ndarray | None = None,
    k: int = 10,
    aoi: str | Sequence[float] | None = None,
    aoi_crs: Any = "EPSG:4326",
    time: TimeLike = None,
    exclude_radius_m: float = 0.0,
    tiles_per_task: int = 64,
    scheduler: Any = None,
    metric: str = "cosine",
    whitening: Whitening | None = None,
) -> SimilarityResult:
    """The ``k`` most similar tokens (cosine) to example locations and/or vectors.

    ``aoi`` (bbox in ``aoi_crs``) limits the search; default: every complete tile of every zone at
    ``time`` (default: latest time with data), each ground location once: a token is left to the zone
    its centre lies in (``held_by_own_zone``), and a token more than half of whose footprint lies in a
    higher-ranked result of another zone is left out and the next one taken (``notes`` counts them;
    :func:`~pipelines.query.twins.once_per_place`).
    ``exclude_radius_m`` drops tokens within that
    distance of the example locations. ``scheduler`` is passed to ``dask.compute`` (e.g.
    ``"threads"``, ``"synchronous"`` or a distributed client's ``get``).

    ``metric="whitened"`` ranks by the cosine of whitened vectors (:class:`Whitening`: centred,
    :data:`WHITEN_AXES` principal axes, unit variance each), fitted on :func:`sample_vectors` of
    this version at ``time`` unless ``whitening`` is given; measured better than the raw cosine
    for both product embeddings (docs/query.md). Scores are then cosines in that space.
    """
    import dask

    if k < 1:
        raise QueryError(f"k must be >= 1, got {k}")
    ti = emb.time_index(time)
    whitening = metric_whitening(emb, ti, metric, whitening)
    q = query_vector(emb, lon=lon, lat=lat, vectors=vectors, time=ti, whitening=whitening)
    aoi_spec: tuple[tuple[float, float, float, float], str] | None = None
    aoi_box = None
    aoi_crs_obj = parse_crs(aoi_crs)
    if aoi is not None:
        aoi_box = parse_bbox(aoi)
        aoi_spec = (aoi_box, aoi_crs_obj.to_wkt())
    exclude = None
    if exclude_radius_m > 0:
        if lon is None or lat is None:
            raise QueryError("exclude_radius_m needs example locations (lon/lat)")
        lo, la = as_points(lon, lat)
        exclude = (lo, la, float(exclude_radius_m))
    nt = emb.version.tokens_per_tile

    def cell(r: TileRef) -> tuple[int, int]:
        return (r.row0 // nt, r.col0 // nt)

    tasks = []
    for epsg, refs in sorted(emb.tiles(ti).items()):
        if aoi_box is not None:
            zb = transform_bbox(aoi_box, aoi_crs_obj, CRS.from_epsg(epsg))
            if zb is None:
                continue
            refs = [
                r
                for r in refs
                if r.bounds[0] < zb[2] and r.bounds[2] > zb[0] and r.bounds[1] < zb[3] and r.bounds[3] > zb[1]
            ]
        for group in square_groups(refs, cell, math.isqrt(tiles_per_task)):  # one read per rectangle
            # a partial is opaque to Dask: dataclass arguments would otherwise be traversed (slow, and
            # the Embeddings' lazy datasets would be computed)
            task = functools.partial(
                _search_group, emb, epsg, ti, group, q, candidates_per_task(k), aoi_spec, exclude, whitening
            )
            tasks.append((epsg, dask.delayed(task, pure=False)()))
    if not tasks:
        from pipelines.query.select import _extent_message

        raise QueryError(
            f"AOI {aoi_box} ({crs_label(aoi_crs_obj)}) does not intersect the data; {_extent_message(emb, ti)}"
        )
    results = dask.compute(*[t for _, t in tasks], scheduler=scheduler)
    scores = np.concatenate([r[0] for r in results])
    rows = np.concatenate([r[1] for r in results])
    cols = np.concatenate([r[2] for r in results])
    epsgs = np.concatenate([np.full(r[0].size, e, np.int64) for (e, _), r in zip(tasks, results)])
    searched = int(sum(r[3] for r in results))
    lattices = {int(z): Lattice.of_tokens(emb.grid(int(z))) for z in np.unique(epsgs)}
    # each place once (twins.py); every task kept enough candidates for that: candidates_per_task
    best, twins = best_once_per_place(scores, np.column_stack([epsgs, rows, cols]), lattices, k)
    scores, rows, cols, epsgs = scores[best], rows[best], cols[best], epsgs[best]
    xs = np.empty(best.size)
    ys = np.empty(best.size)
    lons = np.empty(best.size)
    lats = np.empty(best.size)
    tile_ids = np.full(best.size, "", dtype=object)
    nt = emb.version.tokens_per_tile
    tiles = emb.tiles(ti)
    for zone in np.unique(epsgs):  # one transform and one tile index per zone, not per result
        at = np.flatnonzero(epsgs == zone)
        xs[at], ys[at] = emb.grid(int(zone)).token_centres(rows[at], cols[at])
        lons[at], lats[at] = Transformer.from_crs(int(zone), 4326, always_xy=True).transform(xs[at], ys[at])
        by_cell: dict[tuple[int, int], str] = {}
        for r in tiles[int(zone)]:
            by_cell.setdefault((r.row0 // nt, r.col0 // nt), r.tile_id)
        tile_ids[at] = [by_cell.get((int(rr) // nt, int(cc) // nt), "") for rr, cc in zip(rows[at], cols[at])]
    notes = twin_notes(best.size, k, twins, "candidate tokens in the searched area", "token")
    if whitening is not None and emb.version.quantisation == "int8-sqrt":
        notes.append(INT8_WHITENED_NOTE)
    return SimilarityResult(
        scores=scores.astype(np.float32),
        epsg=epsgs,
        x=xs,
        y=ys,
        lon=lons,
        lat=lats,
        row=rows,
        col=cols,
        tile_id=[str(t) for t in tile_ids],
        time=emb.times[ti],
        version=emb.name,
        query=q,
        searched_vectors=searched,
        notes=notes,
        metric=metric,
    )


def describe_result(res: SimilarityResult, url: str = "") -> str:
    head = f"top {len(res)} similar to the query in {res.version} at {res.time}"
    if res.metric != "cosine":
        head += f" ({res.metric} cosine)"
    if url:
        head += f" ({storage.redact_url(url)})"
    lines = [head, f"{'rank':>4} {'score':>7} {'lon':>10} {'lat':>9}  epsg   tile"]
    for r in res.to_records():
        lines.append(
            f"{r['rank']:>4} {r['score']:7.4f} {r['lon']:10.5f} {r['lat']:9.5f}  {r['epsg']}  {r['tile_id']}"
        )
    lines += [f"note: {n}" for n in res.notes]
    return "\n".join(lines)
