"""STAC fields and COG writing shared by the sample-product builders (synthetic and real)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS, Transformer
from rasterio.io import MemoryFile

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# STAC helpers shared with pipelines.samples.real

EO_SCHEMA = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"


RASTER_SCHEMA = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"


PROJECTION_SCHEMA = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"


CORE_EXTENSIONS = (EO_SCHEMA, RASTER_SCHEMA, PROJECTION_SCHEMA)

#: the extensions of the prefixed fields sample items carry beside the core ones
VIEW_SCHEMA = "https://stac-extensions.github.io/view/v1.0.0/schema.json"
LANDSAT_SCHEMA = "https://stac-extensions.github.io/landsat/v2.0.0/schema.json"
MGRS_SCHEMA = "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json"
GRID_SCHEMA = "https://stac-extensions.github.io/grid/v1.0.0/schema.json"


EO_COMMON_NAMES = frozenset(
    [
        "coastal",
        "blue",
        "green",
        "red",
        "rededge",
        "yellow",
        "pan",
        "nir",
        "nir08",
        "nir09",
        "cirrus",
        "swir16",
        "swir22",
        "lwir",
        "lwir11",
        "lwir12",
    ]
)
"""The band ``common_name`` values the eo extension v1.1.0 (:data:`EO_SCHEMA`) allows (its enum)."""


def eo_common_name(name: str) -> dict[str, str]:
    """``{"common_name": name}`` for an ``eo:bands`` entry where the eo extension v1.1.0 knows the
    name, else nothing: the registry's names for bands STAC has no name for (MODIS B05 at 1.24 um is
    ``nir12`` there) made the items fail the eo schema. The band keeps its wavelengths."""
    return {"common_name": name} if name in EO_COMMON_NAMES else {}


COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"


CONTENT_HASH_TAG = "AOM_CONTENT_HASH"


def with_core_extensions(extensions: Sequence[str]) -> list[str]:
    """``extensions`` with eo/raster/projection at the versions pystac writes (older versions replaced)."""
    keep = [
        e
        for e in extensions
        if not any(f"/{name}/" in e for name in ("eo", "raster", "projection"))
        and e not in ("eo", "projection")
    ]
    return [*CORE_EXTENSIONS, *sorted(set(keep) - set(CORE_EXTENSIONS))]


def proj_fields(crs: Any) -> dict[str, Any]:
    """``proj:code`` ("EPSG:n") where the CRS has an EPSG code, else ``proj:wkt2``."""
    pcrs = CRS.from_user_input(crs)
    epsg = pcrs.to_epsg()  # min_confidence 70: matches e.g. a WKT "PS WGS84" to EPSG:3031
    if epsg is not None:
        return {"proj:code": f"EPSG:{epsg}"}
    return {"proj:wkt2": pcrs.to_wkt()}


def transform_list(transform: Affine) -> list[float]:
    return [float(v) for v in tuple(transform)[:6]]


def apply_transform(transform: Affine, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel (col, row) -> map (x, y), vectorised."""
    t = transform
    return t.c + t.a * cols + t.b * rows, t.f + t.d * cols + t.e * rows


def grid_footprint(
    crs: Any, transform: Affine, shape: tuple[int, int], *, densify: int = 16
) -> tuple[dict[str, Any], list[float]]:
    """GeoJSON polygon (WGS84, lon/lat) and bbox of a raster grid, edges densified for curved projections."""
    h, w = shape
    t = np.linspace(0.0, 1.0, densify + 1)
    cols = np.concatenate([t * w, np.full(densify, w), (1 - t[1:]) * w, np.zeros(densify)])
    rows = np.concatenate([np.zeros(densify + 1), t[1:] * h, np.full(densify, h), (1 - t[1:]) * h])
    xs, ys = apply_transform(transform, cols, rows)
    to_wgs84 = Transformer.from_crs(CRS.from_user_input(crs), CRS.from_epsg(4326), always_xy=True)
    lon, lat = to_wgs84.transform(np.asarray(xs), np.asarray(ys))
    ring = [[round(float(x), 7), round(float(y), 7)] for x, y in zip(lon, lat)]
    if ring[0] != ring[-1]:
        ring.append(ring[0])
    bbox = [
        round(float(np.min(lon)), 7),
        round(float(np.min(lat)), 7),
        round(float(np.max(lon)), 7),
        round(float(np.max(lat)), 7),
    ]
    return {"type": "Polygon", "coordinates": [ring]}, bbox


def _array_hash(array: np.ndarray, profile: Mapping[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(profile, sort_keys=True, default=str).encode())
    h.update(str(array.dtype).encode())
    h.update(str(array.shape).encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def write_cog(
    path: Path,
    array: np.ndarray,
    *,
    crs: Any,
    transform: Affine,
    nodata: float | None,
    resampling: str = "average",
) -> bool:
    """Write a single-band deflate COG (tiled, with overviews) atomically; False when skipped.

    The file is rewritten only when the content hash of (array, profile), stored in the TIFF as
    ``AOM_CONTENT_HASH``, differs from the existing file's, so rebuilds are cheap and byte-stable.
    """
    profile = {
        "crs": CRS.from_user_input(crs).to_wkt(),
        "transform": transform_list(transform),
        "nodata": nodata,
        "resampling": resampling,
    }
    digest = _array_hash(array, profile)
    if path.exists():
        try:
            with rasterio.open(path) as ds:
                if ds.tags().get(CONTENT_HASH_TAG) == digest:
                    return False
        except rasterio.errors.RasterioError:
            pass
    predictor = 2 if np.issubdtype(array.dtype, np.integer) else 3
    with MemoryFile() as mem:
        with mem.open(
            driver="COG",
            width=array.shape[1],
            height=array.shape[0],
            count=1,
            dtype=str(array.dtype),
            crs=crs,
            transform=transform,
            nodata=nodata,
            compress="DEFLATE",
            level=1,  # fast deflate: about as small as level 6 on this data, 25 % quicker
            predictor=predictor,
            blocksize=256,
            overview_resampling=resampling,
        ) as ds:
            ds.write(array, 1)
            ds.update_tags(**{CONTENT_HASH_TAG: digest})
        data = mem.read()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True
