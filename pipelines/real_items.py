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

import json
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pystac
import rasterio
from affine import Affine

from pipelines.registry import CollectionSpec, load_registry
from pipelines.synthetic import (
    grid_footprint,
    proj_fields,
    transform_list,
    with_core_extensions,
)

logger = logging.getLogger(__name__)

CATALOG = "sample"
VIEW_SCHEMA = "https://stac-extensions.github.io/view/v1.0.0/schema.json"
LANDSAT_SCHEMA = "https://stac-extensions.github.io/landsat/v2.0.0/schema.json"
GEOTIFF_MEDIA_TYPE = "image/tiff; application=geotiff"
JP2_MEDIA_TYPE = "image/jp2"


@dataclass(frozen=True)
class RasterInfo:
    crs: Any
    transform: Affine
    shape: tuple[int, int]
    dtype: str
    nodata: float | None
    count: int
    is_cog: bool

    @property
    def res(self) -> float:
        return float(abs(self.transform.a))

    @property
    def proj_asset(self) -> dict[str, Any]:
        return {"proj:shape": list(self.shape), "proj:transform": transform_list(self.transform)}


def raster_info(path: Path) -> RasterInfo:
    with rasterio.open(path) as ds:
        return RasterInfo(
            crs=ds.crs,
            transform=ds.transform,
            shape=(ds.height, ds.width),
            dtype=ds.dtypes[0],
            nodata=ds.nodata,
            count=ds.count,
            is_cog=bool(ds.profile.get("tiled")) and bool(ds.overviews(1)),
        )


def _num(v: float) -> int | float:
    f = float(v)
    return int(f) if f.is_integer() else round(f, 6)


def _uri(path: Path) -> str:
    return path.resolve().as_uri()


def _eo_band(name: str, cs: CollectionSpec, band: str) -> dict[str, Any]:
    b = cs.sensor.band(band)
    return {
        "name": name,
        "common_name": b.common_name,
        "description": f"{cs.sensor.name} {band}",
        "center_wavelength": round(b.center_wavelength_nm / 1000.0, 5),
        "full_width_half_max": round(b.fwhm_nm / 1000.0, 5),
    }


def _raster_band(
    info: RasterInfo,
    *,
    nodata: float | None = None,
    scale: float | None = None,
    offset: float | None = None,
    unit: str | None = None,
) -> dict[str, Any]:
    rb: dict[str, Any] = {}
    nd = nodata if nodata is not None else info.nodata
    if nd is not None:
        rb["nodata"] = _num(nd)
    rb["data_type"] = info.dtype
    if scale is not None:
        rb["scale"] = scale
        rb["offset"] = round(offset or 0.0, 12)
    rb["spatial_resolution"] = _num(info.res)
    if unit:
        rb["unit"] = unit
    return rb


def _band_asset(
    path: Path,
    key: str,
    cs: CollectionSpec,
    band: str,
    properties: Mapping[str, Any],
    *,
    media_type: str,
    title: str | None = None,
) -> tuple[dict[str, Any], RasterInfo]:
    """A reflectance asset: eo:bands from the registry, raster:bands from the registry's scale/offset."""
    info = raster_info(path)
    scale, offset = cs.scale_offset(properties)
    asset = {
        "href": _uri(path),
        "type": media_type,
        "title": title or f"{cs.sensor.band(band).common_name} ({band})",
        "roles": ["data", "reflectance"],
        "gsd": _num(info.res),
        "eo:bands": [_eo_band(key, cs, band)],
        **info.proj_asset,
        "raster:bands": [_raster_band(info, nodata=cs.nodata, scale=scale, offset=offset)],
    }
    return asset, info


def _finish(
    d: dict[str, Any], grid: RasterInfo, *, extensions: Iterable[str] = (), footprint: bool = False
) -> pystac.Item:
    """Common tail: projection fields from the finest grid, extensions, links, geometry (optional)."""
    props = d["properties"]
    props.pop("proj:epsg", None)
    props.pop("proj:code", None)
    props.pop("proj:wkt2", None)
    props.update(proj_fields(grid.crs))
    h, w = grid.shape
    t = grid.transform
    xs = (t.c, t.c + t.a * w)
    ys = (t.f, t.f + t.e * h)
    props["proj:bbox"] = [_num(min(xs)), _num(min(ys)), _num(max(xs)), _num(max(ys))]
    props["aom:synthetic"] = False
    if footprint or not d.get("geometry"):
        d["geometry"], d["bbox"] = grid_footprint(grid.crs, grid.transform, grid.shape)
    d["stac_extensions"] = with_core_extensions([*d.get("stac_extensions", []), *extensions])
    d["stac_version"] = pystac.get_stac_version()
    d["links"] = [lk for lk in d.get("links", []) if lk.get("rel") in ("license", "derived_from", "cite-as")]
    d.setdefault("type", "Feature")
    return pystac.Item.from_dict(d)


def _finest(infos: Iterable[RasterInfo]) -> RasterInfo:
    return min(infos, key=lambda i: (i.res, -i.shape[0]))


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
            "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
            "https://stac-extensions.github.io/grid/v1.0.0/schema.json",
        ],
    }
    if ring:
        lons = [p[0] for p in ring]
        lats = [p[1] for p in ring]
        d["bbox"] = [min(lons), min(lats), max(lons), max(lats)]
    return _finish(d, _finest(infos))


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
            logger.warning(note)
            notes.append(note)
    if not jobs:
        notes.append(f"real-data folder {real_dir} holds no known products: built synthetic items only")
    ids = [it.id for it in items]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"duplicate real item ids: {dupes}")
    logger.info("real: %d items from %s", len(items), real_dir)
    return items, notes
