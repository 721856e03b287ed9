"""Where a GSD group's pixel lattice lies: on the sensor's native pixel grid, decided by evidence.

Every group of a tile has ``ceil(tile / gsd)`` pixels a side (:meth:`pipelines.tiling.Tile.geobox`).
Its lattice is moved by less than a pixel, ``shift_m = (dx, dy)`` with each component in
``[-gsd/2, gsd/2)``, so that its pixel edges coincide with those of the items it is built from:
odc-stac then pastes the native pixels (nearest onto coincident pixel centres: no pixel is moved,
no value interpolated). The evidence is each item's own ``proj:transform`` of the group's band
assets, read in the tile's CRS:

* an asset in the tile's EPSG, north-up, with pixels of exactly the group's GSD, has edges at
  ``(c - left) mod gsd``, ``(f - bottom) mod gsd`` from the tile origin;
* an asset in the same UTM zone's other hemisphere (Landsat scenes south of the equator come in
  north-zone CRSs with negative northings) is the same grid shifted by the 10 000 000 m false
  northing, so its edges are read after adding (or removing) that (the reprojection between the
  two is a pure translation: nearest onto coincident centres is exact);
* anything else (another zone, another CRS, another pixel size) is no evidence: it is resampled.

The offset most items agree on wins (ties: the tile origin, then the smallest offset); items on
another grid are resampled onto it, as before, and the group's ``lattice`` attribute says so.
Without evidence the lattice passes through the tile origin (the layout-1 rule). Measured on the
recorded real items (``tests/pipelines/cubes/test_lattice.py``): Landsat Collection 2 edges at 15 m
(shift -15, -15 m on a tile of the scene's CRS; -15, -5 m for a southern scene in a north-zone CRS),
Sentinel-2 60 m bands of MGRS tiles with origin northing 40 (mod 60) m (0, -20 m), HLS south of the
equator in a north-zone CRS (0, 10 m), Sentinel-2 10/20 m on the tile lattice (0, 0).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipelines.search import item_epsg
from pipelines.tiling import SOUTH_FALSE_NORTHING, Tile, TileError, zone_of_epsg

_MM = 3  # offsets are compared in millimetres (float noise in proj:transform is far below that)


@dataclass(frozen=True)
class GroupLattice:
    """The pixel lattice of one (tile, collection, GSD) group."""

    gsd_m: float
    """Pixel size (m)."""
    shift_m: tuple[float, float]
    """(dx, dy): how far the lattice lies from the one through the tile origin, each in [-gsd/2, gsd/2)."""
    basis: str
    """Why this lattice (the evidence, or why there was none), stored as the group's ``lattice`` attribute."""

    def attrs(self) -> dict[str, Any]:
        """The group attributes that record it (``lattice_shift_m``, ``lattice``)."""
        return {"lattice_shift_m": [self.shift_m[0], self.shift_m[1]], "lattice": self.basis}


def lattice_shift(attrs: Mapping[str, Any]) -> tuple[float, float]:
    """A stored group's ``lattice_shift_m`` (0, 0 for groups written before layout 2: tile origin)."""
    v = attrs.get("lattice_shift_m")
    return (float(v[0]), float(v[1])) if v is not None and len(v) == 2 else (0.0, 0.0)


def asset_offset(
    tile: Tile, gsd: float, item: Mapping[str, Any], asset_key: str
) -> tuple[float, float] | str:
    """(x, y) of the asset's pixel edges from the tile origin modulo ``gsd`` (metres, in the tile's
    CRS), or the reason the asset says nothing about the lattice."""
    asset = (item.get("assets") or {}).get(asset_key) or {}
    props = item.get("properties") or {}
    t = asset.get("proj:transform") or props.get("proj:transform")
    epsg = item_epsg(item, asset_key)  # the asset's own proj:code / proj:epsg, else the item's
    if t is None or len(t) < 6 or epsg is None:
        return "no proj:transform / EPSG code"
    a, b, c, d, e, f = (float(v) for v in t[:6])
    if b != 0 or d != 0 or not math.isclose(a, gsd, abs_tol=1e-6) or not math.isclose(-e, gsd, abs_tol=1e-6):
        return f"pixels of {a:g} x {-e:g} m, not a north-up {gsd:g} m grid"
    if epsg != tile.epsg:
        try:
            zone = zone_of_epsg(epsg)[0]
        except TileError:
            return f"EPSG:{epsg} is not a UTM zone"
        if zone != tile.zone:
            return f"EPSG:{epsg} is another UTM zone than the tile's EPSG:{tile.epsg}"
        f += SOUTH_FALSE_NORTHING if tile.south else -SOUTH_FALSE_NORTHING  # same zone, other hemisphere
    left, bottom = tile.bounds[0], tile.bounds[1]
    return (round((c - left) % gsd, _MM) % gsd, round((f - bottom) % gsd, _MM) % gsd)


def native_lattice(
    tile: Tile, gsd: float, items: Sequence[Mapping[str, Any]], band_assets: Sequence[str]
) -> GroupLattice:
    """The lattice of a group built from ``items`` (STAC item dicts) reading ``band_assets``."""
    votes: Counter[tuple[float, float]] = Counter()
    other: list[str] = []
    for item in items:
        seen = {asset_offset(tile, gsd, item, k) for k in band_assets}
        grids = {s for s in seen if isinstance(s, tuple)}
        votes.update(grids)
        if not grids:
            other.append(f"{item.get('id')} ({sorted(str(s) for s in seen)[0]})")
    n = len(items)
    if not votes:
        why = "; ".join(other[:3]) + (f"; ... ({len(other)} items)" if len(other) > 3 else "")
        return GroupLattice(
            gsd, (0.0, 0.0), f"tile origin: no item on a {gsd:g} m grid in the tile's zone: {why}"
        )
    best = max(votes.values())
    ox, oy = min((o for o, k in votes.items() if k == best), key=lambda o: (o != (0.0, 0.0), o))
    shift = (ox if ox < gsd / 2 else ox - gsd, oy if oy < gsd / 2 else oy - gsd)
    basis = (
        f"native: pixel edges of {best} of {n} items at ({ox:g}, {oy:g}) m from the tile origin mod {gsd:g} m"
    )
    if best < n:
        basis += "; the others are resampled onto it"
    return GroupLattice(gsd, (float(shift[0]) + 0.0, float(shift[1]) + 0.0), basis)
