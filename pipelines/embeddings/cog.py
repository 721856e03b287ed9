"""Cloud-Optimised GeoTIFF encoding of embedding rasters (``dim`` bands, one per component).

One home for how AOM writes a COG, used by ``aom publish`` (per tile and time) and ``aom
embed-raster``: GDAL's COG driver (main IFD at the start of the file, tiled, overviews, ghost header),
DEFLATE, nearest-neighbour overviews (codes are not averaged: an average of int8-sqrt codes is not
the code of an average), band descriptions ``emb_0000``... and the decoding rule in the tags.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipelines import storage

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"


COG_OPTIONS = {
    "COMPRESS": "DEFLATE",
    "OVERVIEWS": "AUTO",
    "OVERVIEW_RESAMPLING": "NEAREST",
    "RESAMPLING": "NEAREST",
    "BIGTIFF": "IF_SAFER",
}


COG_MIN_BLOCKSIZE = 128
"""The smallest ``BLOCKSIZE`` GDAL's COG driver accepts without a warning (its option list says
``min='128'``; smaller values were used for the main image but not the overviews, mixing tile sizes)."""


def cog_blocksize(height: int, width: int) -> int:
    """Tile edge: 256 for rasters of at least 512 px a side, else 128 (the COG driver's minimum): a
    raster smaller than that is one internal tile (a 24 x 24 tile of tokens: one 128 x 128 block,
    mostly empty and compressed away) and needs no overviews; rio-cogeo validates either."""
    return 256 if min(height, width) >= 512 else COG_MIN_BLOCKSIZE


def gtiff_to_cog(src_path: str, dst_path: str, blocksize: int | None = None) -> None:
    """Rewrite a (tiled or striped) GeoTIFF as a COG with GDAL's COG driver (same pixels, tags,
    band descriptions, scale/offset, colour table and RAT)."""
    import rasterio
    from rasterio.shutil import copy as rio_copy

    with rasterio.open(src_path) as src:
        bs = blocksize or cog_blocksize(src.height, src.width)
    rio_copy(src_path, dst_path, driver="COG", BLOCKSIZE=bs, **COG_OPTIONS)


def write_cog(
    dst_url: str,
    bands: np.ndarray,
    crs: Any,
    transform: Any,
    nodata: float | None,
    tags: Mapping[str, str] | None = None,
    descriptions: Sequence[str] | None = None,
    scales: Sequence[float] | None = None,
    offsets: Sequence[float] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> int:
    """Write ``bands`` ``[count, h, w]`` as a COG at ``dst_url`` (any fsspec URL), atomically (a local
    temporary file, then one PUT/rename). Returns the file size in bytes."""
    import rasterio

    count, h, w = bands.shape
    with tempfile.TemporaryDirectory(prefix="aom-cog-") as tmp:
        plain = os.path.join(tmp, "plain.tif")
        profile: dict[str, Any] = {
            "driver": "GTiff",
            "height": h,
            "width": w,
            "count": count,
            "dtype": str(bands.dtype),
            "crs": crs,
            "transform": transform,
            "nodata": nodata,
            "interleave": "pixel",
        }
        with rasterio.open(plain, "w", **profile) as dst:
            dst.write(bands)
            if tags:
                dst.update_tags(**dict(tags))
            for i, d in enumerate(descriptions or []):
                dst.set_band_description(i + 1, d)
            if scales is not None:
                dst.scales = tuple(float(s) for s in scales)
            if offsets is not None:
                dst.offsets = tuple(float(o) for o in offsets)
        out = os.path.join(tmp, "cog.tif")
        gtiff_to_cog(plain, out)
        with open(out, "rb") as f:
            data = f.read()
    storage.write_bytes_atomic(dst_url, data, storage_options)
    return len(data)
