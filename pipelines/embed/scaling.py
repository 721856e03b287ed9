"""Raster values -> reflectance: the one rule of ``aom embed-raster`` and ``aom eval`` GeoTIFFs.

``reflectance = value * scale + offset`` per band, with ``scale``/``offset`` taken from, in order:

1. the request (``--scale`` / ``--offset``; one given, the other from the file's tags or 1 / 0;
   a finite scale > 0 and a finite offset, :func:`check_scaling_options`);
2. the raster's own scale/offset tags (GDAL ``scales``/``offsets``), when any differs from 1 / 0;
3. otherwise, an integer raster is taken as reflectance x 10000 (``INTEGER_DEFAULT_SCALE`` = 1e-4,
   the convention of Sentinel-2 L2A, HLS and most analysis-ready products), with a warning, since a
   wrong guess silently gives wrong embeddings;
4. a floating-point raster is taken as reflectance already (1 / 0).

The decision (:class:`RasterScaling`, ``source`` says which rule) is recorded in the output's
metadata (``AOM_SCALING`` tag / attribute of ``embed-raster``, the dataset description of ``eval``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.errors import check_number

log = logging.getLogger(__name__)

INTEGER_DEFAULT_SCALE = 1e-4
"""Scale of an integer raster without scale/offset tags: reflectance x 10000."""

SOURCES = ("options", "file-tags", "integer-default", "float-identity")


@dataclass(frozen=True)
class RasterScaling:
    """How one raster's values become reflectance."""

    scale: tuple[float, ...]
    """Per band multiplier."""
    offset: tuple[float, ...]
    """Per band addend (after the multiplication)."""
    source: str
    """Which rule decided: one of ``SOURCES`` (see the module docstring)."""

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """``[C, H, W]`` values -> reflectance (float32; NaN stays NaN)."""
        sc = np.asarray(self.scale, np.float32)[:, None, None]
        of = np.asarray(self.offset, np.float32)[:, None, None]
        return (pixels.astype(np.float32, copy=False) * sc + of).astype(np.float32, copy=False)

    def to_dict(self) -> dict[str, Any]:
        return {"scale": list(self.scale), "offset": list(self.offset), "source": self.source}

    def describe(self) -> str:
        scales, offsets = sorted(set(self.scale)), sorted(set(self.offset))
        return f"DN * {'/'.join(f'{v:g}' for v in scales)} + {'/'.join(f'{v:g}' for v in offsets)} ({self.source})"


def check_scaling_options(scale: float | None, offset: float | None) -> None:
    """``--scale`` a finite number > 0, ``--offset`` a finite number (None: not given); else
    :class:`~pipelines.errors.InputError`. Called by :func:`raster_scaling` and, before any work, by
    the verbs that take them (``embed-raster``, ``eval``)."""
    check_number("scale (--scale)", scale, above=0)
    check_number("offset (--offset)", offset)


def raster_scaling(
    count: int,
    dtype: str | np.dtype[Any],
    file_scales: Sequence[float | None] = (),
    file_offsets: Sequence[float | None] = (),
    scale: float | None = None,
    offset: float | None = None,
    name: str = "the raster",
) -> RasterScaling:
    """The scaling of a ``count``-band raster of ``dtype`` (rules in the module docstring)."""
    check_scaling_options(scale, offset)

    def per_band(values: Sequence[float | None], default: float) -> tuple[float, ...]:
        vals = [float(v) if v is not None else default for v in list(values)[:count]]
        return tuple(vals + [default] * (count - len(vals)))

    tag_scale, tag_offset = per_band(file_scales, 1.0), per_band(file_offsets, 0.0)
    if scale is not None or offset is not None:
        sc = (float(scale),) * count if scale is not None else tag_scale
        of = (float(offset),) * count if offset is not None else tag_offset
        return RasterScaling(sc, of, "options")
    if any(v != 1.0 for v in tag_scale) or any(v != 0.0 for v in tag_offset):
        return RasterScaling(tag_scale, tag_offset, "file-tags")
    if np.issubdtype(np.dtype(dtype), np.integer):
        log.warning(
            "%s: %s raster without scale/offset tags: taken as reflectance x 10000 (scale %g); give "
            "--scale/--offset if it is not",
            name,
            np.dtype(dtype).name,
            INTEGER_DEFAULT_SCALE,
        )
        return RasterScaling((INTEGER_DEFAULT_SCALE,) * count, (0.0,) * count, "integer-default")
    return RasterScaling((1.0,) * count, (0.0,) * count, "float-identity")
