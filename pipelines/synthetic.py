"""Seeded synthetic Earth-observation products that mimic the real ones.

One land-cover map, defined in geographic space (a smooth random field of longitude/latitude), underlies
every sensor, zone and date, so cubes built from different sensors agree. Each class has a realistic
reflectance spectrum (:data:`LANDCOVER_SPECTRA`), averaged over each band's width, so bands correlate as
real bands do. Reflectance is computed on a 10 m grid and block-averaged to each asset's GSD (10/20/60 m for
Sentinel-2, 30 m for Landsat and HLS), then encoded exactly as the real collections encode it (dtype,
nodata, scale/offset, the Sentinel-2 baseline >= 04.00 +1000 DN offset) per the sensor registry.

Per item there are clouds (bright, flat spectrum) and their shadows, flagged in the quality asset
(SCL classes 8/9 and 3, QA_PIXEL bits 3/1 and 4, Fmask bits 1 and 3), and on some dates a swath-edge
no-data wedge (DN = nodata, SCL 0, QA_PIXEL fill 1, Fmask 255).

Ground truth for later tests: :func:`generate_landcover` (class index into :data:`LANDCOVER_CLASSES` at
any grid) and :func:`band_reflectance` (a class's reflectance in any band).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import uuid
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from statistics import NormalDist
from types import MappingProxyType
from typing import Any

import numpy as np
import pystac
import rasterio
from affine import Affine
from pyproj import CRS, Transformer
from rasterio.io import MemoryFile

from pipelines.registry import CollectionSpec, load_registry

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# STAC helpers shared with pipelines.real_items

EO_SCHEMA = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
RASTER_SCHEMA = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
PROJECTION_SCHEMA = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
CORE_EXTENSIONS = (EO_SCHEMA, RASTER_SCHEMA, PROJECTION_SCHEMA)
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
CONTENT_HASH_TAG = "AOM_CONTENT_HASH"


def with_core_extensions(extensions: Sequence[str]) -> list[str]:
    """``extensions`` with eo/raster/projection at the versions pystac writes (older versions replaced)."""
    keep = [
        e
        for e in extensions
        if not any(f"/{name}/" in e for name in ("eo", "raster", "projection"))
        and e not in ("eo", "projection")
    ]
    return [*CORE_EXTENSIONS, *sorted(set(keep) - set(CORE_EXTENSIONS))]


def proj_fields(crs: Any) -> dict[str, Any]:
    """``proj:code`` ("EPSG:n") where the CRS has an EPSG code, else ``proj:wkt2``."""
    pcrs = CRS.from_user_input(crs)
    epsg = pcrs.to_epsg()  # min_confidence 70: matches e.g. a WKT "PS WGS84" to EPSG:3031
    if epsg is not None:
        return {"proj:code": f"EPSG:{epsg}"}
    return {"proj:wkt2": pcrs.to_wkt()}


def transform_list(transform: Affine) -> list[float]:
    return [float(v) for v in tuple(transform)[:6]]


def apply_transform(transform: Affine, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel (col, row) -> map (x, y), vectorised."""
    t = transform
    return t.c + t.a * cols + t.b * rows, t.f + t.d * cols + t.e * rows


def grid_footprint(
    crs: Any, transform: Affine, shape: tuple[int, int], *, densify: int = 16
) -> tuple[dict[str, Any], list[float]]:
    """GeoJSON polygon (WGS84, lon/lat) and bbox of a raster grid, edges densified for curved projections."""
    h, w = shape
    t = np.linspace(0.0, 1.0, densify + 1)
    cols = np.concatenate([t * w, np.full(densify, w), (1 - t[1:]) * w, np.zeros(densify)])
    rows = np.concatenate([np.zeros(densify + 1), t[1:] * h, np.full(densify, h), (1 - t[1:]) * h])
    xs, ys = apply_transform(transform, cols, rows)
    to_wgs84 = Transformer.from_crs(CRS.from_user_input(crs), CRS.from_epsg(4326), always_xy=True)
    lon, lat = to_wgs84.transform(np.asarray(xs), np.asarray(ys))
    ring = [[round(float(x), 7), round(float(y), 7)] for x, y in zip(lon, lat)]
    if ring[0] != ring[-1]:
        ring.append(ring[0])
    bbox = [
        round(float(np.min(lon)), 7),
        round(float(np.min(lat)), 7),
        round(float(np.max(lon)), 7),
        round(float(np.max(lat)), 7),
    ]
    return {"type": "Polygon", "coordinates": [ring]}, bbox


