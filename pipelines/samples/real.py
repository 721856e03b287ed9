"""STAC items for the real sample products in ``../shared/data/real`` (read-only, never copied).

Every item gets the eo, raster and projection extensions, absolute ``file://`` asset hrefs to the local
files (only assets whose files exist), ``proj:shape``/``proj:transform`` read from the files themselves
(several products are decimated, so the provider's values would be wrong), and ``raster:bands``
scale/offset that agree with the sensor registry's per-item rule (``CollectionSpec.scale_offset``).

- :func:`s2_earth_search_item`: a real Earth Search Sentinel-2 L2A item JSON next to its COGs (29RKH).
- :func:`s2_safe_item`: a Sentinel-2 L2A SAFE product (T29UNU): MTD_MSIL2A.xml + MTD_TL.xml, R60m JP2s.
- :func:`landsat_usgs_stac_item` / :func:`landsat_mtl_item`: Landsat C2 L2 from the USGS STAC JSON or
  the MTL.json (one scene is polar stereographic EPSG:3031).
- :func:`modis_mcd43a4_item`: MODIS MCD43A4 NBAR tile in the sinusoidal projection (``proj:wkt2``).
- :func:`build_real_items`: find every product under a real-data folder and build them all.
"""

from __future__ import annotations

import logging
import re
from datetime import date
from pathlib import Path
from typing import Any

import pystac
import rasterio

from pipelines.registry import load_registry
from pipelines.samples.real_assets import (
    CATALOG,
    GEOTIFF_MEDIA_TYPE,
    RasterInfo,
    _band_asset,
    _finest,
    _finish,
    _num,
    _raster_band,
    _uri,
    raster_info,
)
from pipelines.samples.real_landsat import landsat_mtl_item, landsat_usgs_stac_item
from pipelines.samples.real_sentinel2 import s2_earth_search_item, s2_safe_item

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# MODIS MCD43A4


def modis_mcd43a4_item(folder: Path) -> pystac.Item:
    """A modis-mcd43a4 item: one asset per band (Nadir_Reflectance_BandN) and per-band QA asset.

    The sinusoidal CRS has no EPSG code, so the item carries ``proj:wkt2`` (and no ``proj:code``).
    """
    folder = Path(folder)
    cs = load_registry().collection("modis-mcd43a4", CATALOG)
    first = sorted(folder.glob("MCD43A4.*_B01.TIF"))
    if not first:
        raise FileNotFoundError(f"{folder}: no MCD43A4.*_B01.TIF")
    product_id = first[0].name[: -len("_B01.TIF")]
    m = re.match(r"MCD43A4\.A(\d{4})(\d{3})\.h(\d{2})v(\d{2})\.", product_id)
    if not m:
        raise ValueError(f"{folder}: cannot parse the product id {product_id!r}")
    day = date.fromordinal(date(int(m.group(1)), 1, 1).toordinal() + int(m.group(2)) - 1)
    with rasterio.open(first[0]) as ds:
        tags = ds.tags()
    props: dict[str, Any] = {
        "datetime": f"{day.isoformat()}T00:00:00Z",
        "platform": "terra",
        "instruments": ["modis"],
        "modis:horizontal-tile": int(m.group(3)),
        "modis:vertical-tile": int(m.group(4)),
    }
    if tags.get("RANGEBEGINNINGDATE") and tags.get("RANGEENDINGDATE"):
        props["start_datetime"] = f"{tags['RANGEBEGINNINGDATE']}T00:00:00Z"
        props["end_datetime"] = f"{tags['RANGEENDINGDATE']}T23:59:59Z"
    if tags.get("PRODUCTIONDATETIME"):
        props["created"] = props["updated"] = tags["PRODUCTIONDATETIME"]
    if tags.get("TileID"):
        props["modis:tile-id"] = tags["TileID"]

    assets: dict[str, Any] = {}
    infos: list[RasterInfo] = []
    for band in cs.band_names:
        path = folder / f"{product_id}_{band}.TIF"
        if not path.is_file():
            continue
        key = cs.assets[band]
        asset, info = _band_asset(path, key, cs, band, props, media_type=GEOTIFF_MEDIA_TYPE, title=key)
        assets[key] = asset
        infos.append(info)
        qa_key = cs.mask.per_band_assets.get(band)
        qa_path = folder / f"{product_id}_{band}qa.TIF"
        if qa_key and qa_path.is_file():
            qinfo = raster_info(qa_path)
            assets[qa_key] = {
                "href": _uri(qa_path),
                "type": GEOTIFF_MEDIA_TYPE,
                "title": qa_key,
                "roles": ["cloud", "data"],
                "gsd": _num(qinfo.res),
                **qinfo.proj_asset,
                "raster:bands": [_raster_band(qinfo, nodata=cs.mask.fill_value)],
            }
    if not infos:
        raise FileNotFoundError(f"{folder}: no band files for {product_id}")
    d: dict[str, Any] = {
        "type": "Feature",
        "id": product_id,
        "collection": "modis-mcd43a4",
        "geometry": None,
        "properties": props,
        "links": [],
        "assets": assets,
        "stac_extensions": [],
    }
    return _finish(d, _finest(infos), footprint=True)


# ---------------------------------------------------------------------------------------------
# Discovery


def build_real_items(real_dir: Path) -> tuple[list[pystac.Item], list[str]]:
    """Every real product found under ``real_dir`` as an item, plus notes on what was skipped."""
    real_dir = Path(real_dir)
    jobs: list[tuple[str, Any, Path]] = []
    for folder in sorted((real_dir / "sentinel-2-l2a-cogs").glob("*/")):
        item_json = folder / f"{folder.name}.json"
        if item_json.is_file():
            jobs.append(("Sentinel-2 COG item", s2_earth_search_item, item_json))
    for safe in sorted((real_dir / "sentinel-2-l2a-safe").glob("*.SAFE")):
        jobs.append(("Sentinel-2 SAFE", s2_safe_item, safe))
    for folder in sorted((real_dir / "landsat-c2-l2").glob("*/")):
        stac = sorted(folder.glob("*_SR_stac.json"))
        mtls = sorted(folder.glob("*_MTL.json"))
        if stac:
            jobs.append(("Landsat USGS STAC", landsat_usgs_stac_item, stac[0]))
        elif mtls:
            jobs.append(("Landsat MTL", landsat_mtl_item, mtls[0]))
    for folder in sorted((real_dir / "modis-mcd43a4").glob("MCD43A4.*/")):
        jobs.append(("MODIS MCD43A4", modis_mcd43a4_item, folder))

    items: list[pystac.Item] = []
    notes: list[str] = []
    for what, build, path in jobs:
        try:
            items.append(build(path))
        except Exception as exc:  # one unreadable product must not sink the catalog
            note = f"{what} {path}: not included ({type(exc).__name__}: {exc})"
            logger.debug(note)  # a note: the caller shows it (aom samples, the demo)
            notes.append(note)
    if not jobs:
        notes.append(f"real-data folder {real_dir} holds no known products: built synthetic items only")
    ids = [it.id for it in items]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"duplicate real item ids: {dupes}")
    logger.info("real: %d items from %s", len(items), real_dir)
    return items, notes
