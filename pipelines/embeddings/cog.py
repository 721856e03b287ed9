"""Cloud-Optimised GeoTIFFs: how AOM writes one, and what an embedding COG is.

One home for how AOM writes a COG (:func:`write_cog`, :func:`gtiff_to_cog`), used by ``aom publish``
(per tile and time), ``aom embed-raster``, ``aom query export`` and the derived maps of
:mod:`pipelines.query` (class maps): GDAL's COG driver (main IFD at the start of the file, tiled,
overviews, ghost header), DEFLATE, nearest-neighbour overviews (codes are not averaged: an average of
int8-sqrt codes is not the code of an average), written under a temporary name and moved into place
(on object storage uploaded from disk by :func:`pipelines.storage.upload_file_atomic`: multipart on S3,
visible only once complete).

An *embedding COG* (:func:`write_embedding_cog`: ``aom publish``, ``aom query export``; ``aom
embed-raster`` writes the same bands and tags strip by strip) has one band per component, band
descriptions ``emb_0000``... (:func:`embedding_band_names`), the tags ``AOM_EMBEDDINGS=1`` and
``AOM_ENCODING`` (the decoding rule of its :class:`~pipelines.embeddings.metadata.ValueEncoding`) plus
the provenance tags of :func:`provenance_tags`, the encoding's nodata (-128 for int8 codes, NaN for
float32) and, for a linear encoding, its band scale and offset.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipelines import storage
from pipelines.embeddings.format import EmbeddingsStoreError
from pipelines.embeddings.metadata import ValueEncoding
from pipelines.errors import InputError

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
    *,
    colormap: Mapping[int, tuple[int, int, int, int]] | None = None,
) -> int:
    """Write ``bands`` ``[count, h, w]`` (or one band ``[h, w]``) as a COG at ``dst_url`` (a local path
    or any fsspec URL), atomically: locally under a temporary sibling name (:func:`storage.temp_name`,
    the user's umask; a killed writer's leftovers are removed first) renamed into place, on object
    storage built in a local temporary folder and uploaded from disk (:func:`storage.upload_file_atomic`:
    a multipart upload on S3 above two parts, never the whole file in memory, the object visible only
    once complete; a failed upload raises :class:`~pipelines.errors.RunFailedError` and leaves none).
    ``colormap`` is the colour table of a one-band raster. Returns the file size."""
    import rasterio

    arr = bands[None] if bands.ndim == 2 else bands
    count, h, w = arr.shape
    url = storage.normalise_url(dst_url)
    local = storage.is_local(url)
    final = storage.local_href(url) if local else ""
    if local:
        if os.path.isdir(final):
            raise InputError(f"{final} is a folder; give a file name")
        os.makedirs(os.path.dirname(final) or ".", exist_ok=True)
        storage.clean_stale_temps(final)  # what a killed run left
    with tempfile.TemporaryDirectory(prefix="aom-cog-") as tmp:
        plain = os.path.join(tmp, "plain.tif")
        profile: dict[str, Any] = {
            "driver": "GTiff",
            "height": h,
            "width": w,
            "count": count,
            "dtype": str(arr.dtype),
            "crs": crs,
            "transform": transform,
            "nodata": nodata,
            "interleave": "pixel",
            "BIGTIFF": "IF_SAFER",
        }
        with rasterio.open(plain, "w", **profile) as dst:
            dst.write(arr)
            if tags:
                dst.update_tags(**{k: str(v) for k, v in tags.items()})
            for i, d in enumerate(descriptions or []):
                dst.set_band_description(i + 1, d)
            if scales is not None:
                dst.scales = tuple(float(s) for s in scales)
            if offsets is not None:
                dst.offsets = tuple(float(o) for o in offsets)
            if colormap and count == 1:
                dst.write_colormap(1, dict(colormap))
        # GDAL creates the COG with the user's umask, beside its final place when local
        out = storage.temp_name(final, ".tif") if local else os.path.join(tmp, "cog.tif")
        try:
            gtiff_to_cog(plain, out)
            size = os.path.getsize(out)
            if local:
                os.replace(out, final)
            else:  # streamed from disk, never whole in memory; the object appears complete or not at all
                storage.upload_file_atomic(out, url, storage_options)
        finally:
            if os.path.exists(out):
                os.remove(out)
    return size


def embedding_band_names(dim: int) -> list[str]:
    """The band descriptions of an embedding raster: ``emb_0000``, ``emb_0001``, ..."""
    return [f"emb_{i:04d}" for i in range(dim)]


def provenance_tags(
    version: str, model: str, checkpoint_sha256: str, time: str, **extra: str
) -> dict[str, str]:
    """The provenance tags of an embedding COG: ``AOM_VERSION``, ``AOM_MODEL`` (``"<model>
    <model_version>"``), ``AOM_CHECKPOINT_SHA256``, ``AOM_TIME``, plus ``AOM_<KEY>`` for each of
    ``extra`` (``tile=`` of a published tile, ``zones=`` of an export)."""
    tags = {
        "AOM_VERSION": version,
        "AOM_MODEL": model,
        "AOM_CHECKPOINT_SHA256": checkpoint_sha256,
        "AOM_TIME": time,
    }
    return tags | {f"AOM_{k.upper()}": str(v) for k, v in extra.items()}


def embedding_tags(encoding: ValueEncoding, provenance: Mapping[str, str] | None = None) -> dict[str, str]:
    """``AOM_EMBEDDINGS=1``, ``AOM_ENCODING`` (the decoding rule) and ``provenance``."""
    return {"AOM_EMBEDDINGS": "1", "AOM_ENCODING": encoding.rule} | dict(provenance or {})


def write_embedding_cog(
    dst_url: str,
    bands: np.ndarray,
    crs: Any,
    transform: Any,
    encoding: ValueEncoding,
    provenance: Mapping[str, str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> int:
    """An embedding COG (module docstring) of ``bands`` ``[dim, h, w]``, already in ``encoding``
    (int8 codes or float32 values). Returns the file size in bytes."""
    if str(bands.dtype) != encoding.data_type:
        raise EmbeddingsStoreError(
            f"bands are {bands.dtype}, the {encoding.name} encoding holds {encoding.data_type}"
        )
    dim = bands.shape[0]
    linear = encoding.scale != 1.0
    return write_cog(
        dst_url,
        bands,
        crs,
        transform,
        encoding.nodata,
        embedding_tags(encoding, provenance),
        embedding_band_names(dim),
        [encoding.scale] * dim if linear else None,
        [0.0] * dim if linear else None,
        storage_options,
    )
