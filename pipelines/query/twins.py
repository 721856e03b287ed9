"""Each place once: leave out a result whose footprint mostly lies in a higher-ranked result of another zone.

Embeddings are stored per UTM zone and the edge tiles of adjacent zones overlap, so the same ground can be
stored twice. :func:`once_per_place` walks a ranked list of cells (tokens or tiles) of several zones and
leaves out each cell more than :data:`TWIN_OVERLAP` of whose footprint lies in one higher-ranked kept
cell of another zone (its twin), until ``k`` are kept. Used by :func:`pipelines.query.similar` (tokens)
and :func:`pipelines.query.similar_tiles` (tiles).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pyproj import Transformer

if TYPE_CHECKING:
    from pipelines.embeddings import ZoneGrid

TWIN_OVERLAP = 0.5
"""A cell whose footprint overlaps a higher-ranked result of another zone by more than this fraction of
its area is that result's twin (edge tiles of adjacent UTM zones cover the same ground)."""


@dataclass(frozen=True)
class Lattice:
    """The square cells of one zone's grid, north-up: cell ``(row, col)`` spans
    ``x0 + col * size .. x0 + (col + 1) * size`` and ``y1 - (row + 1) * size .. y1 - row * size``."""

    epsg: int
    """the zone's CRS"""
    x0: float
    """west edge of column 0 (m)"""
    y1: float
    """north edge of row 0 (m)"""
    size: float
    """cell side (m)"""

    @classmethod
    def of_tokens(cls, grid: ZoneGrid) -> Lattice:
        """The token cells of a zone's embedding grid."""
        return cls(int(grid.epsg), float(grid.x0), float(grid.y1), float(grid.token_ground_m))

    def corners(self, row: int, col: int) -> tuple[np.ndarray, np.ndarray]:
        """The 4 corners ``([4], [4])`` of one cell, in the zone's CRS."""
        x = self.x0 + (col + np.array([0.0, 1.0, 1.0, 0.0])) * self.size
        y = self.y1 - (row + np.array([1.0, 1.0, 0.0, 0.0])) * self.size
        return x, y


def once_per_place(keys: np.ndarray, lattices: Mapping[int, Lattice], k: int) -> tuple[np.ndarray, int]:
    """The first ``k`` rows of ``keys`` (``[n, 3]`` zone, row, col; best first) without twins.

    A cell is left out when more than :data:`TWIN_OVERLAP` of its footprint (its corners transformed to
    the other zone's CRS) lies in one higher-ranked kept cell of another zone; cells of one zone never
    overlap. Only kept cells of a neighbouring zone (:func:`may_share_ground`) within one cell of its
    centre there are compared (a cell's half diagonal is shorter than a cell), so cells away from a zone
    border cost a lookup each.
    Returns the kept row indices ``[<= k]`` and how many were left out on the way.
    """
    kept: list[int] = []
    held: dict[int, set[tuple[int, int]]] = {}  # kept (row, col) per zone
    to_zone: dict[tuple[int, int], Transformer] = {}
    twins = 0
    start, n = 0, int(keys.shape[0])
    while start < n and len(kept) < k:
        # cells are placed in the other zones' lattices a chunk at a time (one transform per zone pair)
        stop = min(n, start + 2 * (k - len(kept)) + 16)
        chunk = keys[start:stop]
        zones = sorted({int(z) for z in chunk[:, 0]} | set(held))
        place: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # other zone -> rows, cols, ok
        for zz in zones:
            lz = lattices[zz]
            rr = np.zeros(len(chunk), np.int64)
            cc = np.zeros(len(chunk), np.int64)
            ok = np.zeros(len(chunk), bool)
            for z in {int(v) for v in chunk[:, 0]} - {zz}:
                if not may_share_ground(z, zz):
                    continue
                m = chunk[:, 0] == z
                own = lattices[z]
                cx = own.x0 + (chunk[m, 2] + 0.5) * own.size
                cy = own.y1 - (chunk[m, 1] + 0.5) * own.size
                if (z, zz) not in to_zone:
                    to_zone[z, zz] = Transformer.from_crs(z, zz, always_xy=True)
                px, py = (np.asarray(a, np.float64) for a in to_zone[z, zz].transform(cx, cy))
                fin = np.isfinite(px) & np.isfinite(py)  # far outside a zone the projection gives inf
                px, py = np.where(fin, px, lz.x0), np.where(fin, py, lz.y1)
                cc[m] = np.floor((px - lz.x0) / lz.size).astype(np.int64)
                rr[m] = np.floor((lz.y1 - py) / lz.size).astype(np.int64)
                ok[m] = fin
            place[zz] = (rr, cc, ok)
        for j, (z, r, c) in enumerate(chunk.tolist()):
            if len(kept) == k:
                break
            if _is_twin(int(z), int(r), int(c), j, held, place, lattices, to_zone):
                twins += 1
                continue
            kept.append(start + j)
            held.setdefault(int(z), set()).add((int(r), int(c)))
        start = stop
    return np.array(kept, np.int64), twins


