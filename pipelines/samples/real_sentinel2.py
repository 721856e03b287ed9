"""STAC items for the real Sentinel-2 samples: an Earth Search item re-pointed at local COGs, and a SAFE product."""

from __future__ import annotations

import json
import logging
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pystac

from pipelines.registry import load_registry
from pipelines.samples.real_assets import (
    CATALOG,
    JP2_MEDIA_TYPE,
    RasterInfo,
    _band_asset,
    _finest,
    _finish,
    _num,
    _raster_band,
    _uri,
    raster_info,
)
from pipelines.samples.stac_fields import GRID_SCHEMA, MGRS_SCHEMA

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Sentinel-2 L2A: Earth Search item + COGs


def s2_earth_search_item(item_json: Path, data_dir: Path | None = None) -> pystac.Item:
    """The real Earth Search item, hrefs rewritten to the local COGs (``data_dir``, default: beside it).

    Assets whose file is absent (the JP2 mirrors, thumbnails, metadata) are dropped. proj:shape and
    proj:transform, ``gsd`` and ``raster:bands.spatial_resolution`` come from the files (the sample is
    decimated 10x: 10 m bands at 100 m ...); reflectance assets get the registry's scale/offset.
    """
    item_json = Path(item_json)
    folder = Path(data_dir) if data_dir is not None else item_json.parent
    d = json.loads(item_json.read_text())
    d["collection"] = "sentinel-2-l2a"
    cs = load_registry().collection("sentinel-2-l2a", CATALOG)
    band_keys = {key: band for band, key in cs.assets.items()}
    props = d["properties"]
    assets: dict[str, Any] = {}
    infos: list[RasterInfo] = []
    for key, asset in d.get("assets", {}).items():
        local = folder / str(asset["href"]).rsplit("/", 1)[-1]
        if not local.is_file():
            continue
        a = dict(asset)
        a["href"] = _uri(local)
        if local.suffix.lower() in (".tif", ".tiff", ".jp2"):
            info = raster_info(local)
            infos.append(info)
            a.update(info.proj_asset)
            if "gsd" in a:
                a["gsd"] = _num(info.res)
            bands = [dict(rb) for rb in a.get("raster:bands", [])]
            for rb in bands:
                rb["spatial_resolution"] = _num(info.res)
            if key in band_keys:
                scale, offset = cs.scale_offset(props)
                for rb in bands:
                    rb["scale"], rb["offset"] = scale, round(offset, 12)
            if bands:
                a["raster:bands"] = bands
        assets[key] = a
    if not infos:
        raise FileNotFoundError(f"{item_json}: none of its raster assets exist in {folder}")
    d["assets"] = assets
    return _finish(d, _finest(infos))


# ---------------------------------------------------------------------------------------------
# Sentinel-2 L2A: SAFE product


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find(root: ET.Element, name: str) -> ET.Element | None:
    for el in root.iter():
        if _local(el.tag) == name:
            return el
    return None


def _text(root: ET.Element, name: str) -> str:
    el = _find(root, name)
    if el is None or el.text is None:
        raise ValueError(f"metadata element {name!r} not found")
    return el.text.strip()


def _band_name(physical: str) -> str:
    """SAFE physical band (B1, B8A, B12) -> registry name (B01, B8A, B12)."""
    m = re.fullmatch(r"B(\d+)(A?)", physical)
    if not m:
        return physical
    return f"B{int(m.group(1)):02d}" if not m.group(2) else f"B{int(m.group(1))}A"


_S2_AUX_ASSETS = {"SCL": "scl", "AOT": "aot", "WVP": "wvp", "TCI": "visual"}


