"""Embed any GeoTIFF / COG on the fly into a georeferenced embedding raster (GeoTIFF or Zarr).

::

    from pipelines.embed_raster import embed_raster

    res = embed_raster("scene.tif", "scene_emb.tif", "aom-tiny.safetensors",
                       sensor="sentinel-2-msi", bands=["B02", "B03", "B04", "B08"])

Bands: ``sensor`` + ``bands`` take centre wavelength and FWHM from the sensor registry; for an
unknown sensor give ``wavelengths`` (nm), optionally ``fwhm`` (default 5 % of the centre wavelength)
and, when the raster is not in metres, ``gsd`` (m). Raster band *i* is ``bands[i]``.

Token grid: a token is ``k = round(token_m / pixel size)`` pixels square (``token_m``: the request's
token size inside the checkpoint's supported range, default its ``token_ground_m``; 16 px for 10 m
pixels and 160 m tokens), anchored at the raster's top-left corner; the output has
``ceil(height / k) x ceil(width / k)`` tokens and the transform ``input transform @ scale(k)``, in the
input CRS. The encoder runs on overlapping chips (``core_tokens`` + ``margin_tokens`` each side,
outside the raster = nodata) exactly as for tiles (:mod:`pipelines.embed.chips`); the raster is read
one chip row at a time, so memory is bounded by one strip of ``chip`` rows whatever the raster size.

DN -> reflectance: :func:`pipelines.embed.scaling.raster_scaling`, the rule ``aom eval`` uses too
(``scale``/``offset`` given, else the file's scale/offset tags, else 1e-4 for an integer raster, with
a warning, else 1); the decision is written to the ``AOM_SCALING`` tag / attribute.

Outputs: ``*.tif``/``*.tiff`` -> Cloud-Optimised GeoTIFF (written tiled strip by strip, then
rewritten by GDAL's COG driver: main IFD first, overviews) with ``dim`` bands, ``float32`` (NaN =
nodata) or ``int8`` (the store's ``int8-sqrt`` code of the unit vector, -128 = nodata; inverse
``v = sign(q) * (q / 127) ** 2``); ``*.zarr`` -> a Zarr v3 group with band-first
``embeddings (dim, y, x)`` + ``x``/``y`` coordinates + ``spatial_ref`` (CF grid mapping +
GeoTransform, declared a coordinate so ``xr.open_zarr`` + rioxarray/odc-geo get the CRS by default)
and the proj:/spatial Zarr conventions; any other name is refused.
Remote ``out`` URLs are written locally and uploaded (GeoTIFF) or written through fsspec (Zarr).

Safety (``docs/safety.md``): an existing ``out`` is replaced only when it is an embedding raster of
the same format written by aom (``--overwrite`` replaces another aom output; files aom did not write
are never touched); ``out`` equal to the input or checkpoint is refused. A GeoTIFF is written as
``<out>.partial-<pid>.tif`` and moved into place when complete (partials of killed runs are removed
by the next run). A Zarr output holds a writer lease (``_leases/writer.json``) while written and its
root attribute ``aom_complete`` turns true last; :func:`check_raster_complete` refuses one without it.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from pipelines import storage
from pipelines.embed.chips import (
    ChipLayout,
    EmbedConfigError,
    GroupPixels,
    band_record,
    checked_token_m,
    embed_region,
    input_stats,
    resolve_normaliser,
)
from pipelines.embed.request import PRECISIONS
from pipelines.embed.scaling import raster_scaling
from pipelines.errors import check_choice, check_device, check_number
from pipelines.outputs import (
    Lease,
    OutputError,
    OutputKind,
    check_output_format,
    claim_output,
    clean_partials,
    partial_path,
    remove_owned,
)
from pipelines.registry import BandSpec

DTYPES = ("float32", "int8")
OUTPUT_FORMATS = {".tif": "gtiff", ".tiff": "gtiff", ".zarr": "zarr"}
"""Output name endings -> format; any other ``--out`` is refused."""
INCOMPLETE_NOTE = (
    "incomplete: the writing run was interrupted; rerun the same aom embed-raster command to finish it"
)
RASTER_COLLECTION = "raster"  # the collection recorded for a raster's bands


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
    elapsed_s: float
    model_s: float
    bands: list[dict[str, Any]]
    checkpoint_sha256: str
    scaling: dict[str, Any] = field(default_factory=dict)  # RasterScaling.to_dict(): DN -> reflectance

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = storage.redact_url(self.out)
        return d


def _band_infos(
    n_raster: int,
    sensor: str | None,
    bands: Sequence[str],
    wavelengths: Sequence[float],
    fwhm: Sequence[float],
    gsd: float,
    registry_files: Sequence[str] = (),
) -> list[BandSpec]:
    if wavelengths:
        if sensor and bands:
            raise EmbedConfigError("give either --sensor/--bands (registry) or --wavelengths, not both")
        wl = [float(w) for w in wavelengths]
        fw = [float(f) for f in fwhm] if fwhm else [0.05 * w for w in wl]
        names = list(bands) or [f"b{i + 1}" for i in range(len(wl))]
        if not (len(wl) == len(fw) == len(names)):
            raise EmbedConfigError(
                f"--wavelengths ({len(wl)}), --fwhm ({len(fw)}) and --bands ({len(names)}) differ in length"
            )
        if any(not (math.isfinite(w) and w > 0) for w in wl + fw):
            raise EmbedConfigError("wavelengths and FWHMs must be positive numbers (nm)")
        infos = [
            BandSpec(name=n, sensor=sensor or "custom", center_wavelength_nm=w, fwhm_nm=f, gsd_m=gsd)
            for n, w, f in zip(names, wl, fw)
        ]
    else:
        if not sensor or not bands:
            raise EmbedConfigError(
                "band metadata needed: --sensor NAME --bands B02,B03,... (registry), or --wavelengths (nm) "
                "[--fwhm] [--gsd] for an unknown sensor"
            )
        from pipelines.registry import UnknownEntryError, load_registry

        try:
            sens = load_registry(registry_files).sensor(sensor)
            specs = [sens.band(b) for b in bands]
        except UnknownEntryError as exc:
            raise EmbedConfigError(str(exc)) from None
        infos = [replace(b, gsd_m=gsd) for b in specs]
    if len(infos) != n_raster:
        raise EmbedConfigError(
            f"the raster has {n_raster} band(s) but {len(infos)} were described; give one name/wavelength per raster band"
        )
    return infos


def _check_raster(input_url: str) -> None:
    """The input exists and GDAL opens it as a raster (one line otherwise, before any work)."""
    import rasterio
    from rasterio.errors import RasterioIOError

    if storage.is_local(input_url):
        path = input_url.removeprefix("file://")
        if not os.path.exists(path):
            raise EmbedConfigError(f"INPUT.tif {input_url}: no such file")
        if os.path.isdir(path):
            raise EmbedConfigError(f"INPUT.tif {input_url} is a folder; give a GeoTIFF / COG file")
    try:
        with rasterio.open(input_url) as src:
            if src.count < 1:
                raise EmbedConfigError(f"INPUT.tif {storage.redact_url(input_url)} has no bands")
    except RasterioIOError as exc:
        raise EmbedConfigError(
            f"INPUT.tif {storage.redact_url(input_url)} is not a raster GDAL can open (a GeoTIFF / COG): "
            + " ".join(storage.redact_url(str(exc)).split())
        ) from None


def embed_raster(
    input_url: str,
    out: str,
    checkpoint: str,
    *,
    sensor: str | None = None,
    bands: Sequence[str] = (),
    wavelengths: Sequence[float] = (),
    fwhm: Sequence[float] = (),
    gsd: float | None = None,
    scale: float | None = None,
    offset: float | None = None,
    dtype: str = "float32",
    token_m: float | None = None,
    core_tokens: int = 24,
    margin_tokens: int = 3,
    batch_size: int = 8,
    device: str = "auto",
    precision: str = "fp32",
    storage_options: Mapping[str, Any] | None = None,
    input_storage_options: Mapping[str, Any] | None = None,
    registry_files: Sequence[str] = (),
    progress: bool = True,
    overwrite: bool = False,
) -> RasterEmbedResult:
    """Embed one raster (see the module docstring); returns what was written.

    ``overwrite``: replace an existing aom output of another kind at ``out`` (never a file aom did
    not write)."""
    import rasterio
    from affine import Affine

    from pipelines.embed.checkpoint import _resolve_device, load_checkpoint_url

    t0 = time.perf_counter()
    check_choice("dtype (--dtype)", dtype, DTYPES)
    check_choice("precision (--precision)", precision, PRECISIONS)
    check_device("device (--device)", device)
    check_number("gsd (--gsd)", gsd, above=0)
    check_number("core_tokens (--core-tokens)", core_tokens, minimum=1)
    check_number("margin_tokens (--margin-tokens)", margin_tokens, minimum=0)
    check_number("batch_size (--batch-size)", batch_size, minimum=1)
    for what, url in (("INPUT.tif", input_url), ("--checkpoint", checkpoint), ("--out", out)):
        storage.check_url(url, what)
    src_options = input_storage_options or storage_options
    storage.check_credentials(input_url, src_options, "INPUT.tif")
    storage.check_credentials(checkpoint, src_options, "--checkpoint")
    storage.check_credentials(out, storage_options, "--out")
    _check_raster(input_url)
    fmt = check_output_format(out, OUTPUT_FORMATS)
    kind = OutputKind.RASTER_GTIFF if fmt == "gtiff" else OutputKind.RASTER_ZARR
    claim_output(
        out, kind, storage_options=storage_options, inputs=[input_url, checkpoint], overwrite=overwrite
    )
    dev = _resolve_device(device)
    ckpt = load_checkpoint_url(checkpoint, src_options, device=dev)
    cfg = ckpt.config
    with rasterio.open(input_url) as src:
        crs = src.crs
        transform = src.transform
        height, width, count = src.height, src.width, src.count
        if abs(transform.b) > 1e-12 or abs(transform.d) > 1e-12:
            raise EmbedConfigError(
                f"{input_url}: rotated rasters are not supported (transform {tuple(transform)[:6]})"
            )
        px = abs(transform.a)
        if gsd is None:
            if crs is None or not crs.is_projected:
                raise EmbedConfigError(f"{input_url} is not in a projected CRS (metres): give --gsd (m)")
            unit = (crs.linear_units or "").lower()
            if unit not in ("metre", "meter", "m", "metres", "meters"):
                raise EmbedConfigError(f"{input_url}: CRS units are {unit!r}, not metres: give --gsd (m)")
            gsd = px
        if abs(abs(transform.e) - px) > 1e-6 * px:
            raise EmbedConfigError(f"{input_url}: pixels are not square ({px} x {abs(transform.e)})")
        file_scales = tuple(src.scales or ())
        file_offsets = tuple(src.offsets or ())
        dtype_in = src.dtypes[0]
    infos = _band_infos(count, sensor, bands, wavelengths, fwhm, float(gsd), registry_files)
    want_m = checked_token_m(cfg, token_m, storage.redact_url(checkpoint))
    k = max(1, round(want_m / gsd))
    if not (cfg.patch_size_min <= k <= cfg.patch_size_max):
        raise EmbedConfigError(
            f"{gsd:g} m pixels need {want_m / gsd:.2f} px per {want_m:g} m token, outside "
            f"the checkpoint's patch range [{cfg.patch_size_min}, {cfg.patch_size_max}]"
        )
    token_m = k * float(gsd)
    layout = ChipLayout(core_tokens, core_tokens, margin_tokens, token_m)
    normaliser = resolve_normaliser(ckpt.norm_stats, infos)
    scaling = raster_scaling(
        count, dtype_in, file_scales, file_offsets, scale, offset, name=storage.redact_url(input_url)
    )
    sc = np.asarray(scaling.scale, np.float32)
    of = np.asarray(scaling.offset, np.float32)

    if "input" in normaliser.sources.values():  # bands without statistics: the whole raster's own
        normaliser = resolve_normaliser(
            ckpt.norm_stats, infos, fallback=_raster_stats(input_url, infos, sc, of)
        )

    h_tok, w_tok = math.ceil(height / k), math.ceil(width / k)
    cols = math.ceil(w_tok / core_tokens) * core_tokens
    out_transform = transform @ Affine.scale(k)
    dim = int(cfg.embed_dim)
    writer = (
        _GTiffWriter(out, h_tok, w_tok, dim, dtype, crs, out_transform, storage_options)
        if fmt == "gtiff"
        else _ZarrWriter(out, h_tok, w_tok, dim, dtype, crs, out_transform, core_tokens, storage_options)
    )
    res = RasterEmbedResult(
        out=storage.normalise_url(out),
        format=fmt,
        dtype=dtype,
        height=h_tok,
        width=w_tok,
        dim=dim,
        crs=crs.to_string() if crs is not None else "",
        transform=tuple(out_transform)[:6],
        token_px=k,
        token_m=token_m,
        valid_tokens=0,
        chips=0,
        chips_run=0,
        elapsed_s=0.0,
        model_s=0.0,
        bands=[
            band_record(b, RASTER_COLLECTION) | {"normalisation": normaliser.sources[b.key]} for b in infos
        ],
        checkpoint_sha256=ckpt.sha256,
        scaling=scaling.to_dict(),
    )
    from rasterio.windows import Window

    n_strips = math.ceil(h_tok / core_tokens)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_strips, desc="embed-raster", unit="strip", dynamic_ncols=True)
    m = margin_tokens
    try:
        with rasterio.open(input_url) as src:
            for s in range(n_strips):
                row0 = s * core_tokens
                win = Window((-m) * k, (row0 - m) * k, (cols + 2 * m) * k, (core_tokens + 2 * m) * k)
                arr = src.read(window=win, boundless=True, masked=True, out_dtype="float32")
                pix = np.ma.filled(arr.astype(np.float32), np.nan)
                pix = pix * sc[:, None, None] + of[:, None, None]
                group = GroupPixels(RASTER_COLLECTION, float(gsd), tuple(infos), pix.astype(np.float32))
                region = embed_region(
                    ckpt.model,
                    [group],
                    layout,
                    normaliser,
                    core_hw=(core_tokens, cols),
                    batch_size=batch_size,
                    device=dev,
                    precision=precision,
                )
                rows = min(core_tokens, h_tok - row0)
                emb = region.embeddings[:rows, :w_tok]
                res.chips += region.chips_total
                res.chips_run += region.chips_run
                res.model_s += region.model_s
                res.valid_tokens += int(np.isfinite(emb).all(axis=-1).sum())
                writer.write(row0, emb)
                if bar is not None:
                    bar.update(1)
        res.elapsed_s = time.perf_counter() - t0
        writer.close(res)
    except BaseException:
        writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    return res


def _raster_stats(
    input_url: str, infos: Sequence[BandSpec], sc: np.ndarray, of: np.ndarray, max_px: int = 1024
) -> dict[str, tuple[float, float]]:
    """(mean, std) of every band's valid reflectance over the whole raster, read decimated to at
    most ``max_px`` a side (overviews when the file has them): the input's own statistics, one
    value per band for the whole output (never per strip, which would make seams)."""
    import rasterio

    with rasterio.open(input_url) as src:
        f = max(1, math.ceil(max(src.height, src.width) / max_px))
        arr = src.read(
            out_shape=(src.count, math.ceil(src.height / f), math.ceil(src.width / f)),
            masked=True,
            out_dtype="float32",
        )
    pix = np.ma.filled(arr.astype(np.float32), np.nan) * sc[:, None, None] + of[:, None, None]
    return {b.key: input_stats(pix[i]) for i, b in enumerate(infos)}


def _encode(emb: np.ndarray, dtype: str) -> np.ndarray:
    from pipelines.embeddings import quantize

    if dtype == "int8":
        return quantize(emb)
    return emb.astype(np.float32)


def _tags(res: RasterEmbedResult) -> dict[str, str]:
    inverse = (
        "int8-sqrt: unit vector component v = sign(q) * (q / 127) ** 2; q = -128 is nodata"
        if res.dtype == "int8"
        else "float32 token vectors; NaN is nodata"
    )
    return {
        "AOM_EMBEDDINGS": "1",
        "AOM_ENCODING": inverse,
        "AOM_TOKEN_PX": str(res.token_px),
        "AOM_TOKEN_M": f"{res.token_m:g}",
        "AOM_CHECKPOINT_SHA256": res.checkpoint_sha256,
        "AOM_BANDS": storage.json_dumps(res.bands).replace("\n", ""),
        "AOM_SCALING": storage.json_dumps(res.scaling).replace("\n", ""),
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
            self.path = self.out[len("file://") :] if self.out.startswith("file://") else self.out
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
        from pipelines.embeddings import gtiff_to_cog

        self.dst.update_tags(**_tags(res))
        for i in range(res.dim):
            self.dst.set_band_description(i + 1, f"emb_{i:04d}")
        self.dst.close()
        cog = f"{self.path}.cog.tif"  # the strip-written file becomes a COG (main IFD first, overviews)
        try:
            gtiff_to_cog(self.path, cog)
            os.replace(cog, self.path)
        finally:
            if os.path.exists(cog):
                os.unlink(cog)
        if self.remote:
            fs, path = storage.filesystem(self.out, self.options)
            fs.put_file(self.path, path)
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
    import pyproj

    from pipelines.embeddings import PROJ_CONVENTION, SPATIAL_CONVENTION

    t = transform
    out: dict[str, Any] = {
        "zarr_conventions": [dict(PROJ_CONVENTION), dict(SPATIAL_CONVENTION)],
        "spatial:dimensions": ["y", "x"],
        "spatial:shape": [h, w],
        "spatial:transform": [t.a, t.b, t.c, t.d, t.e, t.f],
        "spatial:registration": "pixel",
    }
    if crs is not None:
        p = pyproj.CRS.from_user_input(crs.to_wkt())
        epsg = p.to_epsg()
        out.update({"proj:code": f"EPSG:{epsg}"} if epsg else {"proj:wkt2": p.to_wkt()})
    return out


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
    ) -> None:
        import zarr

        from pipelines.embeddings import zarr_store

        self.dtype = dtype
        self.lease = Lease(storage.join(storage.normalise_url(out), "_leases", "writer.json"), options)
        self.lease.acquire()
        try:
            # only this project's nodes of an earlier (same-kind) result go; other entries stay
            remove_owned(out, OutputKind.RASTER_ZARR, options)
            store = zarr_store(out, options)
            self.group = zarr.open_group(
                store=store,
                mode="a",
                zarr_format=3,
                attributes={"aom_embeddings": "1", "aom_complete": False, "aom_status": INCOMPLETE_NOTE},
            )
        except BaseException:
            self.lease.release()
            raise
        wkt = crs.to_wkt() if crs is not None else ""
        gt = (transform.c, transform.a, transform.b, transform.f, transform.d, transform.e)
        self.arr = self.group.create_array(  # band-first, as GDAL/rioxarray read a multi-band raster
            "embeddings",
            shape=(dim, h, w),
            chunks=(dim, min(chunk, h), min(chunk, w)),
            dtype=dtype,
            fill_value=float("nan") if dtype == "float32" else -128,
            dimension_names=("dim", "y", "x"),
            attributes={"grid_mapping": "spatial_ref", "coordinates": "spatial_ref"},
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

    def write(self, row0: int, emb: np.ndarray) -> None:
        data = _encode(emb, self.dtype)
        self.arr[:, row0 : row0 + data.shape[0], : data.shape[1]] = np.moveaxis(data, -1, 0)

    def close(self, res: RasterEmbedResult) -> None:
        try:
            self.lease.check()
            attrs = {k.lower(): v for k, v in _tags(res).items()} | {"aom_result": res.to_dict()}
            attrs |= self.conventions
            self.group.attrs.update(attrs | {"aom_complete": True, "aom_status": "complete"})  # last write
        finally:
            self.lease.release()

    def abort(self) -> None:
        self.lease.release()


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
