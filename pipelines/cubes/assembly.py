"""Cube assembly for one tile: STAC items -> per-(collection, GSD) reflectance datasets.

For every requested collection and every native GSD group of its sensor (Sentinel-2: 10/20/60 m;
Landsat, HLS: 30 m; MODIS: 463.3 m) there is one ``odc.stac.load`` onto the tile's GeoBox at that
GSD (:meth:`pipelines.tiling.Tile.geobox`), its lattice moved by less than a pixel onto the items'
native pixel grid (:func:`pipelines.cubes.lattice.native_lattice`, so native pixels are pasted, not
shifted), grouped by solar day, lazily (dask, one chunk per output shard). Then, block by block:

* the item's :class:`~pipelines.registry.ReflectanceConversion` is applied once (decided per item
  by :meth:`~pipelines.registry.CollectionSpec.conversion`: the collection's scale/offset and the
  Sentinel-2 baseline >= 04.00 -1000 DN rule from the item's own metadata; odc-stac applies none of it);
* pixels are masked where the registry's :meth:`~pipelines.registry.MaskRule.invalid` flags
  cloud/shadow/fill, or the DN is nodata (the conversion's ``missing``);
* reflectance is encoded compactly: int16 = round(reflectance * 1e4) with -32768 for missing
  (``scale_factor=1e-4``, ``_FillValue=-32768`` so xarray decodes it to NaN), or float16 with NaN.

Bad inputs never crash a tile: items without a needed band asset, without projection metadata,
with an asset that is not there (HTTP 404/410) or has a corrupt header are left out of the groups
that need that asset and recorded as :class:`~pipelines.cubes.spec.SkippedAsset`; read failures that only show up while
loading (a truncated COG) are diagnosed by :func:`diagnose_read_failure` and retried without them
by the writer (:mod:`pipelines.cubes`). Access is never a bad input: hrefs are signed and
credentials added per the registry's access rule of the catalog (:func:`~pipelines.cubes.reading.cube_access`),
and a refused read (HTTP 401/403/409, missing credentials) raises
:class:`~pipelines.registry.AccessDeniedError`, so the tile fails unrecorded and is retried next run.

odc-stac traps handled here: it needs every requested band in every item (items are checked and
patched to carry only the needed assets, with the registry's dtype/nodata); it wants ``nodata``
per asset (quality assets get their fill value, so areas outside an item read as invalid); items
with ``proj:code`` or ``proj:epsg`` both work (pystac migrates them); ``groupby="solar_day"``.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from pipelines.cubes.hosts import FailedHosts
from pipelines.cubes.lattice import native_lattice
from pipelines.cubes.reading import (
    MASK_DTYPE,
    CubeAccess,
    _absolute_href,
    _Header,
    _proj_missing,
    access_denied,
    ask_again,
    cid_label,
    classify_error,
    configure_reads,
    cube_access,
    forget_failed_reads,
    item_datetime,
    items_touching,
    open_headers,
    read_window_check,
    solar_day,
)
from pipelines.cubes.spec import (
    INT16_FILL,
    INT16_MAX,
    INT16_SCALE,
    LAYOUT_VERSION,
    CubeSpec,
    SkippedAsset,
    reflectance_attrs,
)
from pipelines.registry import CollectionSpec, MaskRule, ReflectanceConversion
from pipelines.retry import is_access_denied
from pipelines.storage import json_safe
from pipelines.tiling import Tile

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Encoding (numpy, per block)


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


def decode(ds: xr.Dataset) -> xr.Dataset:
    """Stored (encoded) dataset -> float32 reflectance with NaN, the same way a Zarr reader decodes it."""
    out = xr.decode_cf(ds)
    out["reflectance"] = out["reflectance"].astype(np.float32)
    out["reflectance"].attrs.pop("_FillValue", None)
    return out


# ---------------------------------------------------------------------------------------------
# The tile cube


@dataclass
class TileCube(Mapping[tuple[str, str], xr.Dataset]):
    """Datasets of one tile keyed by ``(collection, gsd_label)``.

    ``cube[key]`` is the decoded view (float32 reflectance with NaN, lazy); ``cube.encoded[key]``
    is exactly what the store holds. ``skipped`` lists the (item, asset) pairs left out and why;
    ``sources[key]`` the ``(item id, asset key, href)`` each group reads.
    """

    tile: Tile
    spec: CubeSpec
    encoded: dict[tuple[str, str], xr.Dataset] = field(default_factory=dict)
    skipped: list[SkippedAsset] = field(default_factory=list)
    sources: dict[tuple[str, str], list[tuple[str, str, str]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    read_options: Mapping[str, Any] | None = field(default=None, repr=False)
    """The read options the groups were built with (credentials included: memory only, never recorded)."""
    failed_hosts: FailedHosts | None = field(default=None, repr=False)
    """Hosts that failed transiently in this build, asked no more (none with ``skip_unreachable``)."""

    def __getitem__(self, key: tuple[str, str]) -> xr.Dataset:
        return decode(self.encoded[key])

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.encoded)

    def __len__(self) -> int:
        return len(self.encoded)

    @property
    def item_ids(self) -> list[str]:
        """Ids of the items read by at least one group."""
        return sorted({s[0] for srcs in self.sources.values() for s in srcs})


@dataclass
class _Prepared:
    item_id: str
    item: dict[str, Any]  # patched copy: only the needed assets, absolute hrefs, registry dtype/nodata
    when: dt.datetime
    conversion: ReflectanceConversion  # this item's DN -> reflectance (registry, per item)
    bad_assets: set[str]


def assemble_tile(
    tile: Tile,
    items: Sequence[Mapping[str, Any]],
    spec: CubeSpec,
    *,
    exclude: Collection[tuple[str, str]] = (),
    read_options: Mapping[str, Any] | None = None,
) -> TileCube:
    """Lazy cube of one tile (nothing is read until computed, except asset headers in preflight).

    ``items``: STAC item dicts (any order; those not touching the tile or of other collections are
    ignored). ``exclude``: (item id, asset key) pairs to leave out (the writer's retry after a read
    failure). ``read_options``: GDAL config options for opening assets, plus ``aws_session``
    (rasterio ``AWSSession`` arguments) for private buckets; never exported, never recorded.
    A host whose read fails transiently is asked no more by this build (preflight, diagnosis):
    :class:`~pipelines.cubes.hosts.FailedHosts`, none with ``skip_unreachable``.
    """
    cube = TileCube(tile=tile, spec=spec, failed_hosts=None if spec.skip_unreachable else FailedHosts())
    touching = items_touching(tile, items)
    by_collection: dict[str, list[Mapping[str, Any]]] = {c: [] for c in spec.collections}
    registry = spec.registry()
    for item in touching:
        cid = item.get("collection")
        if cid is None and len(spec.collections) == 1:
            cid = spec.collections[0]
        elif cid is not None:  # a catalog's other spelling (HLSS30.v2.0) is the same collection
            cid = registry.canonical_collection(spec.catalog, str(cid))
        if cid in by_collection:
            by_collection[str(cid)].append(item)
    excluded = {(str(i), str(a)) for i, a in exclude}
    wanted = [cid for cid, citems in by_collection.items() if citems]
    if not wanted:
        return cube
    access = cube_access(spec.catalog, wanted, read_options, registry)
    cube.read_options = access.read_options
    configure_reads(access.read_options)
    for cid in wanted:
        _assemble_collection(cube, cid, by_collection[cid], excluded, access)
    return cube


def _assemble_collection(
    cube: TileCube,
    cid: str,
    items: list[Mapping[str, Any]],
    excluded: set[tuple[str, str]],
    access: CubeAccess,
) -> None:
    variants = cube.spec.variant_groups(cid)
    by_variant: dict[int, list[Mapping[str, Any]]] = {}
    for item in items:  # each item to the band set of its instrument (Landsat TM / ETM+ / OLI)
        chosen = next((i for i, (vcs, _) in enumerate(variants) if vcs.serves(item)), None)
        if chosen is None:
            platform = (item.get("properties") or {}).get("platform")
            known = sorted({p for vcs, _ in variants for p in vcs.platforms})
            cube.skipped.append(
                SkippedAsset(
                    str(item.get("id") or "?"),
                    "*",
                    f"platform {platform!r} has no band set for {cid} in the registry (known: {', '.join(known)})",
                )
            )
            continue
        by_variant.setdefault(chosen, []).append(item)
    for i, (cs, groups) in enumerate(variants):
        if by_variant.get(i):
            _assemble_variant(cube, cid, cs, groups, by_variant[i], excluded, access)


def _assemble_variant(
    cube: TileCube,
    cid: str,
    cs: CollectionSpec,
    groups: Mapping[str, tuple[float, tuple[str, ...]]],
    items: list[Mapping[str, Any]],
    excluded: set[tuple[str, str]],
    access: CubeAccess,
) -> None:
    mask_assets = cs.mask.mask_assets()
    needed = list(
        dict.fromkeys([cs.assets[b] for _, bands in groups.values() for b in bands] + list(mask_assets))
    )
    prepared = _prepare_items(cube, cs, items, needed, mask_assets, excluded, access)
    if not prepared:
        return
    for label, (gsd, bands) in groups.items():
        assets = [cs.assets[b] for b in bands]
        use = [p for p in prepared if not (p.bad_assets & (set(assets) | set(mask_assets)))]
        if not use:
            continue
        ds = _load_group(cube, cs, label, gsd, bands, use)
        if ds is not None:
            cube.encoded[(cid, label)] = ds


def _prepare_items(
    cube: TileCube,
    cs: CollectionSpec,
    items: list[Mapping[str, Any]],
    needed: list[str],
    mask_assets: tuple[str, ...],
    excluded: set[tuple[str, str]],
    access: CubeAccess,
) -> list[_Prepared]:
    spec = cube.spec
    read_options = access.read_options
    out: list[_Prepared] = []
    seen: set[str] = set()
    mask_dtype = {a: MASK_DTYPE for a in mask_assets}

    def skip(item_id: str, asset: str, reason: str, transient: bool = False) -> None:
        cube.skipped.append(SkippedAsset(item_id, asset, reason, transient))

    for item in sorted(items, key=lambda i: str(i.get("id"))):
        item_id = str(item.get("id") or "")
        if not item_id or item_id in seen:
            if item_id:
                continue  # duplicate id: the first one wins
            skip("?", "*", "item has no id")
            continue
        seen.add(item_id)
        when = item_datetime(item)
        if when is None:
            skip(item_id, "*", "item has no datetime/start_datetime")
            continue
        src_assets = item.get("assets") or {}
        bad: set[str] = set()
        for key in needed:
            if (item_id, key) in excluded:
                bad.add(key)
            elif key not in src_assets or not (src_assets[key] or {}).get("href"):
                role = "quality asset" if key in mask_assets else f"band {cs.band_for_asset(key)} asset"
                skip(item_id, key, f"{role} {key!r} missing from the item")
                bad.add(key)
        if set(mask_assets) & bad:
            continue  # cannot mask clouds without the quality asset: the item is unusable
        present = [k for k in needed if k not in bad]
        no_proj = [k for k in present if _proj_missing(item, k)]
        if no_proj and spec.missing_proj == "skip":
            fields = ", ".join(_proj_missing(item, no_proj[0]))
            skip(item_id, ",".join(no_proj), f"no projection metadata ({fields})")
            continue
        hrefs = {
            k: access.sign(cs.collection, _absolute_href(str(src_assets[k]["href"]), item)) for k in present
        }
        ask_again(hrefs.values())  # what failed transiently before (GDAL's cache of it) is asked again
        headers: dict[str, _Header] = {}
        if spec.preflight or no_proj:
            check = present if spec.preflight else no_proj
            opened = open_headers([hrefs[k] for k in check], read_options, cube.failed_hosts)
            for key, res in zip(check, opened):
                if isinstance(res, _Header):
                    headers[key] = res
                else:
                    reason, transient = res
                    if is_access_denied(reason):
                        raise access_denied(
                            spec.registry(), spec.catalog, cs.collection, item_id, key, reason
                        )
                    if transient and not spec.skip_unreachable:
                        reason = f"{reason} (unreachable: the tile is retried on the next run)"
                    skip(item_id, key, reason, transient)
                    bad.add(key)
        if set(mask_assets) & bad:
            continue
        patched_assets: dict[str, Any] = {}
        for key in present:
            if key in bad:
                continue
            asset = {
                k: v
                for k, v in dict(src_assets[key]).items()
                if k not in ("bands", "raster:bands", "eo:bands")
            }
            asset["href"] = hrefs[key]
            if key in mask_dtype:
                asset["data_type"] = MASK_DTYPE
                asset["nodata"] = cs.mask.fill_value if cs.mask.fill_value is not None else 0
            else:
                asset["data_type"] = cs.dtype
                asset["nodata"] = (
                    cs.nodata if cs.nodata is not None else (float("nan") if cs.dtype.startswith("f") else 0)
                )
            if key in no_proj and key in headers:
                h = headers[key]
                asset.update(
                    {"proj:code": h.crs, "proj:shape": list(h.shape), "proj:transform": list(h.transform)}
                )
            patched_assets[key] = asset
        patched = {k: v for k, v in item.items() if k not in ("assets", "links")}
        patched["assets"] = patched_assets
        # no links: hrefs are absolute already, and pystac would resolve an absolute local path
        # against a remote self link (s3://bucket + /local/path)
        patched["links"] = []
        patched["collection"] = cs.collection
        if no_proj:
            exts = list(patched.get("stac_extensions") or [])
            if not any("/projection/" in e for e in exts):
                exts.append("https://stac-extensions.github.io/projection/v2.0.0/schema.json")
            patched["stac_extensions"] = exts
        _warn_contradiction(cube, cs, item)
        out.append(_Prepared(item_id, patched, when, cs.conversion(item.get("properties") or {}), bad))
    return out


_WARNED: set[tuple[str, str]] = set()


def _warn_contradiction(cube: TileCube, cs: CollectionSpec, item: Mapping[str, Any]) -> None:
    """Note an item whose metadata contradicts itself about its offset (logged once per collection)."""
    said = cs.contradiction(item)
    if said is None:
        return
    cube.notes.append(said)
    if cs.key not in _WARNED:
        _WARNED.add(cs.key)
        log.warning("%s (further items of this collection are not reported)", said)


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


def _load_group(
    cube: TileCube,
    cs: CollectionSpec,
    label: str,
    gsd: float,
    bands: tuple[str, ...],
    items: list[_Prepared],
) -> xr.Dataset | None:
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
    by_day: dict[dt.date, list[_Prepared]] = {}
    for p in sorted(items, key=lambda p: (p.when, p.item_id)):
        by_day.setdefault(solar_day(p.when, mid_lon), []).append(p)
    partitions: dict[tuple[int, float, float], list[_Prepared]] = {}
    for plist in by_day.values():
        for rank, p in enumerate(plist):
            partitions.setdefault((rank, p.conversion.scale, p.conversion.offset), []).append(p)

    day_parts: dict[dt.date, list[Any]] = {}
    day_items: dict[dt.date, list[_Prepared]] = {}
    for _key, part in sorted(partitions.items(), key=lambda kv: kv[0]):
        days: dict[dt.date, list[_Prepared]] = {}
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


def unreachable_reason(skipped: Sequence[SkippedAsset]) -> str:
    """Why a tile must fail because some of its assets could not be read for a reason that passes
    (network, server, local I/O errors; :func:`~pipelines.cubes.reading.classify_error`), or ``""``."""
    transient = [s for s in skipped if s.transient]
    if not transient:
        return ""
    s = transient[0]
    return f"{len(transient)} asset(s) unreachable, e.g. {s.item}:{s.asset}: {s.reason}"


def diagnose_read_failure(
    cube: TileCube,
    key: tuple[str, str] | None = None,
    read_options: Mapping[str, Any] | None = None,
    error: BaseException | None = None,
) -> list[SkippedAsset]:
    """After a load failed (with ``error``): read each source asset of the group(s) over the tile; the ones that
    fail (at once those on a host that failed transiently earlier in the build: ``cube.failed_hosts``, told
    first of the host ``error`` names when that failure was transient: its retry chain is spent)."""
    keys = [key] if key is not None else list(cube.sources)
    read_options = cube.read_options if cube.read_options is not None else read_options
    if error is not None and cube.failed_hosts is not None and (failure := classify_error(error))[1]:
        hrefs = [href for k in keys for _, _, href in cube.sources.get(k, [])]
        cube.failed_hosts.add_named(error, hrefs, failure[0])
    seen: set[tuple[str, str]] = set()
    found: list[SkippedAsset] = []
    for k in keys:
        for item_id, asset, href in cube.sources.get(k, []):
            if (item_id, asset) in seen:
                continue
            seen.add((item_id, asset))
            res = read_window_check(href, cube.tile, read_options, cube.failed_hosts)
            if res is not None:
                reason, transient = res
                if is_access_denied(reason):
                    forget_failed_reads([href])
                    raise access_denied(cube.spec.registry(), cube.spec.catalog, k[0], item_id, asset, reason)
                found.append(SkippedAsset(item_id, asset, reason, transient))
    return found
