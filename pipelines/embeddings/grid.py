"""The per-UTM-zone token grid of an embeddings version: one fixed lattice per zone and token size."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from pipelines.embeddings.format import ZONE_X_RANGE, ZONE_Y_RANGE, EmbeddingsStoreError

# ------------------------------------------------------------------------------------------
# Zone grid geometry


@dataclass(frozen=True)
class ZoneGrid:
    """The fixed token grid of one UTM zone for one version (north-up: row 0 is the northern edge)."""

    epsg: int
    token_ground_m: float
    tile_size_m: float

    @property
    def x0(self) -> float:
        return math.floor(ZONE_X_RANGE[0] / self.tile_size_m) * self.tile_size_m

    @property
    def x1(self) -> float:
        return math.ceil(ZONE_X_RANGE[1] / self.tile_size_m) * self.tile_size_m

    @property
    def y0(self) -> float:
        return math.floor(ZONE_Y_RANGE[0] / self.tile_size_m) * self.tile_size_m

    @property
    def y1(self) -> float:
        return math.ceil(ZONE_Y_RANGE[1] / self.tile_size_m) * self.tile_size_m

    @property
    def tokens_per_tile(self) -> int:
        return round(self.tile_size_m / self.token_ground_m)

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx) tokens."""
        r = self.token_ground_m
        return round((self.y1 - self.y0) / r), round((self.x1 - self.x0) / r)

    @property
    def tile_shape(self) -> tuple[int, int]:
        """(ny, nx) tiles."""
        s = self.tile_size_m
        return round((self.y1 - self.y0) / s), round((self.x1 - self.x0) / s)

    @property
    def geotransform(self) -> tuple[float, float, float, float, float, float]:
        """GDAL order: (x0, dx, 0, ytop, 0, -dy)."""
        return (self.x0, self.token_ground_m, 0.0, self.y1, 0.0, -self.token_ground_m)

    def x_coords(self) -> np.ndarray:
        return self.x0 + (np.arange(self.shape[1], dtype=np.float64) + 0.5) * self.token_ground_m

    def y_coords(self) -> np.ndarray:
        return self.y1 - (np.arange(self.shape[0], dtype=np.float64) + 0.5) * self.token_ground_m

    def token_centres(self, rows: Any, cols: Any) -> tuple[Any, Any]:
        """(x, y) in metres of the centres of the tokens at ``rows``, ``cols`` (numbers or arrays,
        fractional allowed)."""
        return (
            self.x0 + (np.asarray(cols, dtype=np.float64) + 0.5) * self.token_ground_m,
            self.y1 - (np.asarray(rows, dtype=np.float64) + 0.5) * self.token_ground_m,
        )

    def tile_x_coords(self) -> np.ndarray:
        """Tile centres (m), west to east."""
        return self.x0 + (np.arange(self.tile_shape[1], dtype=np.float64) + 0.5) * self.tile_size_m

    def tile_y_coords(self) -> np.ndarray:
        """Tile centres (m), north to south."""
        return self.y1 - (np.arange(self.tile_shape[0], dtype=np.float64) + 0.5) * self.tile_size_m

    def tile_window(self, bounds: Sequence[float]) -> tuple[int, int, int, int]:
        """(row0, row1, col0, col1) token window of tile ``bounds``; raises if not on the tile grid."""
        minx, miny, maxx, maxy = (float(b) for b in bounds)
        s, r = self.tile_size_m, self.token_ground_m
        if not (math.isclose(maxx - minx, s) and math.isclose(maxy - miny, s)):
            raise EmbeddingsStoreError(
                f"tile bounds {tuple(bounds)} are {maxx - minx:g} x {maxy - miny:g} m; this version's "
                f"tiles are {s:g} m (tile_size_m)"
            )
        for v in (minx, maxy):
            if abs(v / s - round(v / s)) > 1e-6:
                raise EmbeddingsStoreError(f"tile bounds {tuple(bounds)} are not on the {s:g} m tile grid")
        if minx < self.x0 - 1e-6 or maxx > self.x1 + 1e-6 or miny < self.y0 - 1e-6 or maxy > self.y1 + 1e-6:
            raise EmbeddingsStoreError(
                f"tile bounds {tuple(bounds)} fall outside the zone grid x {self.x0:g}..{self.x1:g}, "
                f"y {self.y0:g}..{self.y1:g} m (EPSG:{self.epsg})"
            )
        row0 = round((self.y1 - maxy) / r)
        col0 = round((minx - self.x0) / r)
        n = self.tokens_per_tile
        return row0, row0 + n, col0, col0 + n

    def tile_index(self, bounds: Sequence[float]) -> tuple[int, int]:
        """(tile_row, tile_col) of a tile in the ``pooled`` array."""
        row0, _, col0, _ = self.tile_window(bounds)
        n = self.tokens_per_tile
        return row0 // n, col0 // n


def check_epsg(epsg: int) -> int:
    epsg = int(epsg)
    if not (32601 <= epsg <= 32660 or 32701 <= epsg <= 32760):
        raise EmbeddingsStoreError(
            f"EPSG:{epsg} is not a WGS 84 / UTM zone; valid codes are 32601-32660 (north) and 32701-32760 (south)"
        )
    return epsg


@lru_cache(maxsize=128)
def crs_wkt(epsg: int) -> str:
    import pyproj

    return str(pyproj.CRS.from_epsg(epsg).to_wkt())
