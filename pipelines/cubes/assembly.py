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
loading (a truncated COG) are diagnosed by
:func:`~pipelines.cubes.diagnosis.diagnose_read_failure` and retried without them by the writer
(:mod:`pipelines.cubes`). Access is never a bad input: hrefs are signed and credentials added per
the registry's access rule of the catalog (:func:`~pipelines.cubes.reading.cube_access`), and a
refused read (HTTP 401/403/409, missing credentials) raises
:class:`~pipelines.registry.AccessDeniedError`, so the tile fails unrecorded and is retried next run.

odc-stac traps handled here: it needs every requested band in every item (items are checked and
patched to carry only the needed assets, with the registry's dtype/nodata); it wants ``nodata``
per asset (quality assets get their fill value, so areas outside an item read as invalid); items
with ``proj:code`` or ``proj:epsg`` both work (pystac migrates them); ``groupby="solar_day"``.

Homes: this module selects and prepares the items of each (collection, band set) and builds the
:class:`~pipelines.cubes.tilecube.TileCube` (:mod:`pipelines.cubes.tilecube`); one group's load,
its block encoding and solar-day fusing are :mod:`pipelines.cubes.group_load`; the diagnosis of
failed reads is :mod:`pipelines.cubes.diagnosis`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from pipelines.cubes.group_load import PreparedItem, load_group
from pipelines.cubes.hosts import FailedHosts
from pipelines.cubes.reading import (
    MASK_DTYPE,
    CubeAccess,
    _absolute_href,
    _Header,
    _proj_missing,
    access_denied,
    ask_again,
    configure_reads,
    cube_access,
    item_datetime,
    items_touching,
    open_headers,
)
from pipelines.cubes.spec import CubeSpec, SkippedAsset
from pipelines.cubes.tilecube import TileCube
from pipelines.registry import CollectionSpec
from pipelines.retry import is_access_denied
from pipelines.tiling import Tile

log = logging.getLogger(__name__)


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
        ds = load_group(cube, cs, label, gsd, bands, use)
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
) -> list[PreparedItem]:
    spec = cube.spec
    read_options = access.read_options
    out: list[PreparedItem] = []
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
        out.append(PreparedItem(item_id, patched, when, cs.conversion(item.get("properties") or {}), bad))
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
