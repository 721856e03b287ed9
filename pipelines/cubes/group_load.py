"""One group of a tile: odc-stac onto the group's native lattice, per-item masking and encoding
block by block, solar-day fusing, the group's Dataset.

:func:`load_group` runs one ``odc.stac.load`` per partition of the items (their conversion, their
rank within the solar day) onto the tile's GeoBox at the group's GSD, its lattice moved onto the
items' native pixel grid (:func:`pipelines.cubes.lattice.native_lattice`), lazily (dask, one chunk
per output shard); :func:`encode_block` applies each item's registry conversion and mask and
encodes, :func:`fuse_first_valid` fuses items of one solar day (first valid pixel, in time order).
The items come prepared by the assembly (:class:`PreparedItem`, :mod:`pipelines.cubes.assembly`).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from pipelines.cubes.lattice import native_lattice
from pipelines.cubes.reading import cid_label, solar_day
from pipelines.cubes.spec import (
    INT16_FILL,
    INT16_MAX,
    INT16_SCALE,
    LAYOUT_VERSION,
    CubeSpec,
    reflectance_attrs,
)
from pipelines.cubes.tilecube import TileCube
from pipelines.registry import CollectionSpec, MaskRule, ReflectanceConversion
from pipelines.storage import json_safe


def encode_block(
    dn: np.ndarray,
    qa: np.ndarray,
    *,
    conversion: ReflectanceConversion,
    mask: MaskRule,
    encoding: str,
) -> np.ndarray:
    """Raw DNs (t, band, y, x) + quality (t, 1|band, y, x) -> encoded reflectance (same shape).

    The conversion and the mask are the registry's (one implementation each); this function only
    combines them and encodes: int16 quanta of :data:`INT16_SCALE` clipped to +-INT16_MAX with
    INT16_FILL where missing, or float16 with NaN.
    """
    bad = np.broadcast_to(mask.invalid(qa), dn.shape) | conversion.missing(dn)
    if encoding == "int16":
        q = conversion.quantised(dn, INT16_SCALE)
        out = np.clip(q, -INT16_MAX, INT16_MAX).astype(np.int16)
        out[bad] = INT16_FILL
        return out
    refl = conversion.reflectance(dn).astype(np.float16)
    refl[bad] = np.nan
    return refl


def fuse_first_valid(a: np.ndarray, b: np.ndarray, encoding: str) -> np.ndarray:
    """Pixels of ``a`` where valid, else ``b`` (two items of the same solar day, already masked)."""
    missing = np.isnan(a) if encoding == "float16" else a == INT16_FILL
    return np.where(missing, b, a)


@dataclass
class PreparedItem:
    """One item as a group load reads it (:func:`load_group`), prepared by the assembly
    (:mod:`pipelines.cubes.assembly`)."""

    item_id: str
    item: dict[str, Any]  # patched copy: only the needed assets, absolute hrefs, registry dtype/nodata
    when: dt.datetime
    conversion: ReflectanceConversion  # this item's DN -> reflectance (registry, per item)
    bad_assets: set[str]


def _chunking(shape: tuple[int, int], spec: CubeSpec) -> tuple[tuple[int, int], tuple[int, int]]:
    """((chunk_y, chunk_x), (shard_y, shard_x)) for a group of ``shape`` pixels."""
    chunks = []
    shards = []
    for n in shape:
        c = min(spec.chunk_px, n)
        full = math.ceil(n / c) * c
        chunks.append(c)
        shards.append(min(full, max(c, spec.shard_px // c * c)))
    return (chunks[0], chunks[1]), (shards[0], shards[1])


def load_group(
    cube: TileCube,
    cs: CollectionSpec,
    label: str,
    gsd: float,
    bands: tuple[str, ...],
    items: list[PreparedItem],
) -> xr.Dataset | None:
    """One group of ``cube``'s tile (``cs``'s ``bands`` at ``gsd``, named ``label``) from the prepared
    ``items``, lazily (dask); the ``(item, asset, href)`` it reads go to ``cube.sources``."""
    import dask.array as da
    import odc.geo.xr
    import odc.stac
    import pystac
    from odc.geo.xr import xr_coords

    spec, tile = cube.spec, cube.tile
    band_assets = [cs.assets[b] for b in bands]
    lattice = native_lattice(tile, gsd, [p.item for p in items], band_assets)  # the items' own pixel grid
    gbox = tile.geobox(gsd, lattice.shift_m)
    ((mid_lon, _),) = gbox.extent.centroid.to_crs("epsg:4326").points
    (cy, cx), (sy, sx) = _chunking(gbox.shape, spec)
    if cs.mask.per_band_assets:
        qa_assets = [cs.mask.per_band_assets.get(b) or cs.mask.asset or "" for b in bands]
    else:
        qa_assets = [cs.mask.asset or ""]
    load_assets = list(dict.fromkeys(band_assets + qa_assets))

    # Partitions, one odc-stac load each (normally exactly one): items are split by their
    # conversion (scale, offset) and by their rank within the solar day, so each item is masked with its own
    # quality asset *before* items of the same day are fused (first valid pixel, in time order);
    # odc-stac's own fusing would keep an earlier item's cloudy pixels over a later clear one.
    by_day: dict[dt.date, list[PreparedItem]] = {}
    for p in sorted(items, key=lambda p: (p.when, p.item_id)):
        by_day.setdefault(solar_day(p.when, mid_lon), []).append(p)
    partitions: dict[tuple[int, float, float], list[PreparedItem]] = {}
    for plist in by_day.values():
        for rank, p in enumerate(plist):
            partitions.setdefault((rank, p.conversion.scale, p.conversion.offset), []).append(p)

    day_parts: dict[dt.date, list[Any]] = {}
    day_items: dict[dt.date, list[PreparedItem]] = {}
    for _key, part in sorted(partitions.items(), key=lambda kv: kv[0]):
        days: dict[dt.date, list[PreparedItem]] = {}
        for p in part:
            days.setdefault(solar_day(p.when, mid_lon), []).append(p)
        pitems = [pystac.Item.from_dict(p.item, preserve_dict=True) for p in part]
        ds = odc.stac.load(
            pitems,
            bands=load_assets,
            geobox=gbox,
            groupby="solar_day",
            chunks={"time": 1, "y": sy, "x": sx},
            resampling={"*": spec.resampling, **{a: "nearest" for a in qa_assets}},
            fail_on_error=True,
        )
        if ds.sizes.get("time", 0) != len(days):
            raise RuntimeError(
                f"odc-stac grouped {cid_label(cs, label)} into {ds.sizes.get('time')} solar days, expected {len(days)}"
            )
        dn = da.stack([ds[a].data for a in band_assets], axis=1).rechunk({1: len(band_assets)})
        qa = da.stack([ds[a].data for a in qa_assets], axis=1).rechunk({1: len(qa_assets)})
        enc = da.map_blocks(
            encode_block,
            dn,
            qa,
            dtype=np.int16 if spec.encoding == "int16" else np.float16,
            conversion=part[0].conversion,  # the partition shares (scale, offset); nodata is the collection's
            mask=cs.mask,
            encoding=spec.encoding,
        )
        for t, day in enumerate(sorted(days)):
            day_parts.setdefault(day, []).append(enc[t : t + 1])
            day_items.setdefault(day, []).extend(days[day])

    days_sorted = sorted(day_parts)
    per_day = []
    for day in days_sorted:
        arrs = day_parts[day]
        acc = arrs[0]
        for other in arrs[1:]:
            acc = da.map_blocks(fuse_first_valid, acc, other, encoding=spec.encoding, dtype=acc.dtype)
        per_day.append(acc)
    data = da.concatenate(per_day, axis=0) if len(per_day) > 1 else per_day[0]

    times = []
    source_items = []
    for day in days_sorted:
        group = sorted(day_items[day], key=lambda p: (p.when, p.item_id))
        times.append(np.datetime64(group[0].when.replace(tzinfo=None), "ns"))
        source_items.append(",".join(p.item_id for p in group))
    npix = len(band_assets) * gbox.shape[0] * gbox.shape[1]
    valid = ~da.isnan(data) if spec.encoding == "float16" else data != INT16_FILL
    valid_fraction = (valid.sum(axis=(1, 2, 3)) / float(npix)).astype(np.float32)

    sensor = cs.sensor
    bspecs = [sensor.band(b) for b in bands]
    coords = xr_coords(gbox, crs_coord_name="spatial_ref")
    spatial_ref = coords["spatial_ref"]
    spatial_ref.attrs = json_safe(dict(spatial_ref.attrs))
    out = xr.Dataset(
        {"reflectance": (("time", "band", "y", "x"), data, reflectance_attrs(spec.encoding))},
        coords={
            "time": ("time", np.asarray(times, dtype="datetime64[ns]")),
            "band": ("band", np.asarray(bands, dtype=object)),
            "center_wavelength_nm": (
                "band",
                np.asarray([b.center_wavelength_nm for b in bspecs], dtype=np.float32),
            ),
            "fwhm_nm": ("band", np.asarray([b.fwhm_nm for b in bspecs], dtype=np.float32)),
            "common_name": ("band", np.asarray([b.common_name for b in bspecs], dtype=object)),
            "band_gsd_m": ("band", np.asarray([b.gsd_m for b in bspecs], dtype=np.float32)),
            "source_items": ("time", np.asarray(source_items, dtype=object)),
            "solar_day": ("time", np.asarray([d.isoformat() for d in days_sorted], dtype=object)),
            "valid_fraction": ("time", valid_fraction),
            "y": coords["y"],
            "x": coords["x"],
            "spatial_ref": spatial_ref,
        },
        attrs=json_safe(
            {
                "sensor": sensor.name,
                "collection": cs.collection,
                "catalog": cs.catalog,
                "gsd_m": float(gsd),
                "gsd_label": label,
                "tile_id": tile.tile_id,
                "tile_bounds": list(tile.bounds),
                "encoding": spec.encoding,
                "reflectance_encoding": (
                    "int16: reflectance = stored * 1e-4, -32768 = missing (cloud, shadow, nodata)"
                    if spec.encoding == "int16"
                    else "float16 reflectance, NaN = missing (cloud, shadow, nodata)"
                ),
                "mask_rule": cs.mask_description(),
                "resampling": spec.resampling,
                **lattice.attrs(),
                "time_meaning": "earliest acquisition of the solar day (items fused first-valid in time order)",
                "layout_version": LAYOUT_VERSION,
                "Conventions": "CF-1.8",
            }
        ),
    )
    out["x"].attrs.update({"units": "m", "standard_name": "projection_x_coordinate"})
    out["y"].attrs.update({"units": "m", "standard_name": "projection_y_coordinate"})
    out["center_wavelength_nm"].attrs["units"] = "nm"
    out["fwhm_nm"].attrs["units"] = "nm"
    out["band_gsd_m"].attrs["units"] = "m"
    out["valid_fraction"].attrs["long_name"] = "fraction of pixels (all bands) with valid reflectance"
    out.encoding["aom_chunks"] = (1, 1, cy, cx)
    out.encoding["aom_shards"] = (1, len(bands), sy, sx)
    cube.sources[(cs.collection, label)] = [
        (p.item_id, a, str(p.item["assets"][a]["href"]))
        for day in days_sorted
        for p in day_items[day]
        for a in load_assets
    ]
    return out
