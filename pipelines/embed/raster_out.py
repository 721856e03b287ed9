"""Writers of ``aom embed-raster`` outputs: a Cloud-Optimised GeoTIFF or a band-first Zarr group
(see :mod:`pipelines.embed.raster` for the formats and the safety rules), and the result record.

A GeoTIFF is written strip by strip under a partial name, rewritten by GDAL's COG driver and moved
into place (a remote one is written in a local temporary file and uploaded from disk by
:func:`pipelines.storage.upload_file_atomic`, which makes the object appear whole or not at all); a
Zarr group holds a writer lease while written (taken before anything in the store is removed) and
sets ``aom_complete`` last, after checking that it still holds the lease and that its arrays are all
there, in the write that also gives the root ``zarr.json`` its consolidated metadata
(:func:`~pipelines.outputs.finish_consolidated`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pipelines import storage
from pipelines.errors import RunFailedError
from pipelines.outputs import (
    Lease,
    OutputError,
    OutputKind,
    claim_output,
    clean_partials,
    finish_consolidated,
    partial_path,
    remove_owned,
)

INCOMPLETE_NOTE = (
    "incomplete: the writing run was interrupted; rerun the same aom embed-raster command to finish it"
)

_ARRAYS = ("embeddings", "x", "y", "spatial_ref")
"""Every array a Zarr output holds (the writer creates them; completion checks they are all there)."""


@dataclass
class RasterEmbedResult:
    out: str
    format: str
    dtype: str
    height: int  # tokens
    width: int
    dim: int
    crs: str
    transform: tuple[float, ...]  # GDAL-style affine a, b, c, d, e, f of the token grid
    token_px: int
    token_m: float
    valid_tokens: int
    chips: int
    chips_run: int
    chip: dict[str, Any]  # ChipLayout.to_dict() of the strips: core, margin, seam blending, overhead
    elapsed_s: float
    model_s: float
    bands: list[dict[str, Any]]
    checkpoint_sha256: str
    scaling: dict[str, Any] = field(default_factory=dict)  # RasterScaling.to_dict(): DN -> reflectance
    embedding: dict[str, Any] = field(default_factory=dict)  # embedding_record(): what a vector is

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = storage.redact_url(self.out)
        return d


def _encode(emb: np.ndarray, dtype: str) -> np.ndarray:
    from pipelines.embeddings import quantize

    if dtype == "int8":
        return quantize(emb)
    return emb.astype(np.float32)


def _tags(res: RasterEmbedResult) -> dict[str, str]:
    """An embedding COG's tags (:func:`pipelines.embeddings.embedding_tags`: ``AOM_EMBEDDINGS``, the
    ``AOM_ENCODING`` rule ``aom publish`` and ``aom query export`` write) and how this raster was made."""
    from pipelines.embeddings import embedding_tags, raster_encoding

    return embedding_tags(raster_encoding(res.dtype)) | {
        "AOM_TOKEN_PX": str(res.token_px),
        "AOM_TOKEN_M": f"{res.token_m:g}",
        "AOM_CHECKPOINT_SHA256": res.checkpoint_sha256,
        "AOM_BANDS": storage.json_dumps(res.bands).replace("\n", ""),
        "AOM_SCALING": storage.json_dumps(res.scaling).replace("\n", ""),
        "AOM_CHIP": storage.json_dumps(res.chip).replace("\n", ""),
        "AOM_EMBEDDING": storage.json_dumps(res.embedding).replace("\n", ""),
    }


class _GTiffWriter:
    def __init__(
        self,
        out: str,
        h: int,
        w: int,
        dim: int,
        dtype: str,
        crs: Any,
        transform: Any,
        options: Mapping[str, Any] | None,
    ) -> None:
        import rasterio

        self.out = storage.normalise_url(out)
        self.options = options
        self.dtype = dtype
        self.remote = not storage.is_local(self.out)
        if self.remote:
            fd, self.path = tempfile.mkstemp(suffix=".tif")
            os.close(fd)
        else:
            self.path = storage.local_href(self.out)
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self.final = self.path
            clean_partials(self.final)
            self.path = partial_path(self.final)
        block = 256 if min(h, w) >= 256 else 16 * max(1, min(h, w) // 16) if min(h, w) >= 16 else None
        profile: dict[str, Any] = {
            "driver": "GTiff",
            "height": h,
            "width": w,
            "count": dim,
            "dtype": dtype,
            "crs": crs,
            "transform": transform,
            "nodata": float("nan") if dtype == "float32" else -128,
            "compress": "deflate",
            "interleave": "pixel",
            "BIGTIFF": "IF_SAFER",
        }
        if block:
            profile.update({"tiled": True, "blockxsize": block, "blockysize": block})
        self.dst = rasterio.open(self.path, "w", **profile)

    def write(self, row0: int, emb: np.ndarray) -> None:
        from rasterio.windows import Window

        data = _encode(emb, self.dtype)
        rows, cols = data.shape[:2]
        self.dst.write(np.moveaxis(data, -1, 0), window=Window(0, row0, cols, rows))

    def close(self, res: RasterEmbedResult) -> None:
        from pipelines.embeddings import embedding_band_names, gtiff_to_cog

        self.dst.update_tags(**_tags(res))
        for i, name in enumerate(embedding_band_names(res.dim)):
            self.dst.set_band_description(i + 1, name)
        self.dst.close()
        cog = f"{self.path}.cog.tif"  # the strip-written file becomes a COG (main IFD first, overviews)
        try:
            gtiff_to_cog(self.path, cog)
            os.replace(cog, self.path)
        finally:
            if os.path.exists(cog):
                os.unlink(cog)
        if self.remote:  # streamed from disk; the object appears complete or not at all
            storage.upload_file_atomic(self.path, self.out, self.options)
            os.unlink(self.path)
        else:
            os.replace(self.path, self.final)

    def abort(self) -> None:
        try:
            self.dst.close()
        finally:
            if os.path.exists(self.path):
                os.unlink(self.path)


def _zarr_convention_attrs(crs: Any, h: int, w: int, transform: Any) -> dict[str, Any]:
    """proj:/spatial Zarr convention attributes of the output group (registered in zarr_conventions)."""
    from pipelines.outputs import geo_convention_attrs

    t = transform
    return geo_convention_attrs(crs, [t.a, t.b, t.c, t.d, t.e, t.f], (h, w))


class _ZarrWriter:
    def __init__(
        self,
        out: str,
        h: int,
        w: int,
        dim: int,
        dtype: str,
        crs: Any,
        transform: Any,
        chunk: int,
        options: Mapping[str, Any] | None,
        *,
        overwrite: bool = False,
    ) -> None:
        import zarr

        from pipelines.embeddings import zarr_store

        self.dtype = dtype
        self.out, self.options = out, options
        # the lease first: nothing in the store is removed unless this run is its one writer
        self.lease = Lease(storage.join(storage.normalise_url(out), "_leases", "writer.json"), options)
        self.lease.acquire()
        try:
            # checked again under the lease (it may have changed since the caller's check); only
            # this project's nodes of an earlier result go, other entries stay
            state = claim_output(
                out, OutputKind.RASTER_ZARR, storage_options=options, overwrite=overwrite, remove=False
            )
            remove_owned(out, state.kind or OutputKind.RASTER_ZARR, options)
            store = zarr_store(out, options)
            self.group = zarr.open_group(
                store=store,
                mode="a",
                zarr_format=3,
                attributes={"aom_embeddings": "1", "aom_complete": False, "aom_status": INCOMPLETE_NOTE},
            )
            wkt = crs.to_wkt() if crs is not None else ""
            gt = (transform.c, transform.a, transform.b, transform.f, transform.d, transform.e)
            self.arr = self.group.create_array(  # band-first, as GDAL/rioxarray read a multi-band raster
                "embeddings",
                shape=(dim, h, w),
                chunks=(dim, min(chunk, h), min(chunk, w)),
                dtype=dtype,
                fill_value=float("nan") if dtype == "float32" else -128,
                dimension_names=("dim", "y", "x"),
                # int8: the nodata code for rioxarray/odc-geo, as the store's arrays and the GeoTIFF
                # have it (float32: NaN, the array's fill value; strict JSON has no NaN attribute)
                attributes={"grid_mapping": "spatial_ref", "coordinates": "spatial_ref"}
                | ({} if dtype == "float32" else {"nodata": -128}),
            )
            xs = transform.c + (np.arange(w) + 0.5) * transform.a
            ys = transform.f + (np.arange(h) + 0.5) * transform.e
            for name, vals in (("x", xs), ("y", ys)):
                a = self.group.create_array(
                    name,
                    shape=vals.shape,
                    dtype="float64",
                    dimension_names=(name,),
                    attributes={"units": "m", "standard_name": f"projection_{name}_coordinate"},
                )
                a[:] = vals
            sr = self.group.create_array(
                "spatial_ref",
                shape=(),
                dtype="int64",
                fill_value=0,
                attributes={
                    "crs_wkt": wkt,
                    "spatial_ref": wkt,
                    "GeoTransform": " ".join(repr(float(v)) for v in gt),
                },
            )
            sr[...] = 0
            self.conventions = _zarr_convention_attrs(crs, h, w, transform)
        except BaseException:
            self.lease.release()
            raise

    def write(self, row0: int, emb: np.ndarray) -> None:
        data = _encode(emb, self.dtype)
        self.arr[:, row0 : row0 + data.shape[0], : data.shape[1]] = np.moveaxis(data, -1, 0)

    def close(self, res: RasterEmbedResult) -> None:
        try:
            self.lease.check()
            self._check_intact()
            attrs = {k.lower(): v for k, v in _tags(res).items()} | {"aom_result": res.to_dict()}
            attrs |= self.conventions
            # last write: the root zarr.json with these attributes and the consolidated metadata of
            # the arrays (plain xr.open_zarr opens it without a warning); nothing changes afterwards
            final = attrs | {"aom_complete": True, "aom_status": "complete"}
            finish_consolidated(self.out, _ARRAYS, final, self.options)
        finally:
            self.lease.release()

    def _check_intact(self) -> None:
        """RunFailedError unless every array this writer created is still in the store: whatever
        removed one (a run that ignored the lease), the store is not marked complete."""
        import zarr

        from pipelines.embeddings import zarr_store

        names = _ARRAYS
        try:
            group = zarr.open_group(  # the arrays themselves, not a consolidated copy of their metadata
                store=zarr_store(self.out, self.options, read_only=True), mode="r", use_consolidated=False
            )
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            missing = ["the store's root", *names]
        else:
            missing = [n for n in names if not _has_array(group, n)]
        if missing:
            raise RunFailedError(
                f"{storage.redact_url(storage.normalise_url(self.out))}: {', '.join(missing)} removed by "
                "another process while this run wrote it; not marked complete: rerun to finish"
            )

    def abort(self) -> None:
        self.lease.release()


def _has_array(group: Any, name: str) -> bool:
    try:
        return hasattr(group[name], "shape")
    except KeyError:
        return False


def check_raster_complete(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The root attributes of an ``embed-raster`` Zarr output; OutputError unless it is complete."""
    import zarr

    from pipelines.embeddings import zarr_store

    shown = storage.redact_url(storage.normalise_url(url))
    try:
        attrs = dict(zarr.open_group(store=zarr_store(url, storage_options, read_only=True), mode="r").attrs)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise OutputError(f"{shown} is not an aom embed-raster Zarr output (no Zarr group there)") from None
    if "aom_embeddings" not in attrs:
        raise OutputError(f"{shown} is a Zarr group but not an aom embed-raster output")
    if attrs.get("aom_complete") is not True:
        raise OutputError(f"{shown} is {INCOMPLETE_NOTE}")
    return attrs
