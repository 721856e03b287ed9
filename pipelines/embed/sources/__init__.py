"""Where embedding inputs come from: cube stores or STAC items, read as padded, composited tiles.

A *padded tile* is a tile plus ``margin_m`` metres on every side (the chip-border context, see
:mod:`pipelines.embed.chips`), with one float32 array ``[C, H, W]`` per (collection, GSD) group: the
per-pixel **median of the valid observations in the period** (cloud, shadow and nodata are NaN in
the inputs, so they never enter the median). Reading is streamed in strips of rows (all times, all
bands of the group, ``strip_mb`` at most), so memory stays bounded by the padded tile plus one strip
whatever the number of acquisitions.

* :class:`CubeSource`: a cube store (``pipelines.cubes``). The margin comes from the neighbouring
  tiles' cubes when they are complete, else it is NaN (recorded per tile).
* :class:`CatalogSource`: STAC items, assembled on the fly with ``pipelines.cubes.assemble_tile``
  over the padded bounds, lazily in 256 px blocks, so only the blocks of the current strip are read.

Modules: :mod:`~pipelines.embed.sources.periods` (``--datetime`` periods),
:mod:`~pipelines.embed.sources.padded` (padded tiles, median composites),
:mod:`~pipelines.embed.sources.cubes` (:class:`CubeSource`, block reads) and
:mod:`~pipelines.embed.sources.catalog` (:class:`CatalogSource`).
"""

from pipelines.embed.sources.catalog import CatalogSource
from pipelines.embed.sources.cubes import BLOCK_SIDE_MAX, CubeSource
from pipelines.embed.sources.padded import (
    PaddedTile,
    composite_into,
    composite_raw_into,
    padded_bounds,
    padded_tile_obj,
)
from pipelines.embed.sources.periods import Period, parse_periods, search_interval

__all__ = [
    "BLOCK_SIDE_MAX",
    "CatalogSource",
    "CubeSource",
    "PaddedTile",
    "Period",
    "composite_into",
    "composite_raw_into",
    "padded_bounds",
    "padded_tile_obj",
    "parse_periods",
    "search_interval",
]
