"""STAC items for the real Landsat Collection 2 Level-2 samples, from their MTL or USGS STAC metadata."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pystac

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
from pipelines.samples.stac_fields import LANDSAT_SCHEMA, VIEW_SCHEMA

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Landsat Collection 2 Level-2

_LANDSAT_KEYS = {
    "SR_B1": "coastal",
    "SR_B2": "blue",
    "SR_B3": "green",
    "SR_B4": "red",
    "SR_B5": "nir08",
    "SR_B6": "swir16",
    "SR_B7": "swir22",
    "ST_B10": "lwir11",
    "QA_PIXEL": "qa_pixel",
    "QA_RADSAT": "qa_radsat",
    "SR_QA_AEROSOL": "qa_aerosol",
    "ST_QA": "qa",
    "ST_TRAD": "trad",
    "ST_URAD": "urad",
    "ST_DRAD": "drad",
    "ST_ATRAN": "atran",
    "ST_EMIS": "emis",
    "ST_EMSD": "emsd",
    "ST_CDIST": "cdist",
}


_LANDSAT_AUX_FILES = {
    "MTL.txt": ("mtl.txt", "text/plain"),
    "MTL.xml": ("mtl.xml", "application/xml"),
    "MTL.json": ("mtl.json", "application/json"),
    "ANG.txt": ("ang", "text/plain"),
    "thumb_small.jpeg": ("thumbnail", "image/jpeg"),
    "thumb_large.jpeg": ("reduced_resolution_browse", "image/jpeg"),
}


# USGS Landsat 8-9 C2 L2 Science Product Guide: ST auxiliary bands are int16, fill -9999.
_LANDSAT_ST_AUX_SCALE = {
    "ST_QA": (0.01, "kelvin"),
    "ST_TRAD": (0.001, "watt/steradian/square_meter/micrometer"),
    "ST_URAD": (0.001, "watt/steradian/square_meter/micrometer"),
    "ST_DRAD": (0.001, "watt/steradian/square_meter/micrometer"),
    "ST_ATRAN": (0.0001, None),
    "ST_EMIS": (0.0001, "emissivity coefficient"),
    "ST_EMSD": (0.0001, "emissivity coefficient"),
    "ST_CDIST": (0.01, "kilometer"),
}


def _mtl(mtl_json: Path) -> dict[str, Any]:
    data = json.loads(Path(mtl_json).read_text())
    return dict(data.get("LANDSAT_METADATA_FILE", data))


def _landsat_datetime(mtl: Mapping[str, Any]) -> str:
    ia = mtl["IMAGE_ATTRIBUTES"]
    t = str(ia.get("SCENE_CENTER_TIME", "00:00:00Z")).rstrip("Z")
    hms, _, frac = t.partition(".")
    frac = (frac + "000000")[:6]
    return f"{ia['DATE_ACQUIRED']}T{hms}.{frac}Z"


def _landsat_item(
    mtl_json: Path, *, geometry: dict[str, Any] | None = None, bbox: list[float] | None = None
) -> pystac.Item:
    mtl_json = Path(mtl_json)
    mtl = _mtl(mtl_json)
    pc = mtl["PRODUCT_CONTENTS"]
    ia = mtl["IMAGE_ATTRIBUTES"]
    l2 = mtl.get("LEVEL2_PROCESSING_RECORD", {})
    product_id = str(pc["LANDSAT_PRODUCT_ID"])
    folder = mtl_json.parent
    props: dict[str, Any] = {
        "datetime": _landsat_datetime(mtl),
        "platform": str(ia["SPACECRAFT_ID"]).lower().replace("_", "-"),
        "instruments": str(ia["SENSOR_ID"]).lower().split("_"),
        "eo:cloud_cover": float(ia["CLOUD_COVER"]),
        "view:sun_azimuth": float(ia["SUN_AZIMUTH"]),
        "view:sun_elevation": float(ia["SUN_ELEVATION"]),
        "landsat:cloud_cover_land": float(ia.get("CLOUD_COVER_LAND", ia["CLOUD_COVER"])),
        "landsat:wrs_type": str(ia.get("WRS_TYPE", "2")),
        "landsat:wrs_path": f"{int(ia['WRS_PATH']):03d}",
        "landsat:wrs_row": f"{int(ia['WRS_ROW']):03d}",
        "landsat:collection_category": str(pc.get("COLLECTION_CATEGORY", "")),
        "landsat:collection_number": str(pc.get("COLLECTION_NUMBER", "02")),
        "landsat:correction": str(pc.get("PROCESSING_LEVEL", "L2SP")),
        "landsat:product_generated": l2.get("DATE_PRODUCT_GENERATED"),
    }
    scene_id = mtl.get("LEVEL1_PROCESSING_RECORD", {}).get("LANDSAT_SCENE_ID")
    if scene_id:
        props["landsat:scene_id"] = scene_id
    if l2.get("DATE_PRODUCT_GENERATED"):
        props["created"] = props["updated"] = l2["DATE_PRODUCT_GENERATED"]
    props = {k: v for k, v in props.items() if v is not None}

    cs = load_registry().collection("landsat-c2-l2", CATALOG)
    by_key = {key: band for band, key in cs.assets.items()}
    sr = mtl.get("LEVEL2_SURFACE_REFLECTANCE_PARAMETERS", {})
    st = mtl.get("LEVEL2_SURFACE_TEMPERATURE_PARAMETERS", {})
    scale, offset = cs.scale_offset(props)
    for n in range(1, 8):
        mult, add = sr.get(f"REFLECTANCE_MULT_BAND_{n}"), sr.get(f"REFLECTANCE_ADD_BAND_{n}")
        if mult is not None and (abs(float(mult) - scale) > 1e-12 or abs(float(add) - offset) > 1e-9):
            raise ValueError(
                f"{mtl_json}: band {n} scale/offset {mult}/{add} disagree with the registry's {scale}/{offset}"
            )

    assets: dict[str, Any] = {}
    infos: list[RasterInfo] = []
    for path in sorted(folder.iterdir()):
        if not path.name.startswith(product_id + "_"):
            continue
        suffix = path.name[len(product_id) + 1 :]
        stem = suffix.rsplit(".", 1)[0]
        if suffix in _LANDSAT_AUX_FILES:
            key, media = _LANDSAT_AUX_FILES[suffix]
            roles = ["thumbnail"] if media == "image/jpeg" else ["metadata"]
            assets[key] = {"href": _uri(path), "type": media, "roles": roles}
            continue
        if path.suffix.upper() != ".TIF" or stem not in _LANDSAT_KEYS:
            continue
        key = _LANDSAT_KEYS[stem]
        if key in by_key:
            asset, info = _band_asset(
                path,
                key,
                cs,
                by_key[key],
                props,
                media_type=GEOTIFF_MEDIA_TYPE,
                title=f"{stem} surface reflectance",
            )
        else:
            info = raster_info(path)
            eo_bands = None
            if stem == "ST_B10":
                rb = _raster_band(
                    info,
                    nodata=0,
                    scale=float(st.get("TEMPERATURE_MULT_BAND_ST_B10", 0.00341802)),
                    offset=float(st.get("TEMPERATURE_ADD_BAND_ST_B10", 149.0)),
                    unit="kelvin",
                )
                roles = ["data", "temperature"]
                eo_bands = [
                    {
                        "name": key,
                        "common_name": "lwir11",
                        "center_wavelength": 10.9,
                        "full_width_half_max": 0.59,
                    }
                ]
            elif stem == "QA_PIXEL":
                rb, roles = _raster_band(info, nodata=1), ["cloud", "cloud-shadow", "snow-ice", "water-mask"]
            elif stem == "SR_QA_AEROSOL":
                rb, roles = _raster_band(info, nodata=1), ["data-mask"]
            elif stem == "QA_RADSAT":
                rb, roles = _raster_band(info), ["saturation"]
            else:
                st_scale, unit = _LANDSAT_ST_AUX_SCALE.get(stem, (None, None))
                rb = _raster_band(
                    info, nodata=-9999, scale=st_scale, offset=0.0 if st_scale else None, unit=unit
                )
                roles = ["data"]
            asset = {
                "href": _uri(path),
                "type": GEOTIFF_MEDIA_TYPE,
                "title": stem,
                "roles": roles,
                "gsd": _num(info.res),
                **({"eo:bands": eo_bands} if eo_bands else {}),
                **info.proj_asset,
                "raster:bands": [rb],
            }
        infos.append(info)
        assets[key] = asset
    if not infos:
        raise FileNotFoundError(f"{folder}: no raster files for {product_id}")

    if geometry is None:
        pa = mtl["PROJECTION_ATTRIBUTES"]
        corners = [
            [float(pa[f"CORNER_{c}_LON_PRODUCT"]), float(pa[f"CORNER_{c}_LAT_PRODUCT"])]
            for c in ("UL", "UR", "LR", "LL")
        ]
        geometry = {"type": "Polygon", "coordinates": [[*corners, corners[0]]]}
    if bbox is None:
        ring = geometry["coordinates"][0]
        bbox = [
            min(p[0] for p in ring),
            min(p[1] for p in ring),
            max(p[0] for p in ring),
            max(p[1] for p in ring),
        ]
    d: dict[str, Any] = {
        "type": "Feature",
        "id": product_id,
        "collection": "landsat-c2-l2",
        "geometry": geometry,
        "bbox": bbox,
        "properties": props,
        "links": [],
        "assets": assets,
        "stac_extensions": [],
    }
    return _finish(d, _finest(infos), extensions=(VIEW_SCHEMA, LANDSAT_SCHEMA))


def landsat_mtl_item(mtl_json: Path) -> pystac.Item:
    """A landsat-c2-l2 item from a scene's ``*_MTL.json`` and the band files beside it."""
    return _landsat_item(Path(mtl_json))


def landsat_usgs_stac_item(sr_stac_json: Path) -> pystac.Item:
    """A landsat-c2-l2 item from the USGS ``*_SR_stac.json`` (geometry, bbox) plus its MTL.json.

    USGS asset keys (``SR_B4.TIF``, ``QA_PIXEL.TIF`` ...) become the landsat-c2-l2 keys (``red``,
    ``qa_pixel`` ...); the ST assets of the scene are included (``lwir11`` ...).
    """
    sr_stac_json = Path(sr_stac_json)
    usgs = json.loads(sr_stac_json.read_text())
    product_id = str(usgs["id"])
    mtl_json = sr_stac_json.with_name(f"{product_id}_MTL.json")
    item = _landsat_item(mtl_json, geometry=usgs.get("geometry"), bbox=usgs.get("bbox"))
    for usgs_key, asset in usgs.get("assets", {}).items():
        stem = str(usgs_key).rsplit(".", 1)[0]
        key = _LANDSAT_KEYS.get(stem)
        if key and key in item.assets and asset.get("title"):
            item.assets[key].title = asset["title"]
            if asset.get("description"):
                item.assets[key].description = asset["description"]
    return item
