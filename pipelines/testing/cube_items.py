"""Small, deterministic STAC items with real GeoTIFF assets, for cube tests and benchmarks.

Any registry collection can be written (Sentinel-2 L2A, Landsat C2 L2, HLS, MODIS): one tiled,
compressed single-band GeoTIFF per band asset at the band's registry GSD plus the quality asset(s)
of the collection's mask rule, all on one UTM grid. Files are written block row by block row (all
bands of one GSD together), so a full-size 10980 x 10980 scene needs only a few tens of MB of
memory. Reflectance is a smooth function of ground position plus a per-band constant and a few DN
of hashed texture; ``cloud_boxes`` are flagged in the quality asset (reflectance stays valid
there, as in real products) and ``nodata_box`` is fill in every asset. DNs are encoded with the
collection's own scale/offset *for the item's properties*, so an item with
``s2:processing_baseline >= 04.00`` (and no ``earthsearch:boa_offset_applied``) carries +1000 DN.

:func:`reflectance_model` is the ground truth tests compare cubes against.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.registry import CollectionSpec, load_registry

Box = tuple[float, float, float, float]  # (left, bottom, right, top) as fractions of the scene, 0..1


def _field(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    fx = np.sin((x / 910.0).astype(np.float32))
    fy = np.cos((y / 1330.0).astype(np.float32))
    field = np.float32(0.12) * (1.0 + fx) * (1.0 + fy)
    ix = np.floor(x).astype(np.int64)
    iy = np.floor(y).astype(np.int64)
    h = (ix * 73856093) ^ (iy * 19349663) ^ (seed * 83492791)
    noise = ((h % 1009).astype(np.float32) / np.float32(1009.0) - np.float32(0.5)) * np.float32(0.008)
    return (field + noise).astype(np.float32)


def reflectance_model(band_index: int, x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Synthetic surface reflectance (float32, about 0.05..0.9) at ground coordinates x, y (metres)."""
    return _field(x, y, seed) + np.float32(0.05 + 0.03 * band_index)


def _in_boxes(boxes: Sequence[Box | None], fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
    out = np.zeros(np.broadcast(fx, fy).shape, dtype=bool)
    for b in boxes:
        if b is None:
            continue
        left, bottom, right, top = b
        out |= (fx >= left) & (fx < right) & (fy >= bottom) & (fy < top)
    return out


BlockFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]], np.ndarray]