def best_once_per_place(
    scores: np.ndarray, keys: np.ndarray, lattices: Mapping[int, Lattice], k: int
) -> tuple[np.ndarray, int]:
    """Indices of the best ``k`` of ``scores [n]`` (descending; ties: lower zone, row, col of ``keys
    [n, 3]`` first; non-finite scores never) without twins (:func:`once_per_place`), and how many twins
    were left out."""
    finite = np.flatnonzero(np.isfinite(scores))
    order = finite[np.lexsort((keys[finite, 2], keys[finite, 1], keys[finite, 0], -scores[finite]))]
    kept, twins = once_per_place(keys[order], lattices, k)
    return order[kept], twins


def may_share_ground(a: int, b: int) -> bool:
    """False for two UTM zones (EPSG 326xx / 327xx) that are not neighbours: a zone's tiles reach at most
    one tile past its 6 degree band, so only cells of zones whose numbers differ by at most 1 (either
    hemisphere; 1 and 60 meet at the antimeridian) can cover the same ground. True for any other CRS."""
    if not all(32601 <= e <= 32660 or 32701 <= e <= 32760 for e in (a, b)):
        return True
    d = abs(a % 100 - b % 100)
    return min(d, 60 - d) <= 1


def _is_twin(
    z: int,
    r: int,
    c: int,
    j: int,
    held: Mapping[int, set[tuple[int, int]]],
    place: Mapping[int, tuple[np.ndarray, np.ndarray, np.ndarray]],
    lattices: Mapping[int, Lattice],
    to_zone: Mapping[tuple[int, int], Transformer],
) -> bool:
    """True when cell ``(r, c)`` of zone ``z`` (row ``j`` of the chunk ``place`` was computed for) is
    the twin of a ``held`` cell of another zone."""
    import shapely as shp

    for zz, cells in held.items():
        if zz == z or not place[zz][2][j]:
            continue
        r0, c0 = int(place[zz][0][j]), int(place[zz][1][j])
        near = [(a, b) for a in (r0 - 1, r0, r0 + 1) for b in (c0 - 1, c0, c0 + 1) if (a, b) in cells]
        if not near:
            continue
        fx, fy = to_zone[z, zz].transform(*lattices[z].corners(r, c))
        mine = shp.Polygon(np.column_stack([fx, fy]))
        lz = lattices[zz]
        for a, b in near:
            ox, oy = lz.corners(a, b)
            other = shp.box(ox[0], oy[0], ox[1], oy[2])
            if mine.intersection(other).area > TWIN_OVERLAP * mine.area:
                return True
    return False


def candidates_per_task(k: int) -> int:
    """How many candidates each task of a search must keep so that :func:`once_per_place` over the
    merged candidates gives exactly the ``k`` results it gives over every token: ``2 k``.

    Why: let ``p`` be the position, in the ranking of every token, of the ``k``-th kept result. The walk
    decides each position from the positions before it only, so it is exact when the merged candidates
    hold every token ranked up to ``p``; they do when no task has more than it keeps among them (each
    task ranks its own tokens in the same order, ties included). A task's tokens up to ``p`` are kept
    ones (``kept_T``) and twins left out; each twin lies more than half in a kept result of another
    zone, and one result covers more than half of at most 2 disjoint cells of one zone (3 would need
    cells under 2/3 of its area: adjacent UTM zones' scale factors differ by far less near their
    border). So a task has at most ``kept_T + 2 (k - kept_T) <= 2 k`` tokens up to ``p``. When fewer
    than ``k`` results exist the same count bounds every task's tokens, so none was cut off. (With one
    twin per result, as for equal cells, ``k`` would do; ``2 k`` costs a larger top-k per task.)"""
    return 2 * k


def twin_notes(n: int, k: int, twins: int, found: str, unit: str) -> list[str]:
    """A search's notes about its count: ``only {n} {found}`` when fewer than ``k`` came back (once
    their twins are left out, when some were), and how many cells (``unit``) :func:`once_per_place` left
    out."""
    notes = [] if n == k else [f"only {n} {found}" + (" once their twins are left out" if twins else "")]
    if twins:
        notes.append(
            f"{twins} {unit}(s) left out: more than half of each lies in a higher-ranked {unit} of another "
            "UTM zone (the same ground)"
        )
    return notes