_S2_QI_KEYS = {
    "NODATA_PIXEL_PERCENTAGE": "s2:nodata_pixel_percentage",
    "SATURATED_DEFECTIVE_PIXEL_PERCENTAGE": "s2:saturated_defective_pixel_percentage",
    "DARK_FEATURES_PERCENTAGE": "s2:dark_features_percentage",
    "CLOUD_SHADOW_PERCENTAGE": "s2:cloud_shadow_percentage",
    "VEGETATION_PERCENTAGE": "s2:vegetation_percentage",
    "NOT_VEGETATED_PERCENTAGE": "s2:not_vegetated_percentage",
    "WATER_PERCENTAGE": "s2:water_percentage",
    "UNCLASSIFIED_PERCENTAGE": "s2:unclassified_percentage",
    "MEDIUM_PROBA_CLOUDS_PERCENTAGE": "s2:medium_proba_clouds_percentage",
    "HIGH_PROBA_CLOUDS_PERCENTAGE": "s2:high_proba_clouds_percentage",
    "THIN_CIRRUS_PERCENTAGE": "s2:thin_cirrus_percentage",
    "SNOW_ICE_PERCENTAGE": "s2:snow_ice_percentage",
}


def s2_safe_item(safe_dir: Path, resolution: int = 60) -> pystac.Item:
    """An Earth-Search-style item from a Sentinel-2 L2A SAFE (``GRANULE/*/IMG_DATA/R{resolution}m``).

    The product's own metadata decides the encoding: ``s2:processing_baseline`` (04.00 here) and the
    per-band ``BOA_ADD_OFFSET`` (kept as ``s2:boa_add_offset``); there is no
    ``earthsearch:boa_offset_applied``, so the registry rule gives reflectance = (DN - 1000) / 10000.
    """
    safe_dir = Path(safe_dir)
    mtd = ET.parse(safe_dir / "MTD_MSIL2A.xml").getroot()
    granules = sorted(safe_dir.glob("GRANULE/*/MTD_TL.xml"))
    if not granules:
        raise FileNotFoundError(f"{safe_dir}: no GRANULE/*/MTD_TL.xml")
    tile = ET.parse(granules[0]).getroot()
    granule_dir = granules[0].parent
    img_dir = granule_dir / "IMG_DATA" / f"R{resolution}m"

    product_uri = _text(mtd, "PRODUCT_URI")
    baseline = _text(mtd, "PROCESSING_BASELINE")
    spacecraft = _text(mtd, "SPACECRAFT_NAME")  # Sentinel-2A
    platform = spacecraft.lower()
    sensing = _text(tile, "SENSING_TIME")
    tile_id = _text(tile, "TILE_ID")
    m = re.search(r"_T(\d{2})([A-Z])([A-Z]{2})_", tile_id) or re.search(
        r"_T(\d{2})([A-Z])([A-Z]{2})_", product_uri
    )
    if not m:
        raise ValueError(f"{safe_dir}: cannot find the MGRS tile in {tile_id!r}")
    zone, lat_band, square = int(m.group(1)), m.group(2), m.group(3)
    when = datetime.fromisoformat(sensing.replace("Z", "+00:00")).astimezone(UTC)
    item_id = f"S2{platform[-1].upper()}_{zone}{lat_band}{square}_{when:%Y%m%d}_0_L2A"

    physical = {
        el.get("bandId"): _band_name(el.get("physicalBand", ""))
        for el in mtd.iter()
        if _local(el.tag) == "Spectral_Information"
    }
    boa_offsets = {
        physical.get(el.get("band_id"), el.get("band_id")): _num(float(el.text or 0))
        for el in mtd.iter()
        if _local(el.tag) == "BOA_ADD_OFFSET"
    }
    quant = _find(mtd, "BOA_QUANTIFICATION_VALUE")
    nodata = 0
    for sv in mtd.iter():
        text = _find(sv, "SPECIAL_VALUE_TEXT") if _local(sv.tag) == "Special_Values" else None
        if text is not None and (text.text or "").strip() == "NODATA":
            nodata = int(_text(sv, "SPECIAL_VALUE_INDEX"))

    props: dict[str, Any] = {
        "datetime": when.isoformat().replace("+00:00", "Z"),
        "created": _text(mtd, "GENERATION_TIME"),
        "updated": _text(mtd, "GENERATION_TIME"),
        "platform": platform,
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": float(_text(mtd, "Cloud_Coverage_Assessment")),
        "mgrs:utm_zone": zone,
        "mgrs:latitude_band": lat_band,
        "mgrs:grid_square": square,
        "grid:code": f"MGRS-{zone}{lat_band}{square}",
        "s2:product_type": _text(mtd, "PRODUCT_TYPE"),
        "s2:processing_baseline": baseline,
        "s2:product_uri": product_uri,
        "s2:generation_time": _text(mtd, "GENERATION_TIME"),
        "s2:datatake_type": _text(mtd, "DATATAKE_TYPE"),
        "s2:granule_id": tile_id,
        "s2:datastrip_id": _text(tile, "DATASTRIP_ID"),
        "s2:boa_add_offset": dict(sorted(boa_offsets.items())),
    }
    if quant is not None and quant.text:
        props["s2:boa_quantification_value"] = _num(float(quant.text))
    for xml_key, stac_key in _S2_QI_KEYS.items():
        el = _find(mtd, xml_key)
        if el is not None and el.text:
            props[stac_key] = float(el.text)

    cs = load_registry().collection("sentinel-2-l2a", CATALOG)
    assets: dict[str, Any] = {}
    infos: list[RasterInfo] = []
    for path in sorted(img_dir.glob(f"*_{resolution}m.jp2")):
        code = path.stem.split("_")[-2]  # T29UNU_20221005T115411_B04_60m -> B04
        if code in cs.assets:
            key = cs.assets[code]
            asset, info = _band_asset(
                path, key, cs, code, props, media_type=JP2_MEDIA_TYPE, title=f"{code} - {resolution}m"
            )
            asset["raster:bands"][0]["nodata"] = nodata
        elif code in _S2_AUX_ASSETS:
            key = _S2_AUX_ASSETS[code]
            info = raster_info(path)
            rbs: list[dict[str, Any]]
            if code in ("AOT", "WVP"):
                q = _find(mtd, f"{code}_QUANTIFICATION_VALUE")
                scale = 1.0 / float(q.text) if q is not None and q.text else 0.001
                rbs = [
                    _raster_band(
                        info, nodata=0, scale=scale, offset=0.0, unit="cm" if code == "WVP" else None
                    )
                ]
            else:
                rbs = [_raster_band(info, nodata=0) for _ in range(info.count)]
            asset = {
                "href": _uri(path),
                "type": JP2_MEDIA_TYPE,
                "title": f"{code} - {resolution}m",
                "roles": ["cloud", "data"] if code == "SCL" else (["visual"] if code == "TCI" else ["data"]),
                "gsd": _num(info.res),
                **info.proj_asset,
                "raster:bands": rbs,
            }
        else:
            continue
        infos.append(info)
        assets[key] = asset
    if not infos:
        raise FileNotFoundError(f"{img_dir}: no *_{resolution}m.jp2 files")
    assets["product_metadata"] = {
        "href": _uri(safe_dir / "MTD_MSIL2A.xml"),
        "type": "application/xml",
        "roles": ["metadata"],
    }
    assets["granule_metadata"] = {"href": _uri(granules[0]), "type": "application/xml", "roles": ["metadata"]}

    geometry: dict[str, Any] | None = None
    ring: list[list[float]] = []
    pos = _find(mtd, "EXT_POS_LIST")
    if pos is not None and pos.text:
        vals = [float(v) for v in pos.text.split()]
        ring = [[round(vals[i + 1], 7), round(vals[i], 7)] for i in range(0, len(vals) - 1, 2)]
        if ring and ring[0] != ring[-1]:
            ring.append(ring[0])
        geometry = {"type": "Polygon", "coordinates": [ring]}
    d: dict[str, Any] = {
        "type": "Feature",
        "id": item_id,
        "collection": "sentinel-2-l2a",
        "geometry": geometry,
        "properties": props,
        "links": [],
        "assets": assets,
        "stac_extensions": [
            MGRS_SCHEMA,
            GRID_SCHEMA,
        ],
    }
    if ring:
        lons = [p[0] for p in ring]
        lats = [p[1] for p in ring]
        d["bbox"] = [min(lons), min(lats), max(lons), max(lats)]
    return _finish(d, _finest(infos))
