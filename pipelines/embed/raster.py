"""Embed any GeoTIFF / COG on the fly into a georeferenced embedding raster (GeoTIFF or Zarr).

::

    from pipelines.embed import embed_raster

    res = embed_raster("scene.tif", "scene_emb.tif", "aom-tiny.safetensors",
                       sensor="sentinel-2-msi", bands=["B02", "B03", "B04", "B08"])

Bands: ``sensor`` + ``bands`` take centre wavelength and FWHM from the sensor registry; for an
unknown sensor give ``wavelengths`` (nm), optionally ``fwhm`` (default 5 % of the centre wavelength)
and, when the raster is not in metres, ``gsd`` (m). Raster band *i* is ``bands[i]``.

Token grid: a token is ``k = round(token_m / pixel size)`` pixels square (``token_m``: the request's
token size inside the checkpoint's supported range, default its ``token_ground_m``; 16 px for 10 m
pixels and 160 m tokens; :func:`token_px` keeps ``k * pixel size`` inside the range where a whole
number of pixels can, and refuses pixels coarser than the largest token size), anchored at the raster's top-left corner; the output has
``ceil(height / k) x ceil(width / k)`` tokens and the transform ``input transform @ scale(k)``, in the
input CRS. The encoder runs on overlapping chips (``core_tokens`` + ``margin_tokens`` each side,
outside the raster = nodata) exactly as for tiles (:mod:`pipelines.embed.chips`), seams blended over
``blend_tokens`` (default 3; 0 = cores only); the raster is read one strip at a time (one core row,
``RASTER_STRIP_CORES`` with blending, plus the padding), so memory is bounded by one strip whatever the
raster size. The layout is recorded in the ``AOM_CHIP`` tag (``ChipLayout.to_dict``).

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
``<out>.partial-<pid>@<host>.tif`` and moved into place when complete (partials of killed runs are removed
by the next run); an earlier GeoTIFF at ``out`` is never removed before that, ``overwrite`` or not, so a
failed run keeps it (a folder at a GeoTIFF name is refused: no file replaces it whole). A Zarr output holds a writer lease (``_leases/writer.json``) while written: the
lease is taken before anything in the store is removed (``--overwrite`` of a store another live run
is writing is refused, exit 1, nothing removed), and its root attribute ``aom_complete`` turns true
last, only while the lease is still held and the store's arrays are all there, in the one write that
also gives the root ``zarr.json`` its consolidated metadata (plain ``xr.open_zarr(out)`` opens it
without a warning); :func:`check_raster_complete` refuses one without it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from pipelines import storage
from pipelines.embed.chips import (
    DEFAULT_BLEND_TOKENS,
    ChipLayout,
    EmbedConfigError,
    GroupPixels,
    band_record,
    blend_offset,
    check_embedding_kind,
    checked_token_m,
    embed_region,
    embedding_record,
    input_stats,
    resolve_normaliser,
)
from pipelines.embed.raster_out import (
    RasterEmbedResult,
    _GTiffWriter,
    _ZarrWriter,
)
from pipelines.embed.request import PRECISIONS
from pipelines.embed.scaling import raster_scaling
from pipelines.errors import check_choice, check_device, check_number
from pipelines.outputs import (
    OutputError,
    OutputKind,
    check_output_format,
    claim_output,
)
from pipelines.registry import BandSpec

DTYPES = ("float32", "int8")
OUTPUT_FORMATS = {".tif": "gtiff", ".tiff": "gtiff", ".zarr": "zarr"}
"""Output name endings -> format; any other ``--out`` is refused."""
RASTER_COLLECTION = "raster"  # the collection recorded for a raster's bands
RASTER_STRIP_CORES = 4
"""Chip rows per strip with seam blending: each strip runs one more chip row than it keeps (the rows
across its edges are run by both strips), so 4 cores a strip cost 5/4 of the chip rows."""


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


def token_px(cfg: Any, want_m: float, gsd: float, checkpoint: str = "the checkpoint") -> int:
    """Pixels per token for ``want_m`` (a size inside the checkpoint's range) on ``gsd`` m pixels:
    the whole number nearest to ``want_m / gsd`` whose size ``k * gsd`` stays inside the range
    (``AOMConfig.token_m_range``), or just the nearest when no whole number lands inside (a
    fixed-size checkpoint: 5 px of 30 m for 160 m). Pixels coarser than the largest token size are
    refused like a ``--token-m`` outside the range (EmbedConfigError, exit 2): one pixel per token
    would already be a size the checkpoint does not serve. (They ran at one pixel per token, e.g.
    4633 m MODIS pixels with a 40-320 m checkpoint, though ``--token-m 4633`` was refused.)"""
    lo, hi = cfg.token_m_range
    served = f"{lo:g} m only" if lo == hi else f"{lo:g} to {hi:g} m"
    if gsd > hi * (1 + 1e-9):
        raise EmbedConfigError(
            f"{checkpoint}: token size {gsd:g} m (1 px) is outside the checkpoint's supported range: "
            f"{served}; the raster's {gsd:g} m pixels are coarser than the largest token size"
        )
    k = max(1, round(want_m / gsd))
    k_lo = max(1, math.ceil(lo / gsd * (1 - 1e-9)))
    k_hi = math.floor(hi / gsd * (1 + 1e-9))
    return min(max(k, k_lo), k_hi) if k_lo <= k_hi else k


def _check_raster(input_url: str) -> None:
    """The input exists and GDAL opens it as a raster (one line otherwise, before any work)."""
    import rasterio
    from rasterio.errors import RasterioIOError

    if storage.is_local(input_url):
        path = storage.local_href(input_url)
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
    blend_tokens: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    precision: str = "fp32",
    embedding: str = "position",
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
    check_embedding_kind(embedding)
    check_device("device (--device)", device)
    check_number("gsd (--gsd)", gsd, above=0)
    check_number("core_tokens (--core-tokens)", core_tokens, minimum=1)
    check_number("margin_tokens (--margin-tokens)", margin_tokens, minimum=0)
    check_number("blend_tokens (--blend-tokens)", blend_tokens, minimum=0)
    check_number("batch_size (--batch-size)", batch_size, minimum=1)
    for what, url in (("INPUT.tif", input_url), ("--checkpoint", checkpoint), ("--out", out)):
        storage.check_url(url, what)
    input_url = storage.local_href(input_url)  # GDAL reads a file:// URI's %20 literally
    src_options = input_storage_options or storage_options
    storage.check_credentials(input_url, src_options, "INPUT.tif")
    storage.check_credentials(checkpoint, src_options, "--checkpoint")
    storage.check_credentials(out, storage_options, "--out")
    _check_raster(input_url)
    fmt = check_output_format(out, OUTPUT_FORMATS)
    kind = OutputKind.RASTER_GTIFF if fmt == "gtiff" else OutputKind.RASTER_ZARR
    # only checked here, nothing removed: a Zarr store is cleared under its writer lease (_ZarrWriter),
    # so a second run never hollows out a store another run is writing; a GeoTIFF is replaced by the
    # finished new file (_GTiffWriter.close), so a run that fails keeps the old one
    state = claim_output(
        out,
        kind,
        storage_options=storage_options,
        inputs=[input_url, checkpoint],
        overwrite=overwrite,
        remove=False,
    )
    if fmt == "gtiff" and state.exists and not state.is_file:  # a file cannot replace a folder whole
        raise OutputError(
            f"--out {storage.redact_url(storage.normalise_url(out))} is a folder (an aom {state.kind} "
            "output); a GeoTIFF --out must be a file name: choose another --out"
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
    k = token_px(cfg, want_m, float(gsd), storage.redact_url(checkpoint))
    if not (cfg.patch_size_min <= k <= cfg.patch_size_max):
        raise EmbedConfigError(
            f"{gsd:g} m pixels need {want_m / gsd:.2f} px per {want_m:g} m token, outside "
            f"the checkpoint's patch range [{cfg.patch_size_min}, {cfg.patch_size_max}]"
        )
    token_m = k * float(gsd)
    if blend_tokens is None:
        blend_tokens = min(DEFAULT_BLEND_TOKENS, margin_tokens, core_tokens // 2)
    strip = core_tokens * (RASTER_STRIP_CORES if blend_tokens else 1)  # token rows per strip
    layout = ChipLayout(
        strip, core_tokens, margin_tokens, token_m, blend_tokens, blend_offset(core_tokens, blend_tokens)
    )
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
    dim = ckpt.model.embedding_dim(embedding)
    writer = (
        _GTiffWriter(out, h_tok, w_tok, dim, dtype, crs, out_transform, storage_options)
        if fmt == "gtiff"
        else _ZarrWriter(
            out,
            h_tok,
            w_tok,
            dim,
            dtype,
            crs,
            out_transform,
            core_tokens,
            storage_options,
            overwrite=overwrite,
        )
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
        chip=layout.to_dict(),
        elapsed_s=0.0,
        model_s=0.0,
        bands=[
            band_record(b, RASTER_COLLECTION) | {"normalisation": normaliser.sources[b.key]} for b in infos
        ],
        checkpoint_sha256=ckpt.sha256,
        scaling=scaling.to_dict(),
        embedding=embedding_record(ckpt.model, embedding),
    )
    from rasterio.windows import Window

    n_strips = math.ceil(h_tok / strip)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_strips, desc="embed-raster", unit="strip", dynamic_ncols=True)
    m = layout.pad_tokens
    try:
        with rasterio.open(input_url) as src:
            for s in range(n_strips):
                row0 = s * strip
                rows = min(strip, h_tok - row0)
                height = math.ceil(rows / core_tokens) * core_tokens  # the last strip: whole cores it needs
                win = Window((-m) * k, (row0 - m) * k, (cols + 2 * m) * k, (height + 2 * m) * k)
                arr = src.read(window=win, boundless=True, masked=True, out_dtype="float32")
                pix = np.ma.filled(arr.astype(np.float32), np.nan)
                pix = pix * sc[:, None, None] + of[:, None, None]
                group = GroupPixels(RASTER_COLLECTION, float(gsd), tuple(infos), pix.astype(np.float32))
                region = embed_region(
                    ckpt.model,
                    [group],
                    layout,
                    normaliser,
                    core_hw=(height, cols),
                    batch_size=batch_size,
                    device=dev,
                    precision=precision,
                    embedding=embedding,
                )
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
