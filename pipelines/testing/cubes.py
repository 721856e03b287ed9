"""Seeded synthetic cube stores, written through the cube store (for tests and benchmarks).

The store is written with :class:`pipelines.cubes.CubeStore` exactly as a cube run writes it (root
attributes from a :class:`~pipelines.cubes.CubeSpec`, one group ``<tile_id>/<collection>/<gsd_label>``
per (collection, GSD) with ``reflectance`` (time, band, y, x) stored int16, scale 1e-4, fill
-32768, and ``_tiles/<tile_id>.json`` completion records written last), so every reader of cube
stores reads it as it reads real ones. Only the pixels are synthetic.

The scene is a linear mixture of land-cover end-members (water, vegetation, soil, urban, dry grass)
with distinct, correlated spectra; smooth abundance and brightness fields are generated on a 10 m
grid and area-averaged to every sensor's GSD, so Sentinel-2 10/20/60 m and Landsat 30 m views of a
tile show the same ground. Each acquisition has its own illumination, a vegetation phenology gain,
sensor noise, and cloud blobs (NaN in every band); some tiles have a no-data swath edge and some
acquisitions are almost fully cloudy (so chip sampling must skip them). Same seed -> same bytes.

Band identities come from the built-in sensor registry (``pipelines/data/sensors.yaml``, never a
table here): ``SENTINEL2`` and ``LANDSAT`` write every band of ``sentinel-2-msi`` / ``landsat-oli``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

from pipelines.cubes import (
    LAYOUT_VERSION,
    CubeSpec,
    CubeStore,
    encode_reflectance,
    group_entry,
    reflectance_attrs,
    tile_record,
)
from pipelines.cubes import gsd_label as cube_gsd_label
from pipelines.registry import BandSpec, load_registry
from pipelines.tiling import TileGrid

EPSG = 32631  # the CRS of every synthetic tile


@dataclass(frozen=True)
class SyntheticCollection:
    """One synthetic collection: its id, its sensor and the bands written (registry identities)."""

    collection: str
    """Collection id written into the cube (``sentinel-2-l2a``)."""
    sensor: str
    """Registry sensor name (``sentinel-2-msi``)."""
    bands: tuple[BandSpec, ...]
    """Bands written, each at its own ``gsd_m`` (one cube group per GSD)."""


def registry_collection(collection: str, sensor: str) -> SyntheticCollection:
    """A synthetic collection with every band of a sensor of the built-in registry."""
    return SyntheticCollection(collection, sensor, load_registry(use_env=False).sensor(sensor).bands)


SENTINEL2 = registry_collection("sentinel-2-l2a", "sentinel-2-msi")
LANDSAT = registry_collection("landsat-c2-l2", "landsat-oli")

# End-member spectra at anchor wavelengths (nm) -> reflectance.
_ANCHORS = np.array([400, 500, 560, 660, 700, 740, 780, 860, 950, 1370, 1610, 2200, 2500], dtype=np.float64)
ENDMEMBERS: dict[str, np.ndarray] = {
    "water": np.array([0.06, 0.05, 0.04, 0.02, 0.015, 0.01, 0.008, 0.005, 0.003, 0.001, 0.002, 0.001, 0.001]),
    "vegetation": np.array([0.03, 0.04, 0.08, 0.03, 0.08, 0.30, 0.40, 0.42, 0.38, 0.02, 0.20, 0.09, 0.06]),
    "soil": np.array([0.08, 0.10, 0.14, 0.20, 0.22, 0.24, 0.26, 0.28, 0.29, 0.05, 0.35, 0.30, 0.25]),
    "urban": np.array([0.10, 0.12, 0.13, 0.14, 0.15, 0.16, 0.17, 0.18, 0.18, 0.04, 0.20, 0.18, 0.16]),
    "dry_grass": np.array([0.05, 0.07, 0.11, 0.15, 0.18, 0.22, 0.25, 0.27, 0.27, 0.03, 0.30, 0.22, 0.18]),
}
CLASSES = tuple(ENDMEMBERS)


def spectrum(cls: str, wavelength_nm: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.interp(np.asarray(wavelength_nm, dtype=np.float64), _ANCHORS, ENDMEMBERS[cls])


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field (FFT filtering of white noise)."""
    noise = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    kernel = np.exp(-2.0 * (np.pi * sigma_px) ** 2 * (fx**2 + fy**2))
    out = np.real(np.fft.ifft2(np.fft.fft2(noise) * kernel))
    return (out - out.mean()) / (out.std() + 1e-12)


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """[..., H, W] -> [..., H/f, W/f] mean of f x f blocks (NaN-aware: NaN if over half is NaN)."""
    if f == 1:
        return a
    h, w = a.shape[-2:]
    blocks = a.reshape(*a.shape[:-2], h // f, f, w // f, f)
    valid = np.isfinite(blocks)
    cnt = valid.sum(axis=(-3, -1))
    s = np.where(valid, blocks, 0.0).sum(axis=(-3, -1))
    out = s / np.maximum(cnt, 1)
    return np.where(cnt * 2 > f * f, out, np.nan)


@dataclass(frozen=True)
class SyntheticTile:
    tile_id: str
    x0: float  # left edge (m)
    y0: float  # top edge (m)
    abundance: np.ndarray  # [K, H, W] at 10 m
    brightness: np.ndarray  # [H, W]
    vigour: np.ndarray  # [H, W] vegetation vigour (NIR up, red down), zero-mean
    moisture: np.ndarray  # [H, W] soil moisture (darkens the SWIR most), zero-mean


def make_tile(rng: np.random.Generator, tile_id: str, tile_px: int, x0: float, y0: float) -> SyntheticTile:
    k = len(CLASSES)
    logits = np.stack([_smooth_field(rng, (tile_px, tile_px), rng.uniform(4.0, 12.0)) for _ in range(k)])
    logits += rng.normal(0.0, 0.5, size=(k, 1, 1))  # per-tile class prevalence
    a = np.exp(3.0 * logits)
    a /= a.sum(axis=0, keepdims=True)
    bright = 1.0 + 0.08 * _smooth_field(rng, (tile_px, tile_px), 3.0)
    vigour = _smooth_field(rng, (tile_px, tile_px), 2.0)
    moisture = _smooth_field(rng, (tile_px, tile_px), 2.5)
    return SyntheticTile(tile_id, x0, y0, a, bright, vigour, moisture)


def render(
    tile: SyntheticTile,
    wavelength_nm: np.ndarray,
    rng: np.random.Generator,
    illumination: float,
    phenology: float,
    noise: float,
) -> np.ndarray:
    """[C, H, W] reflectance at 10 m for the given band centres."""
    specs = np.stack([spectrum(c, wavelength_nm) for c in CLASSES])  # [K, C]
    veg = CLASSES.index("vegetation")
    nir = np.clip((wavelength_nm - 700.0) / 80.0, 0.0, 1.0) * (wavelength_nm < 1300)
    specs[veg] = specs[veg] * (1.0 + (phenology - 1.0) * nir)
    # within-class variability with band-specific texture (bands are not copies of each other):
    # vegetation vigour raises the NIR plateau and deepens the red absorption; soil moisture darkens
    # soil most in the SWIR
    red = np.exp(-(((wavelength_nm - 665.0) / 60.0) ** 2))
    swir = np.clip((wavelength_nm - 900.0) / 1300.0, 0.0, 1.0)
    soil = CLASSES.index("soil")
    veg_mod = 1.0 + 0.25 * tile.vigour[None] * (nir - 0.8 * red)[:, None, None]  # [C, H, W]
    soil_mod = 1.0 - 0.2 * (tile.moisture[None] + 1.0) * (0.3 + swir)[:, None, None]
    refl = np.einsum("kc,khw->chw", specs, tile.abundance)
    refl += specs[veg][:, None, None] * tile.abundance[veg][None] * (veg_mod - 1.0)
    refl += specs[soil][:, None, None] * tile.abundance[soil][None] * (soil_mod - 1.0)
    refl = refl * tile.brightness[None] * illumination
    refl += rng.normal(0.0, noise, size=refl.shape)
    return np.clip(refl, 0.0, 1.5)


def cloud_mask(rng: np.random.Generator, shape: tuple[int, int], cover: float) -> np.ndarray:
    if cover <= 0:
        return np.zeros(shape, dtype=bool)
    if cover >= 1:
        return np.ones(shape, dtype=bool)
    f = _smooth_field(rng, shape, 6.0)
    return f > np.quantile(f, 1.0 - cover)


CHUNK_PX = 64  # inner Zarr chunk edge of the synthetic stores (a 480 m chip at 10 m is 48 px)
WRITTEN_AT = "2024-01-01T00:00:00+00:00"  # records carry a fixed time: same seed -> same bytes


def group_dataset(
    tile_id: str,
    coll: SyntheticCollection,
    gsd_m: float,
    bands: Sequence[BandSpec],
    data: np.ndarray,  # [T, C, H, W] float reflectance, NaN = nodata
    times: np.ndarray,
    x0: float,
    y0: float,
    spec: CubeSpec,
) -> xr.Dataset:
    """One group in the layout :meth:`CubeStore.write_group` writes (int16 reflectance, lazily chunked
    one dask chunk per shard, as cube assembly hands it over)."""
    import dask.array as da
    from affine import Affine
    from odc.geo.geobox import GeoBox
    from odc.geo.xr import xr_coords

    _t, c, h, w = data.shape
    label = gsd_label(gsd_m)
    gbox = GeoBox((h, w), Affine(gsd_m, 0.0, x0, 0.0, -gsd_m, y0), f"EPSG:{EPSG}")
    coords = xr_coords(gbox, crs_coord_name="spatial_ref")
    refl = data.astype(np.float32)
    encoded = encode_reflectance(refl, spec.encoding)
    cy, cx = min(spec.chunk_px, h), min(spec.chunk_px, w)
    sy, sx = math.ceil(h / cy) * cy, math.ceil(w / cx) * cx  # one shard per band stack and time
    valid = np.isfinite(refl)
    days = [str(np.datetime_as_string(d, unit="D")) for d in times]
    ds = xr.Dataset(
        {
            "reflectance": (
                ("time", "band", "y", "x"),
                da.from_array(encoded, chunks=(1, c, sy, sx)),
                reflectance_attrs(spec.encoding),
            )
        },
        coords={
            "time": ("time", np.asarray(times, dtype="datetime64[ns]")),
            "band": ("band", np.array([b.name for b in bands], dtype=object)),
            "center_wavelength_nm": (
                "band",
                np.array([b.center_wavelength_nm for b in bands], dtype=np.float64),
            ),
            "fwhm_nm": ("band", np.array([b.fwhm_nm for b in bands], dtype=np.float64)),
            "common_name": ("band", np.array([b.common_name for b in bands], dtype=object)),
            "band_gsd_m": ("band", np.array([b.gsd_m for b in bands], dtype=np.float32)),
            "source_items": ("time", np.array([f"synthetic-{tile_id}-{d}" for d in days], dtype=object)),
            "solar_day": ("time", np.array(days, dtype=object)),
            "valid_fraction": ("time", valid.mean(axis=(1, 2, 3)).astype(np.float32)),
            "y": coords["y"],
            "x": coords["x"],
            "spatial_ref": coords["spatial_ref"],
        },
        attrs={
            "sensor": coll.sensor,
            "collection": coll.collection,
            "catalog": spec.catalog,
            "gsd_m": float(gsd_m),
            "gsd_label": label,
            "tile_id": tile_id,
            "tile_bounds": [x0, y0 - h * gsd_m, x0 + w * gsd_m, y0],
            "encoding": spec.encoding,
            "synthetic": "pipelines.testing.write_synthetic_cubes",
            "lattice_shift_m": [0.0, 0.0],
            "lattice": "tile origin: synthetic pixels drawn on the tile's own lattice",
            "layout_version": LAYOUT_VERSION,
            "Conventions": "CF-1.8",
        },
    )
    ds.encoding["aom_chunks"] = (1, 1, cy, cx)
    ds.encoding["aom_shards"] = (1, c, sy, sx)
    return ds


def gsd_label(gsd_m: float) -> str:
    return cube_gsd_label(gsd_m)


def write_synthetic_cubes(
    root: str | os.PathLike[str],
    *,
    seed: int = 0,
    n_tiles: int = 2,
    tile_m: float = 960.0,
    n_times: int = 3,
    collections: Sequence[SyntheticCollection] = (SENTINEL2, LANDSAT),
    cloud_cover: tuple[float, float] = (0.0, 0.3),
    cloudy_time: bool = True,
    noise: float = 0.004,
    tile_prefix: str = "T",
    empty_tiles: int = 0,
    incomplete_tiles: int = 0,
) -> list[str]:
    """Write a synthetic cube store at ``root``; returns the ids of the complete tiles.

    ``tile_m`` must be a multiple of 60 m. Acquisition 0 of every tile is 97% cloudy when
    ``cloudy_time`` (chips there are mostly invalid). Odd tiles have a no-data band along one edge.
    ``empty_tiles`` adds tiles with an ``empty`` record; ``incomplete_tiles`` adds tiles with data but
    no record (an interrupted build): neither may be read.
    """
    if tile_m % 60:
        raise ValueError("tile_m must be a multiple of 60 m")
    spec = CubeSpec(
        grid=TileGrid(tile_m),
        collections=tuple(c.collection for c in collections) or (SENTINEL2.collection,),
        catalog="sample",
        chunk_px=CHUNK_PX,
        shard_px=CHUNK_PX * math.ceil(tile_m / 10.0 / CHUNK_PX),
    )
    store = CubeStore(os.fspath(root))
    store.ensure_root(spec)
    px = round(tile_m / 10.0)
    out = []
    for i in range(n_tiles + incomplete_tiles):
        rng = np.random.default_rng([seed, i])
        tile_id = f"{tile_prefix}{i:03d}"
        x0, y0 = 500_000.0 + i * tile_m * 2, 4_000_000.0
        tile = make_tile(rng, tile_id, px, x0, y0)
        edge = np.zeros((px, px), dtype=bool)
        if i % 2 == 1:
            edge[:, : px // 6] = True  # swath edge: no data
        entries = []
        for ci, coll in enumerate(collections):
            times = np.array(
                [np.datetime64("2024-01-05") + np.timedelta64(16 * t + 3 * ci, "D") for t in range(n_times)],
                dtype="datetime64[ns]",
            )
            wl = np.array([b.center_wavelength_nm for b in coll.bands])
            fine = []
            for t in range(n_times):
                trng = np.random.default_rng([seed, i, ci, t])
                cover = 0.97 if (cloudy_time and t == 0) else float(trng.uniform(*cloud_cover))
                refl = render(
                    tile,
                    wl,
                    trng,
                    illumination=float(trng.uniform(0.9, 1.1)),
                    phenology=float(trng.uniform(0.8, 1.2)),
                    noise=noise,
                )
                bad = cloud_mask(trng, (px, px), cover) | edge
                refl[:, bad] = np.nan
                fine.append(refl)
            cube = np.stack(fine)  # [T, C, H, W] at 10 m
            for gsd in sorted({b.gsd_m for b in coll.bands}):
                idx = [j for j, b in enumerate(coll.bands) if b.gsd_m == gsd]
                data = _block_mean(cube[:, idx], int(gsd // 10))
                ds = group_dataset(
                    tile_id, coll, float(gsd), [coll.bands[j] for j in idx], data, times, x0, y0, spec
                )
                fractions = store.write_group(tile_id, ds, spec=spec, scheduler="synchronous")
                entries.append(group_entry(tile_id, ds, fractions))
        if i < n_tiles:
            items = sorted({s for g in entries for s in g["source_items"]})
            record = tile_record(
                tile_id=tile_id,
                epsg=EPSG,
                bounds=(x0, y0 - tile_m, x0 + tile_m, y0),
                spec=spec,
                status="complete",
                reason="",
                groups=entries,
                items=items,
                written_at=WRITTEN_AT,
            )
            store.write_record(tile_id, record)
            out.append(tile_id)
    for j in range(empty_tiles):
        tile_id = f"{tile_prefix}E{j:02d}"
        record = tile_record(
            tile_id=tile_id,
            epsg=EPSG,
            bounds=(0.0, 0.0, tile_m, tile_m),
            spec=spec,
            status="empty",
            reason="no items touch this tile",
            groups=[],
            written_at=WRITTEN_AT,
        )
        store.write_record(tile_id, record)
    return out
