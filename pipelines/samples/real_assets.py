"""Shared pieces of the real-product item builders: raster facts read from the files, asset and band fields."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pystac
import rasterio
from affine import Affine

from pipelines.registry import CollectionSpec
from pipelines.samples.stac_fields import (
    eo_common_name,
    grid_footprint,
    proj_fields,
    transform_list,
    with_core_extensions,
)

logger = logging.getLogger(__name__)

CATALOG = "sample"


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
        **eo_common_name(b.common_name),
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