def write_bands(
    paths: Sequence[Path],
    values: Sequence[BlockFn],
    *,
    epsg: int,
    bounds: tuple[float, float, float, float],
    gsd: float,
    dtype: str,
    nodata: float | None,
    block: int = 512,
    compress: str | None = "deflate",
) -> tuple[int, int]:
    """Write single-band tiled GeoTIFFs on one grid, block row by block row.

    ``values[i](x, y, fx, fy, shared)`` returns band i's block; ``shared`` is a dict per block row
    so bands can reuse work (the reflectance field) computed by the first one.
    """
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    left, bottom, right, top = bounds
    width = round((right - left) / gsd)
    height = round((top - bottom) / gsd)
    bx = min(block, max(16, 16 * (width // 16)))
    by = min(block, max(16, 16 * (height // 16)))
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": dtype,
        "crs": f"EPSG:{epsg}",
        "transform": from_origin(left, top, gsd, gsd),
        "tiled": True,
        "blockxsize": bx,
        "blockysize": by,
    }
    if compress:
        profile["compress"] = compress
        if compress.lower() == "deflate":
            profile.update(zlevel=1, predictor=2)  # fast to write; reads cost about the same as level 6
    if nodata is not None:
        profile["nodata"] = nodata
    cols = np.arange(width)
    x = (left + (cols + 0.5) * gsd)[None, :]
    fx = ((cols + 0.5) / width)[None, :]
    with ExitStack() as stack:
        dsts = []
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            dsts.append(stack.enter_context(rasterio.open(path, "w", **profile)))
        for r0 in range(0, height, by):
            rows = np.arange(r0, min(height, r0 + by))
            y = (top - (rows + 0.5) * gsd)[:, None]
            fy = (1.0 - (rows + 0.5) / height)[:, None]
            shared: dict[str, Any] = {}
            for dst, fn in zip(dsts, values):
                dst.write(
                    np.asarray(fn(x, y, fx, fy, shared), dtype=dtype),
                    1,
                    window=Window(0, r0, width, len(rows)),
                )
    return height, width


def make_item(
    out_dir: str | os.PathLike[str],
    *,
    item_id: str,
    collection: str = "sentinel-2-l2a",
    catalog: str = "sample",
    epsg: int = 32631,
    bounds: tuple[float, float, float, float] = (699960.0, 4990200.0, 703800.0, 4994040.0),
    datetime: str = "2023-06-01T10:30:00Z",
    properties: Mapping[str, Any] | None = None,
    bands: Sequence[str] | None = None,
    cloud_boxes: Sequence[Box] = (),
    nodata_box: Box | None = None,
    seed: int = 0,
    proj_style: str = "epsg",
    block: int = 512,
    compress: str | None = "deflate",
    spec: CollectionSpec | None = None,
) -> dict[str, Any]:
    """Write the assets of one synthetic item under ``out_dir/item_id`` and return its STAC dict.

    ``proj_style``: ``"epsg"`` (projection v1.1 ``proj:epsg``), ``"code"`` (v2 ``proj:code``) or
    ``"none"`` (no projection metadata at all). ``bands``: subset of the collection's bands.
    """
    spec = spec or load_registry().collection(collection, catalog)
    props: dict[str, Any] = {"datetime": datetime, **dict(properties or {})}
    if spec.sensor.name.startswith("sentinel-2"):
        props.setdefault("s2:processing_baseline", "02.14")
    scale, offset = spec.scale_offset(props)
    root = Path(out_dir) / item_id
    wanted = list(bands) if bands is not None else list(spec.band_names)
    order = list(spec.band_names)
    info = np.iinfo(spec.dtype) if spec.dtype != "float32" else None
    rule = spec.mask
    assets: dict[str, Any] = {}
    left, _, _, top = bounds

    def asset_entry(
        key: str, path: Path, gsd: float, shape: tuple[int, int], band: dict[str, Any]
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "href": str(path.resolve()),
            "type": "image/tiff; application=geotiff",
            "roles": ["data"],
        }
        if proj_style != "none":
            entry["proj:shape"] = list(shape)
            entry["proj:transform"] = [gsd, 0.0, left, 0.0, -gsd, top]
        entry["raster:bands"] = [{**band, "spatial_resolution": gsd}]
        assets[key] = entry
        return entry

    def band_fn(bidx: int) -> BlockFn:
        def fn(x, y, fx, fy, shared):
            if "field" not in shared:
                shared["field"] = _field(x, y, seed)
                shared["hole"] = _in_boxes([nodata_box], fx, fy)
            refl = shared["field"] + np.float32(0.05 + 0.03 * bidx)
            dn = np.rint((refl - offset) / scale)
            if info is not None:
                dn = np.clip(dn, info.min, info.max)
            if spec.nodata is not None:
                dn = np.where(dn == spec.nodata, dn + 1, dn)  # a valid pixel never equals nodata
                dn = np.where(shared["hole"], spec.nodata, dn)
            return dn

        return fn

    by_gsd: dict[float, list[str]] = {}
    for band in wanted:
        by_gsd.setdefault(float(spec.sensor.band(band).gsd_m), []).append(band)
    for gsd, group in sorted(by_gsd.items()):
        paths = [root / f"{b}.tif" for b in group]
        shape = write_bands(
            paths,
            [band_fn(order.index(b)) for b in group],
            epsg=epsg,
            bounds=bounds,
            gsd=gsd,
            dtype=spec.dtype,
            nodata=spec.nodata,
            block=block,
            compress=compress,
        )
        for band, path in zip(group, paths):
            key = spec.asset_for(band)
            bspec = spec.sensor.band(band)
            entry = asset_entry(
                key,
                path,
                gsd,
                shape,
                {"data_type": spec.dtype, "nodata": spec.nodata, "scale": scale, "offset": offset},
            )
            entry["eo:bands"] = [
                {
                    "name": key,
                    "common_name": bspec.common_name,
                    "center_wavelength": bspec.center_wavelength_nm / 1000.0,
                    "full_width_half_max": bspec.fwhm_nm / 1000.0,
                }
            ]
            entry["gsd"] = gsd

    qa_dtype = "uint16" if rule.kind == "bits" and 255 not in rule.invalid_values else "uint8"
    if rule.kind == "classes":
        clear = 4 if 4 not in rule.invalid_values else 1
        cloud = 9 if 9 in rule.invalid_values else rule.invalid_values[-1]
    else:
        clear = 1 << 6
        cloud = 1 << (3 if 3 in rule.invalid_bits else rule.invalid_bits[0])
    fill = rule.fill_value if rule.fill_value is not None else 0
    qa_gsd = 20.0 if spec.sensor.name.startswith("sentinel-2") else min(by_gsd)

    def qa_values(x, y, fx, fy, shared):
        qa = np.full(np.broadcast(fx, fy).shape, clear, dtype=np.int64)
        qa[_in_boxes(cloud_boxes, fx, fy)] = cloud
        qa[_in_boxes([nodata_box], fx, fy)] = fill
        return qa

    qa_keys = list(rule.mask_assets())
    qa_paths = [root / f"{k}.tif" for k in qa_keys]
    shape = write_bands(
        qa_paths,
        [qa_values] * len(qa_keys),
        epsg=epsg,
        bounds=bounds,
        gsd=qa_gsd,
        dtype=qa_dtype,
        nodata=None,
        block=block,
        compress=compress,
    )
    for key, path in zip(qa_keys, qa_paths):
        entry = asset_entry(key, path, qa_gsd, shape, {"data_type": qa_dtype})
        entry["roles"] = ["data", "cloud"]

    extensions = [
        "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
        "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    ]
    if proj_style == "epsg":
        props["proj:epsg"] = epsg
        extensions.append("https://stac-extensions.github.io/projection/v1.1.0/schema.json")
    elif proj_style == "code":
        props["proj:code"] = f"EPSG:{epsg}"
        extensions.append("https://stac-extensions.github.io/projection/v2.0.0/schema.json")
    footprint = footprint_lonlat(epsg, bounds)
    lons = [p[0] for p in footprint["coordinates"][0]]
    lats = [p[1] for p in footprint["coordinates"][0]]
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": extensions,
        "id": item_id,
        "collection": collection,
        "geometry": footprint,
        "bbox": [min(lons), min(lats), max(lons), max(lats)],
        "properties": props,
        "assets": assets,
        "links": [],
    }


def footprint_lonlat(epsg: int, bounds: tuple[float, float, float, float], n: int = 8) -> dict[str, Any]:
    """GeoJSON polygon of a UTM rectangle (edges densified); longitudes may pass +-180 near the antimeridian
    only in the sense that they are folded back: callers crossing it should split (see tiling)."""
    from pyproj import Transformer

    left, bottom, right, top = bounds
    tr = Transformer.from_crs(epsg, 4326, always_xy=True)
    xs = [left + (right - left) * i / n for i in range(n)] + [right] * n
    xs += [right - (right - left) * i / n for i in range(n)] + [left] * n
    ys = [bottom] * n + [bottom + (top - bottom) * i / n for i in range(n)]
    ys += [top] * n + [top - (top - bottom) * i / n for i in range(n)]
    lon, lat = tr.transform(xs, ys)
    ring = [[float(a), float(b)] for a, b in zip(lon, lat)]
    ring.append(ring[0])
    return {"type": "Polygon", "coordinates": [ring]}
