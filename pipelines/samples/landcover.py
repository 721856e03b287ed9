"""Seeded land-cover fields and their reflectance spectra, for the synthetic products.

Classes come from two smooth random fields (wetness, use); a class's reflectance in any band is its spectrum
integrated over the band's (centre, FWHM), so every sensor of the registry sees the same ground.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
from affine import Affine
from pyproj import CRS, Transformer

from pipelines.samples.stac_fields import apply_transform
from pipelines.samples.synthetic_spec import SyntheticSpec

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Ground truth: land-cover classes and their spectra

LANDCOVER_CLASSES: tuple[str, ...] = ("water", "vegetation", "bare_soil", "urban", "snow")

_KNOTS_NM = (400, 443, 490, 560, 620, 665, 705, 740, 783, 842, 865, 945, 1240, 1340, 1375, 1410, 1610, 2200, 2500)  # fmt: skip


_SPECTRA_VALUES = {
    # Surface reflectance at the knots above (typical library spectra, simplified). 1375 nm is the
    # strong water-vapour band (cirrus channels): near-dark at the surface for every class.
    "water": (0.07, 0.065, 0.06, 0.05, 0.035, 0.025, 0.02, 0.013, 0.01, 0.008, 0.007, 0.005, 0.004, 0.003, 0.002, 0.002, 0.003, 0.002, 0.002),
    "vegetation": (0.03, 0.03, 0.04, 0.09, 0.06, 0.04, 0.10, 0.28, 0.37, 0.41, 0.42, 0.41, 0.36, 0.30, 0.02, 0.05, 0.23, 0.11, 0.06),
    "bare_soil": (0.08, 0.10, 0.13, 0.18, 0.22, 0.24, 0.26, 0.28, 0.29, 0.30, 0.31, 0.32, 0.35, 0.36, 0.03, 0.10, 0.38, 0.33, 0.28),
    "urban": (0.10, 0.11, 0.12, 0.14, 0.16, 0.17, 0.18, 0.19, 0.20, 0.21, 0.21, 0.22, 0.23, 0.24, 0.02, 0.08, 0.25, 0.22, 0.20),
    "snow": (0.96, 0.95, 0.94, 0.92, 0.90, 0.88, 0.86, 0.84, 0.80, 0.75, 0.72, 0.60, 0.35, 0.20, 0.02, 0.05, 0.08, 0.05, 0.03),
}  # fmt: skip


LANDCOVER_SPECTRA: Mapping[str, tuple[tuple[float, float], ...]] = MappingProxyType(
    {name: tuple(zip((float(k) for k in _KNOTS_NM), vals)) for name, vals in _SPECTRA_VALUES.items()}
)

CLOUD_SPECTRUM: tuple[tuple[float, float], ...] = tuple(
    zip(
        (400.0, 1000.0, 1375.0, 1610.0, 2200.0, 2500.0),
        (0.72, 0.70, 0.62, 0.55, 0.42, 0.38),
    )
)


def _spectrum_band(knots: Sequence[tuple[float, float]], center_nm: float, fwhm_nm: float) -> float:
    wl = np.array([k[0] for k in knots])
    refl = np.array([k[1] for k in knots])
    samples = np.linspace(center_nm - fwhm_nm / 2, center_nm + fwhm_nm / 2, 9)
    return float(np.mean(np.interp(samples, wl, refl)))


def band_reflectance(landcover: str | int, center_nm: float, fwhm_nm: float = 0.0) -> float:
    """Mean reflectance of a land-cover class over a band (box response ``center ± fwhm/2``)."""
    name = LANDCOVER_CLASSES[landcover] if isinstance(landcover, int) else landcover
    return _spectrum_band(LANDCOVER_SPECTRA[name], center_nm, fwhm_nm)


# ---------------------------------------------------------------------------------------------
# Smooth random fields in geographic space


@dataclass(frozen=True)
class _Field:
    """Sum of random plane waves: a smooth, stationary, unit-variance field of (x_km, y_km)."""

    kx: np.ndarray
    ky: np.ndarray
    phase: np.ndarray

    @classmethod
    def make(cls, key: Sequence[int], n: int, wavelength_km: tuple[float, float]) -> _Field:
        rng = np.random.default_rng(list(key))
        wl = np.exp(rng.uniform(np.log(wavelength_km[0]), np.log(wavelength_km[1]), n))
        theta = rng.uniform(0.0, np.pi, n)
        k = 2 * np.pi / wl
        return cls(kx=k * np.cos(theta), ky=k * np.sin(theta), phase=rng.uniform(0, 2 * np.pi, n))

    def __call__(self, x_km: np.ndarray, y_km: np.ndarray) -> np.ndarray:
        dtype = np.result_type(x_km, y_km)
        out = np.zeros(np.shape(x_km), dtype=dtype)
        for kx, ky, ph in zip(self.kx.astype(dtype), self.ky.astype(dtype), self.phase.astype(dtype)):
            out += np.cos(kx * x_km + ky * y_km + ph)
        return out * dtype.type(math.sqrt(2.0 / len(self.kx)))


_STREAM_LANDCOVER_A = 11


_STREAM_LANDCOVER_B = 12


_STREAM_TEXTURE = 13


_STREAM_CLOUD = 14


_STREAM_NOISE = 15


def _local_km(spec: SyntheticSpec, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = (lon - spec.center_lon) * 111.320 * math.cos(math.radians(spec.center_lat))
    y = (lat - spec.center_lat) * 110.574
    return x, y


_WETNESS_WAVELENGTHS = (1.0, 6.0)


_USE_WAVELENGTHS = (0.5, 3.0)


def _classes_from_fields(wetness: np.ndarray, use: np.ndarray) -> np.ndarray:
    cls = np.full(np.shape(wetness), LANDCOVER_CLASSES.index("bare_soil"), dtype=np.uint8)
    cls[use < -0.25] = LANDCOVER_CLASSES.index("vegetation")
    cls[use > 0.9] = LANDCOVER_CLASSES.index("urban")
    cls[wetness < -1.0] = LANDCOVER_CLASSES.index("water")
    cls[wetness > 1.35] = LANDCOVER_CLASSES.index("snow")
    return cls


def _classify(spec: SyntheticSpec, x_km: np.ndarray, y_km: np.ndarray) -> np.ndarray:
    wetness = _Field.make((spec.seed, _STREAM_LANDCOVER_A), 32, _WETNESS_WAVELENGTHS)(x_km, y_km)
    use = _Field.make((spec.seed, _STREAM_LANDCOVER_B), 32, _USE_WAVELENGTHS)(x_km, y_km)
    return _classes_from_fields(wetness, use)


def _pixel_centres(transform: Affine, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.meshgrid(np.arange(shape[0]) + 0.5, np.arange(shape[1]) + 0.5, indexing="ij")
    xs, ys = apply_transform(transform, cols, rows)
    return np.asarray(xs), np.asarray(ys)


def _grid_km(
    spec: SyntheticSpec, crs: Any, transform: Affine, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = _pixel_centres(transform, shape)
    to_wgs84 = Transformer.from_crs(CRS.from_user_input(crs), CRS.from_epsg(4326), always_xy=True)
    lon, lat = to_wgs84.transform(xs, ys)
    return _local_km(spec, np.asarray(lon), np.asarray(lat))


def generate_landcover(
    spec: SyntheticSpec,
    area: Any,
    crs: Any = None,
    resolution: float | tuple[float, float] | None = None,
) -> np.ndarray:
    """Ground-truth land-cover class indices (uint8, into :data:`LANDCOVER_CLASSES`) on a grid.

    ``area`` is an odc-geo ``GeoBox`` (anything with ``.crs``, ``.affine`` and ``.shape``), or bounds
    ``(left, bottom, right, top)`` in ``crs`` with pixel size ``resolution``. Classes are sampled at
    pixel centres; the map is the same whatever the CRS, so grids in any zone agree on the ground.
    """
    if hasattr(area, "affine") and hasattr(area, "shape") and hasattr(area, "crs"):
        transform = area.affine
        shape = (int(area.shape[0]), int(area.shape[1]))
        crs = area.crs if crs is None else crs
    else:
        if crs is None or resolution is None:
            raise ValueError("generate_landcover with bounds needs crs and resolution")
        left, bottom, right, top = (float(v) for v in area)
        xres, yres = (resolution, resolution) if isinstance(resolution, int | float) else resolution
        xres, yres = abs(float(xres)), abs(float(yres))
        shape = (max(1, round((top - bottom) / yres)), max(1, round((right - left) / xres)))
        transform = Affine(xres, 0.0, left, 0.0, -yres, top)
    x_km, y_km = _grid_km(spec, crs, transform, shape)
    return _classify(spec, x_km, y_km)
