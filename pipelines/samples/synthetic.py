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

import logging
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pystac
from affine import Affine
from pyproj import CRS, Transformer

from pipelines.registry import CollectionSpec, load_registry
from pipelines.samples.landcover import (
    _STREAM_CLOUD,
    _STREAM_LANDCOVER_A,
    _STREAM_LANDCOVER_B,
    _STREAM_NOISE,
    _STREAM_TEXTURE,
    _USE_WAVELENGTHS,
    _WETNESS_WAVELENGTHS,
    CLOUD_SPECTRUM,
    LANDCOVER_CLASSES,
    _classes_from_fields,
    _Field,
    _grid_km,
    _spectrum_band,
    band_reflectance,
)
from pipelines.samples.stac_fields import (
    COG_MEDIA_TYPE,
    CORE_EXTENSIONS,
    LANDSAT_SCHEMA,
    MGRS_SCHEMA,
    eo_common_name,
    grid_footprint,
    proj_fields,
    transform_list,
    write_cog,
)
from pipelines.samples.synthetic_spec import _PROFILES, SyntheticSpec, _Profile

logger = logging.getLogger(__name__)

# the extensions of the prefixed fields a collection's items carry (mgrs:utm_zone, landsat:correction)
_PREFIX_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "sentinel-2-l2a": (MGRS_SCHEMA,),
    "landsat-c2-l2": (LANDSAT_SCHEMA,),
}


"""Class names; :func:`generate_landcover` returns indices into this tuple."""


"""class name -> ((wavelength_nm, reflectance), ...) knots; linear in between."""


"""Bright, nearly flat cloud-top reflectance (bright in the cirrus band too, unlike the surface)."""


_FINE_RES = 10.0


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
        **eo_common_name(b.common_name),
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
        "stac_extensions": [*CORE_EXTENSIONS, *_PREFIX_EXTENSIONS.get(cid, ())],
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