def _array_hash(array: np.ndarray, profile: Mapping[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(profile, sort_keys=True, default=str).encode())
    h.update(str(array.dtype).encode())
    h.update(str(array.shape).encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def write_cog(
    path: Path,
    array: np.ndarray,
    *,
    crs: Any,
    transform: Affine,
    nodata: float | None,
    resampling: str = "average",
) -> bool:
    """Write a single-band deflate COG (tiled, with overviews) atomically; False when skipped.

    The file is rewritten only when the content hash of (array, profile), stored in the TIFF as
    ``AOM_CONTENT_HASH``, differs from the existing file's, so rebuilds are cheap and byte-stable.
    """
    profile = {
        "crs": CRS.from_user_input(crs).to_wkt(),
        "transform": transform_list(transform),
        "nodata": nodata,
        "resampling": resampling,
    }
    digest = _array_hash(array, profile)
    if path.exists():
        try:
            with rasterio.open(path) as ds:
                if ds.tags().get(CONTENT_HASH_TAG) == digest:
                    return False
        except rasterio.errors.RasterioError:
            pass
    predictor = 2 if np.issubdtype(array.dtype, np.integer) else 3
    with MemoryFile() as mem:
        with mem.open(
            driver="COG",
            width=array.shape[1],
            height=array.shape[0],
            count=1,
            dtype=str(array.dtype),
            crs=crs,
            transform=transform,
            nodata=nodata,
            compress="DEFLATE",
            level=1,  # fast deflate: about as small as level 6 on this data, 25 % quicker
            predictor=predictor,
            blocksize=256,
            overview_resampling=resampling,
        ) as ds:
            ds.write(array, 1)
            ds.update_tags(**{CONTENT_HASH_TAG: digest})
        data = mem.read()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True


# ---------------------------------------------------------------------------------------------
# Ground truth: land-cover classes and their spectra

LANDCOVER_CLASSES: tuple[str, ...] = ("water", "vegetation", "bare_soil", "urban", "snow")
"""Class names; :func:`generate_landcover` returns indices into this tuple."""

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
"""class name -> ((wavelength_nm, reflectance), ...) knots; linear in between."""

CLOUD_SPECTRUM: tuple[tuple[float, float], ...] = tuple(
    zip(
        (400.0, 1000.0, 1375.0, 1610.0, 2200.0, 2500.0),
        (0.72, 0.70, 0.62, 0.55, 0.42, 0.38),
    )
)
"""Bright, nearly flat cloud-top reflectance (bright in the cirrus band too, unlike the surface)."""


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
# The spec

DEFAULT_COLLECTIONS: tuple[str, ...] = ("sentinel-2-l2a", "landsat-c2-l2", "hls2-s30", "hls2-l30")


@dataclass(frozen=True)
class _Profile:
    id_prefix: str
    platforms: tuple[str, str]
    instruments: tuple[str, ...]
    constellation: str | None
    mask_gsd: float
    mask_kind: str  # scl | qa_pixel | fmask
    day_offset: int  # Landsat-derived products fly 3 days after the Sentinel-2 ones
    acq_time: time
    grid_offset: float  # Landsat WRS grids sit 15 m off the 30 m multiples; MGRS (S2, HLS) grids do not


_PROFILES: Mapping[str, _Profile] = MappingProxyType(
    {
        "sentinel-2-l2a": _Profile(
            "S2",
            ("sentinel-2a", "sentinel-2b"),
            ("msi",),
            "sentinel-2",
            20.0,
            "scl",
            0,
            time(10, 27, 31),
            0.0,
        ),
        "landsat-c2-l2": _Profile(
            "LC",
            ("landsat-8", "landsat-9"),
            ("oli", "tirs"),
            None,
            30.0,
            "qa_pixel",
            3,
            time(10, 21, 5),
            15.0,
        ),
        "hls2-s30": _Profile(
            "HLSS30", ("sentinel-2a", "sentinel-2b"), ("msi",), None, 30.0, "fmask", 0, time(10, 27, 31), 0.0
        ),
        "hls2-l30": _Profile(
            "HLSL30",
            ("landsat-8", "landsat-9"),
            ("oli", "tirs"),
            None,
            30.0,
            "fmask",
            3,
            time(10, 21, 5),
            0.0,
        ),
    }
)
SUPPORTED_COLLECTIONS: tuple[str, ...] = tuple(_PROFILES)
_FINE_RES = 10.0


@dataclass(frozen=True)
class SyntheticSpec:
    """What :func:`generate_items` makes. All randomness derives from ``seed``.

    One scene per (UTM zone, date, collection). The scenes of the different zones sit side by side
    around (``center_lon``, ``center_lat``) and overlap by half, across the zone boundary at 6°E.
    """

    seed: int = 0
    scene_size_m: float = 3840.0  # 10/20/60 m grids are 384/192/64 px; 30 m grids 128 px
    n_dates: int = 3
    collections: tuple[str, ...] = DEFAULT_COLLECTIONS
    epsg_codes: tuple[int, ...] = (32631, 32632)
    center_lon: float = 6.0
    center_lat: float = 45.0
    start_date: date = date(2023, 6, 1)
    revisit_days: int = 10
    cloud_fraction: float = 0.15
    # date indices (Python-style; out-of-range ones ignored) whose items get a swath-edge no-data wedge
    nodata_swath_dates: tuple[int, ...] = (1,)
    nodata_swath_fraction: float = 0.3
    # Sentinel-2 date index (Python-style) whose item in the first zone is baseline 05.00 *without*
    # earthsearch:boa_offset_applied, so its DNs carry the +1000 offset; None: no such item.
    raw_offset_date: int | None = -1
    catalog: str = "sample"

    def __post_init__(self) -> None:
        if self.scene_size_m <= 0 or not math.isclose(
            self.scene_size_m / 60.0, round(self.scene_size_m / 60.0)
        ):
            raise ValueError(f"scene_size_m must be a positive multiple of 60 m, got {self.scene_size_m}")
        if self.n_dates < 1:
            raise ValueError(f"n_dates must be >= 1, got {self.n_dates}")
        if not self.collections:
            raise ValueError("collections is empty")
        unknown = [c for c in self.collections if c not in _PROFILES]
        if unknown:
            raise ValueError(
                f"no synthetic generator for {unknown}; supported: {', '.join(SUPPORTED_COLLECTIONS)}"
            )
        bad = [e for e in self.epsg_codes if not (32601 <= e <= 32660 or 32701 <= e <= 32760)]
        if not self.epsg_codes or bad:
            raise ValueError(f"epsg_codes must be WGS84 UTM zones (326xx/327xx), got {self.epsg_codes}")
        if not 0.0 <= self.cloud_fraction < 1.0:
            raise ValueError(f"cloud_fraction must be in [0, 1), got {self.cloud_fraction}")
        if not 0.0 <= self.nodata_swath_fraction < 1.0:
            raise ValueError(f"nodata_swath_fraction must be in [0, 1), got {self.nodata_swath_fraction}")
        if self.raw_offset_date is not None and not -self.n_dates <= self.raw_offset_date < self.n_dates:
            raise ValueError(f"raw_offset_date {self.raw_offset_date} is outside the {self.n_dates} dates")
        if self.revisit_days < 1:
            raise ValueError(f"revisit_days must be >= 1, got {self.revisit_days}")

    @property
    def fixed_timestamp(self) -> str:
        """``created``/``updated`` of every synthetic item: fixed, derived from the seed."""
        stamp = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=self.seed % 86400)
        return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")

    def dates(self, collection: str) -> list[datetime]:
        prof = _PROFILES[collection]
        return [
            datetime.combine(
                self.start_date + timedelta(days=i * self.revisit_days + prof.day_offset), prof.acq_time, UTC
            )
            for i in range(self.n_dates)
        ]


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


# ---------------------------------------------------------------------------------------------
# Scenes


@dataclass(frozen=True)
class _Scene:
    epsg: int
    origin: tuple[float, float]  # upper-left corner of the 10 m grid
    n: int  # pixels per side on the 10 m grid

    def transform(self, res: float) -> Affine:
        return Affine(res, 0.0, self.origin[0], 0.0, -res, self.origin[1])

    def shape(self, res: float) -> tuple[int, int]:
        k = round(res / _FINE_RES)
        return (self.n // k, self.n // k)

    @property
    def key(self) -> tuple[int, float, float, int]:
        return (self.epsg, self.origin[0], self.origin[1], self.n)


def _scene_origin(spec: SyntheticSpec, zone_index: int) -> tuple[float, float]:
    """Upper-left corner (on the 60 m MGRS-like lattice) of the scene in zone ``zone_index``."""
    nz = len(spec.epsg_codes)
    width_deg = spec.scene_size_m / (111320.0 * math.cos(math.radians(spec.center_lat)))
    lon = spec.center_lon + (zone_index - (nz - 1) / 2.0) * 0.5 * width_deg
    to_utm = Transformer.from_crs(
        CRS.from_epsg(4326), CRS.from_epsg(spec.epsg_codes[zone_index]), always_xy=True
    )
    cx, cy = to_utm.transform(lon, spec.center_lat)
    half = spec.scene_size_m / 2.0
    return (round((cx - half) / 60.0) * 60.0, round((cy + half) / 60.0) * 60.0)


def _interp_weights(n: int, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coarse sample positions (every ``step`` fine pixels, last one included) and linear weights."""
    idx = np.unique(np.append(np.arange(0, n, step), n - 1))
    fine = np.arange(n)
    i0 = np.clip(np.searchsorted(idx, fine, side="right") - 1, 0, len(idx) - 2)
    w = ((fine - idx[i0]) / (idx[i0 + 1] - idx[i0])).astype(np.float32)
    return idx, i0, w


def _upsample(coarse: np.ndarray, i0: np.ndarray, w: np.ndarray) -> np.ndarray:
    rows = coarse[i0, :] * (1 - w)[:, None] + coarse[i0 + 1, :] * w[:, None]
    return rows[:, i0] * (1 - w)[None, :] + rows[:, i0 + 1] * w[None, :]


class _Cache:
    """Per-build cache of the geographic fields on each 10 m grid (shared by sensors and dates).

    Smooth fields (land cover, clouds: wavelengths >= 500 m) are evaluated every 30 m and linearly
    interpolated (error ~1 % of their amplitude); the fine texture is evaluated at every pixel.
    """

    _STEP = 3

    def __init__(self, spec: SyntheticSpec) -> None:
        self.spec = spec
        self._km: dict[Any, tuple[np.ndarray, np.ndarray]] = {}
        self._coarse: dict[Any, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        self._cls: dict[Any, np.ndarray] = {}
        self._tex: dict[Any, np.ndarray] = {}
        self._cloud: dict[Any, tuple[np.ndarray, np.ndarray]] = {}

    def km(self, scene: _Scene) -> tuple[np.ndarray, np.ndarray]:
        if scene.key not in self._km:
            crs = CRS.from_epsg(scene.epsg)
            self._km[scene.key] = _grid_km(self.spec, crs, scene.transform(_FINE_RES), (scene.n, scene.n))
        return self._km[scene.key]

    def coarse(self, scene: _Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x_km, y_km) at the coarse sample points, and the interpolation (i0, w)."""
        if scene.key not in self._coarse:
            idx, i0, w = _interp_weights(scene.n, self._STEP)
            x, y = self.km(scene)
            self._coarse[scene.key] = (x[np.ix_(idx, idx)], y[np.ix_(idx, idx)], i0, w)
        return self._coarse[scene.key]

    def smooth(self, scene: _Scene, fld: _Field, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
        x, y, i0, w = self.coarse(scene)
        return _upsample(fld(x + dx, y + dy).astype(np.float32), i0, w)

    def landcover(self, scene: _Scene) -> np.ndarray:
        if scene.key not in self._cls:
            seed = self.spec.seed
            wet = self.smooth(scene, _Field.make((seed, _STREAM_LANDCOVER_A), 32, _WETNESS_WAVELENGTHS))
            use = self.smooth(scene, _Field.make((seed, _STREAM_LANDCOVER_B), 32, _USE_WAVELENGTHS))
            self._cls[scene.key] = _classes_from_fields(wet, use)
        return self._cls[scene.key]

    def texture(self, scene: _Scene) -> np.ndarray:
        if scene.key not in self._tex:
            x, y = self.km(scene)
            f = _Field.make((self.spec.seed, _STREAM_TEXTURE), 16, (0.06, 0.6))(
                x.astype(np.float32), y.astype(np.float32)
            )
            self._tex[scene.key] = np.clip(1.0 + 0.07 * f, 0.75, 1.25).astype(np.float32)
        return self._tex[scene.key]

    def clouds(self, scene: _Scene, day: date) -> tuple[np.ndarray, np.ndarray]:
        """(cloud opacity 0..1, shadow bool) on the 10 m grid; the same sky for every sensor that day."""
        key = (scene.key, day.toordinal())
        if key not in self._cloud:
            shape = (scene.n, scene.n)
            frac = self.spec.cloud_fraction
            if frac <= 0.0:
                self._cloud[key] = (np.zeros(shape, np.float32), np.zeros(shape, bool))
            else:
                fld = _Field.make((self.spec.seed, _STREAM_CLOUD, day.toordinal()), 24, (0.6, 3.0))
                thr = NormalDist().inv_cdf(1.0 - frac)
                f = self.smooth(scene, fld)
                alpha = np.where(f > thr, np.clip(0.35 + (f - thr) / 0.8, 0.0, 1.0), 0.0).astype(np.float32)
                # Morning sun in the south-east: a shadow lies north-west of its cloud (~300 m away).
                shadow = (self.smooth(scene, fld, 0.24, -0.18) > thr + 0.2) & (alpha == 0)
                self._cloud[key] = (alpha, shadow)
        return self._cloud[key]


def _block_mean(a: np.ndarray, k: int) -> np.ndarray:
    if k == 1:
        return a
    h, w = a.shape[-2:]
    return a.reshape(*a.shape[:-2], h // k, k, w // k, k).mean(axis=(-3, -1))


def _block_max(a: np.ndarray, k: int) -> np.ndarray:
    if k == 1:
        return a
    h, w = a.shape
    return a.reshape(h // k, k, w // k, k).max(axis=(1, 3))


def _block_mode(cls: np.ndarray, k: int) -> np.ndarray:
    if k == 1:
        return cls
    counts = np.stack([_block_mean((cls == c).astype(np.float32), k) for c in range(len(LANDCOVER_CLASSES))])
    return counts.argmax(axis=0).astype(np.uint8)


def _swath(scene: _Scene, res: float, fraction: float, seed_key: int) -> np.ndarray:
    """A swath-edge no-data wedge: the pixels (of the ``res`` grid) beyond a slanted line."""
    shape = scene.shape(res)
    if fraction <= 0:
        return np.zeros(shape, bool)
    rows, cols = np.meshgrid(np.arange(shape[0]) + 0.5, np.arange(shape[1]) + 0.5, indexing="ij")
    u = cols / shape[1] - 0.5
    v = rows / shape[0] - 0.5
    slope = 0.2 + 0.3 * ((seed_key % 7) / 6.0)  # orbit tracks are slanted a few degrees
    s = u + slope * v
    # threshold so the wedge covers `fraction` of the scene (analytic on the continuous square)
    grid = np.linspace(-0.5 + 1 / 512, 0.5 - 1 / 512, 256)
    gu, gv = np.meshgrid(grid, grid)
    thr = float(np.quantile(gu + slope * gv, 1.0 - fraction))
    return np.asarray(s > thr)


def _encode(refl: np.ndarray, cs: CollectionSpec, properties: Mapping[str, Any]) -> np.ndarray:
    scale, offset = cs.scale, cs.offset
    dn = np.round((refl - offset) / scale) - cs.dn_offset(properties)
    info = np.iinfo(np.dtype(cs.dtype))
    lo, hi = float(info.min), float(info.max)
    if cs.nodata is not None and cs.nodata == lo:
        lo += 1
    out = np.clip(dn, lo, hi).astype(cs.dtype)
    if cs.nodata is not None and lo <= cs.nodata <= hi:
        out[out == cs.nodata] = np.asarray(cs.nodata + 1).astype(cs.dtype)
    return out


_SCL_FOR_CLASS = np.array([6, 4, 5, 5, 11], dtype=np.uint8)  # water, vegetation, bare, urban, snow
_QA_LOW_CONF = (1 << 8) | (1 << 10) | (1 << 12) | (1 << 14)  # cloud/shadow/snow/cirrus confidence: low


def _encode_mask(
    kind: str,
    cls: np.ndarray,
    alpha_max: np.ndarray,
    alpha_mean: np.ndarray,
    shadow: np.ndarray,
    swath: np.ndarray,
) -> tuple[np.ndarray, int]:
    cloud = alpha_max > 0
    thick = alpha_mean >= 0.6
    shadow = shadow & ~cloud
    water = cls == LANDCOVER_CLASSES.index("water")
    snow = cls == LANDCOVER_CLASSES.index("snow")
    if kind == "scl":
        out = _SCL_FOR_CLASS[cls]
        out[shadow] = 3
        out[cloud] = 8
        out[cloud & thick] = 9
        out[swath] = 0
        return out, 0
    if kind == "qa_pixel":
        q = np.full(cls.shape, _QA_LOW_CONF | (1 << 6), dtype=np.uint16)  # clear, low confidences
        q[water] |= 1 << 7
        q[snow] |= (1 << 5) | (1 << 13)
        q[shadow] |= (1 << 4) | (1 << 11)
        edge = cloud & ~thick
        q[cloud] &= np.uint16(~(1 << 6) & 0xFFFF)
        q[cloud & thick] |= (1 << 3) | (1 << 9)
        q[edge] |= (1 << 1) | (1 << 9)
        q[edge] &= np.uint16(~(1 << 8) & 0xFFFF)  # medium confidence (bits 8-9 = 10)
        q[swath] = 1
        return q, 1
    if kind == "fmask":
        f = np.full(cls.shape, 64, dtype=np.uint8)  # aerosol level low
        f[water] |= 1 << 5
        f[snow] |= 1 << 4
        f[shadow] |= 1 << 3
        f[cloud] |= 1 << 1
        near = _dilate(cloud | shadow) & ~(cloud | shadow)
        f[near] |= 1 << 2
        f[swath] = 255
        return f, 255
    raise ValueError(f"unknown mask kind {kind!r}")


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:, :] |= mask[:-1, :]
    out[:-1, :] |= mask[1:, :]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _cloud_percentage(kind: str, mask: np.ndarray, nodata: int) -> tuple[float, float]:
    """(cloud %, nodata %) from a quality array, as providers compute ``eo:cloud_cover``."""
    valid = mask != nodata
    if kind == "scl":
        cloudy = np.isin(mask, (8, 9, 10))
    elif kind == "qa_pixel":
        cloudy = (mask & ((1 << 1) | (1 << 3))) != 0
    else:
        cloudy = (mask & (1 << 1)) != 0
    n_valid = int(valid.sum())
    cover = 100.0 * float((cloudy & valid).sum()) / n_valid if n_valid else 0.0
    return round(cover, 4), round(100.0 * float((~valid).mean()), 4)


def _item_id(prof: _Profile, platform: str, epsg: int, when: datetime) -> str:
    prefix = prof.id_prefix
    if prefix == "LC":
        prefix = "LC08" if platform == "landsat-8" else "LC09"
    return f"SYN_{prefix}_{epsg}_{when:%Y%m%d}"


def _eo_band(key: str, cs: CollectionSpec, band: str) -> dict[str, Any]:
    b = cs.sensor.band(band)
    return {
        "name": key,
        "common_name": b.common_name,
        "description": f"{cs.sensor.name} {band}",
        "center_wavelength": round(b.center_wavelength_nm / 1000.0, 5),
        "full_width_half_max": round(b.fwhm_nm / 1000.0, 5),
    }


def _number(v: float) -> int | float:
    return int(v) if float(v).is_integer() else float(v)


def _make_item(
    spec: SyntheticSpec,
    cache: _Cache,
    cid: str,
    cs: CollectionSpec,
    scene: _Scene,
    zone_index: int,
    date_index: int,
    when: datetime,
    data_dir: Path,
) -> tuple[pystac.Item, int]:
    prof = _PROFILES[cid]
    platform = prof.platforms[date_index % 2]
    item_id = _item_id(prof, platform, scene.epsg, when)
    crs = CRS.from_epsg(scene.epsg)
    props: dict[str, Any] = {"datetime": when.strftime("%Y-%m-%dT%H:%M:%SZ")}
    props["created"] = props["updated"] = spec.fixed_timestamp
    props["platform"] = platform
    if prof.constellation:
        props["constellation"] = prof.constellation
    props["instruments"] = list(prof.instruments)
    if cid == "sentinel-2-l2a":
        raw_date = None if spec.raw_offset_date is None else range(spec.n_dates)[spec.raw_offset_date]
        if zone_index == 0 and date_index == raw_date:
            props["s2:processing_baseline"] = "05.00"  # DNs carry +1000; no boa_offset_applied flag
        else:
            props["s2:processing_baseline"] = "04.00"
            props["earthsearch:boa_offset_applied"] = True
        props["s2:product_type"] = "S2MSI2A"
        props["mgrs:utm_zone"] = scene.epsg % 100
    elif cid == "landsat-c2-l2":
        props["landsat:correction"] = "L2SP"
        props["landsat:collection_number"] = "02"
    props["aom:synthetic"] = True

    # Reflectance on the 10 m grid: class spectra x texture + noise, shadows, clouds.
    bands = list(cs.band_names)
    lut = np.array(
        [
            [
                band_reflectance(c, cs.sensor.band(b).center_wavelength_nm, cs.sensor.band(b).fwhm_nm)
                for b in bands
            ]
            for c in LANDCOVER_CLASSES
        ],
        dtype=np.float32,
    )  # (classes, bands)
    cloud_lut = np.array(
        [
            _spectrum_band(CLOUD_SPECTRUM, cs.sensor.band(b).center_wavelength_nm, cs.sensor.band(b).fwhm_nm)
            for b in bands
        ],
        dtype=np.float32,
    )
    cls = cache.landcover(scene)
    alpha, shadow = cache.clouds(scene, when.date())
    rng = np.random.default_rng([spec.seed, _STREAM_NOISE, zlib.crc32(item_id.encode())])
    gain = np.float32(1.0 + rng.uniform(-0.02, 0.02))  # per-acquisition residual (atmosphere, BRDF)
    # reflectance(band) = spectrum[class] * surface + alpha * cloud, surface = texture, gain, shadow, 1 - alpha
    surface = cache.texture(scene) * gain * np.where(shadow, np.float32(0.35), np.float32(1.0)) * (1 - alpha)

    swath_on = date_index in {
        d % spec.n_dates for d in spec.nodata_swath_dates if -spec.n_dates <= d < spec.n_dates
    }
    frac = spec.nodata_swath_fraction if swath_on else 0.0
    swath_key = when.toordinal() + scene.epsg

    item_dir = data_dir / item_id
    assets: dict[str, dict[str, Any]] = {}
    written = 0
    scale_offset = cs.scale_offset(props)
    for bi, band in enumerate(bands):
        key = cs.assets[band]
        gsd = cs.sensor.band(band).gsd_m
        k = round(gsd / _FINE_RES)
        refl = _block_mean(lut[cls, bi] * surface + alpha * cloud_lut[bi], k)
        refl += rng.standard_normal(refl.shape, dtype=np.float32) * np.float32(0.003)  # sensor noise
        dn = _encode(np.clip(refl, 0.0005, 1.6), cs, props)
        if cs.nodata is not None:
            dn[_swath(scene, gsd, frac, swath_key)] = np.asarray(cs.nodata).astype(cs.dtype)
        path = item_dir / f"{key}.tif"
        written += write_cog(path, dn, crs=crs, transform=scene.transform(gsd), nodata=cs.nodata)
        assets[key] = {
            "href": path.resolve().as_uri(),
            "type": COG_MEDIA_TYPE,
            "title": f"{cs.sensor.band(band).common_name} ({band}) - {_number(gsd)}m",
            "roles": ["data", "reflectance"],
            "gsd": _number(gsd),
            "eo:bands": [_eo_band(key, cs, band)],
            "proj:shape": list(scene.shape(gsd)),
            "proj:transform": transform_list(scene.transform(gsd)),
            "raster:bands": [
                {
                    "nodata": None if cs.nodata is None else _number(cs.nodata),
                    "data_type": cs.dtype,
                    "scale": scale_offset[0],
                    "offset": round(scale_offset[1], 12),
                    "spatial_resolution": _number(gsd),
                }
            ],
        }

    # Quality asset.
    mask_key = cs.mask.asset
    assert mask_key is not None
    km = round(prof.mask_gsd / _FINE_RES)
    mask, mask_nodata = _encode_mask(
        prof.mask_kind,
        _block_mode(cls, km),
        _block_max(alpha, km),
        _block_mean(alpha, km),
        _block_max(shadow, km),
        _swath(scene, prof.mask_gsd, frac, swath_key),
    )
    path = item_dir / f"{mask_key}.tif"
    written += write_cog(
        path,
        mask,
        crs=crs,
        transform=scene.transform(prof.mask_gsd),
        nodata=mask_nodata,
        resampling="nearest",
    )
    assets[mask_key] = {
        "href": path.resolve().as_uri(),
        "type": COG_MEDIA_TYPE,
        "title": {
            "scl": "Scene classification map (SCL)",
            "qa_pixel": "Pixel quality assessment (QA_PIXEL)",
        }.get(prof.mask_kind, "Fmask quality bits"),
        "roles": ["cloud", "data"],
        "gsd": _number(prof.mask_gsd),
        "proj:shape": list(scene.shape(prof.mask_gsd)),
        "proj:transform": transform_list(scene.transform(prof.mask_gsd)),
        "raster:bands": [
            {
                "nodata": mask_nodata,
                "data_type": str(mask.dtype),
                "spatial_resolution": _number(prof.mask_gsd),
            }
        ],
    }
    cover, nodata_pct = _cloud_percentage(prof.mask_kind, mask, mask_nodata)
    props["eo:cloud_cover"] = cover
    if cid == "sentinel-2-l2a":
        props["s2:nodata_pixel_percentage"] = nodata_pct
    props.update(proj_fields(crs))
    fine_t = scene.transform(_FINE_RES)
    left, top = fine_t.c, fine_t.f
    size = scene.n * _FINE_RES
    props["proj:bbox"] = [left, top - size, left + size, top]
    geometry, bbox = grid_footprint(crs, fine_t, (scene.n, scene.n))
    d = {
        "type": "Feature",
        "stac_version": pystac.get_stac_version(),
        "stac_extensions": list(CORE_EXTENSIONS),
        "id": item_id,
        "collection": cid,
        "geometry": geometry,
        "bbox": bbox,
        "properties": props,
        "links": [],
        "assets": assets,
    }
    return pystac.Item.from_dict(d), written


def generate_items(spec: SyntheticSpec, data_dir: Path) -> list[pystac.Item]:
    """Write the synthetic COGs under ``data_dir/<item id>/`` and return their STAC items.

    Items carry absolute ``file://`` asset hrefs, sorted by (collection, id). COGs whose content is
    unchanged are not rewritten.
    """
    registry = load_registry()
    data_dir = Path(data_dir)
    cache = _Cache(spec)
    items: list[pystac.Item] = []
    written = 0
    for zone_index, epsg in enumerate(spec.epsg_codes):
        origin = _scene_origin(spec, zone_index)
        n = round(spec.scene_size_m / _FINE_RES)
        for cid in spec.collections:
            cs = registry.collection(cid, spec.catalog)
            off = _PROFILES[cid].grid_offset
            scene = _Scene(epsg=epsg, origin=(origin[0] - off, origin[1] + off), n=n)
            for date_index, when in enumerate(spec.dates(cid)):
                item, w = _make_item(spec, cache, cid, cs, scene, zone_index, date_index, when, data_dir)
                items.append(item)
                written += w
    logger.info("synthetic: %d items, %d COGs (re)written under %s", len(items), written, data_dir)
    return sorted(items, key=lambda it: (it.collection_id or "", it.id))
