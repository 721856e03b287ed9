"""`aom embed` (tiles of an AOI -> the embeddings store) and `aom embed-raster` (one GeoTIFF/COG).

Exit codes of ``aom embed``: 0 every tile done (or empty / already complete); 1 some tiles failed, or
the ``--catalog-url`` search still failed after its retries (rerun the same command to finish them);
2 the request does not fit (nothing was written; one ``error: ...`` line, see :mod:`flows.cli`).
``aom embed-raster``: 0 written, 2 bad request.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer

from flows.commands._options import (
    bbox_parts,
    check_file_out,
    check_file_url,
    check_folder_url,
    check_not_empty,
    csv_list,
    dask_address_option,
    holder_wait_option,
    max_attempts_option,
    read_aoi_file,
    storage_options_option,
    workers_option,
)
from pipelines.errors import EXIT_FAILED, InputError, check_device_available
from pipelines.registry import DEFAULT_CATALOG
from pipelines.tiling import DEFAULT_TILE_SIZE_M, TileError, geometry_from_geojson


def _embedding_option() -> Any:
    """``--embedding`` of ``aom embed`` and ``aom embed-raster`` (``aom_model.EMBEDDINGS``)."""
    return typer.Option(
        "position",
        "--embedding",
        help="What a token vector is: position (the encoder's position token, embed_dim values) or spectral "
        "(the band tokens the encoder infers at Sentinel-2 MSI's 12 surface bands, 12 x band width values, "
        "the same layout whatever bands the input has; stored as float16, position as int8). See "
        "docs/embedding.md, 'What a token vector is'.",
    )


def parse_aoi(text: str) -> Any:
    """``W,S,E,N`` -> bbox tuple; otherwise a GeoJSON file (geometry, Feature or FeatureCollection)."""
    parts = bbox_parts(text)
    if len(parts) == 4:
        try:
            return tuple(float(p) for p in parts)
        except ValueError:
            pass
    path = Path(text)
    if not path.is_file():
        raise typer.BadParameter(f"--aoi {text!r} is neither W,S,E,N nor a GeoJSON file")
    doc = read_aoi_file(path)
    try:
        geometry_from_geojson(doc)
    except TileError as exc:
        raise InputError(f"--aoi {path}: {exc}") from None
    return doc


def _quiet_dask() -> None:
    for name in (
        "distributed",
        "distributed.scheduler",
        "distributed.nanny",
        "distributed.worker",
        "distributed.core",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)


def embed(
    ctx: typer.Context,
    checkpoint: str = typer.Option(..., "--checkpoint", help="Checkpoint URL (local path, s3://, ...)."),
    out: str = typer.Option(..., "--out", help="Embeddings store root URL (Zarr v3)."),
    datetime: str = typer.Option(
        ..., "--datetime", help="RFC 3339 range, one composite per range; comma-separate several time slices."
    ),
    aoi: str | None = typer.Option(None, "--aoi", help="W,S,E,N in WGS84 degrees, or a GeoJSON file."),
    tiles: str | None = typer.Option(
        None, "--tiles", help="Comma-separated tile ids (with --aoi: intersected)."
    ),
    cubes: str | None = typer.Option(None, "--cubes", help="Cube store URL (from `aom cubes`)."),
    catalog_url: str | None = typer.Option(
        None,
        "--catalog-url",
        help="Assemble from this catalog instead of --cubes: catalog.json / *.ndjson / *.parquet (local or "
        "s3://) or a STAC API root.",
    ),
    catalog: str = typer.Option(
        DEFAULT_CATALOG, "--catalog", help="Registry catalog of --catalog-url's collections (`aom sensors`)."
    ),
    max_attempts: int = max_attempts_option(
        " of the --catalog-url search, of its asset reads (GDAL_HTTP_MAX_RETRY=N-1) and of the listing of"
        " --out's completion records"
    ),
    collections: str | None = typer.Option(
        None,
        "--collections",
        help="Collections to use (default: all in the cubes; sentinel-2-l2a from a catalog).",
    ),
    bands: str | None = typer.Option(None, "--bands", help="Only these band names (default: all)."),
    version: str | None = typer.Option(
        None, "--version", help="Version name (default: <model>-<checkpoint hash>)."
    ),
    tile_size_m: float = typer.Option(
        DEFAULT_TILE_SIZE_M, "--tile-size-m", help="Tile grid size (must match the cubes)."
    ),
    token_m: float | None = typer.Option(
        None,
        "--token-m",
        help="Ground size of one token (m), e.g. 40, 80, 160, 320, inside the checkpoint's supported range "
        "(default: its token_ground_m).",
    ),
    core_tokens: int | None = typer.Option(
        None, "--core-tokens", help="Tokens a side kept per chip (default 24)."
    ),
    margin_tokens: int | None = typer.Option(
        None,
        "--margin-tokens",
        help="Context tokens each side of a chip, dropped after the encoder (default 3).",
    ),
    blend_tokens: int | None = typer.Option(
        None,
        "--blend-tokens",
        help="Seam blending: each chip also writes this many tokens beyond its core and a token is the "
        "sin^2-weighted mean of the chips that wrote it (0 = cores only, seams visible; default "
        "min(3, margin, core / 2)). See docs/embedding.md, 'Seam blending'.",
    ),
    embedding: str = _embedding_option(),
    quantisation: str | None = typer.Option(
        None,
        "--quantisation",
        help="How the version stores values: int8-sqrt (codes of the unit vectors, 1 byte a value) or "
        "float16 (the raw values, 2 bytes; keeps what --metric whitened searches need). Default: int8-sqrt "
        "for position, float16 for spectral; another one gets its own default version (-float16). See "
        "docs/embedding.md, 'Values'.",
    ),
    batch_size: int = typer.Option(8, "--batch-size", help="Chips per encoder call."),
    tiles_per_task: int = typer.Option(
        0,
        "--tiles-per-task",
        min=0,
        help="Tiles per Dask task; 0 (default): auto, from a cube store squares of neighbouring tiles "
        "(3 x 3 from 288 tiles, 2 x 2 from 64, else 1) that read their shared margins once; from a catalog 1.",
    ),
    dask_address: str | None = dask_address_option(),
    workers: int = workers_option(
        2, " (Dask LocalCluster worker processes; 0 = in this process, no Dask)", min_workers=0
    ),
    torch_threads: int = typer.Option(1, "--torch-threads", help="Threads of each encoder call."),
    threads_per_worker: int = typer.Option(
        2,
        "--threads-per-worker",
        help="Threads per LocalCluster worker: one runs the encoder, the others read the next tiles.",
    ),
    gpu_resource: str = typer.Option(
        "auto",
        "--gpu-resource",
        help="Dask resource that embed tasks require: auto (GPU when workers offer it, else the local "
        "cluster's encoder slot), none, or a resource name.",
    ),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N | mps"),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 (autocast; GPUs)."),
    storage_options: list[str] = storage_options_option(" for --out"),
    input_storage_options: list[str] = typer.Option(
        [],
        "--input-storage-options",
        help="fsspec options for inputs and checkpoint, as --storage-options (default: --storage-options).",
    ),
    holder_wait_min: float = holder_wait_option(),
    write_stac: bool = typer.Option(
        True, "--stac/--no-stac", help="(Re)write the STAC collection and items."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    summary_json: str | None = typer.Option(
        None, "--summary-json", help="Also write the run summary here (a file)."
    ),
) -> None:
    """Embed every tile of the grid over an AOI into the continent-scale embeddings store.

    The options are EmbedRequest fields of the same names, built by ``EmbedRequest.from_dict`` as
    the ``embed`` flow builds its request.
    """
    from pipelines.embed import EmbedRequest, run_embedding
    from pipelines.runs import dask_address as dask_address_of
    from pipelines.storage import check_credentials, write_json_atomic

    _quiet_dask()
    values = {k: v for k, v in ctx.params.items() if k != "summary_json"}
    check_not_empty(aoi, "--aoi", "W,S,E,N or a GeoJSON file")  # "" was no AOI: every --tiles tile
    values["aoi"] = parse_aoi(aoi) if aoi else None
    request = EmbedRequest.from_dict(values)
    if dask_address_of(dask_address) is None:  # local workers: this machine's devices
        check_device_available("device (--device)", device)
    check_folder_url(out, "--out")
    check_file_out(summary_json, "--summary-json")  # before the run, not after it
    check_file_url(checkpoint, "--checkpoint")
    check_folder_url(cubes, "--cubes")
    check_credentials(request.out, request.storage_options, "--out")
    for option, url in (("--checkpoint", checkpoint), ("--cubes", cubes), ("--catalog-url", catalog_url)):
        check_credentials(url, request.options_for(url), option)
    summary = run_embedding(request)
    typer.echo(summary.format())
    for warning in summary.warnings:  # e.g. an AOI away from every cube of the store (exit 0 all the same)
        typer.echo(f"warning: {warning}", err=True)
    if summary_json is not None:
        write_json_atomic(summary_json, summary.to_dict(), request.storage_options)
    if not summary.complete:
        raise typer.Exit(EXIT_FAILED)


def embed_raster_cmd(
    input_tif: str = typer.Argument(
        ..., metavar="INPUT.tif", help="GeoTIFF / COG (local path or URL GDAL reads)."
    ),
    checkpoint: str = typer.Option(..., "--checkpoint", help="Checkpoint URL."),
    out: str = typer.Option(..., "--out", help="Output: *.tif (GeoTIFF) or *.zarr (Zarr v3), local or URL."),
    sensor: str | None = typer.Option(None, "--sensor", help="Registry sensor name (see `aom sensors`)."),
    bands: str | None = typer.Option(
        None, "--bands", help="Band names, one per raster band, e.g. B02,B03,B04,B08."
    ),
    wavelengths: str | None = typer.Option(
        None, "--wavelengths", help="Unknown sensor: centre wavelengths (nm)."
    ),
    fwhm: str | None = typer.Option(
        None, "--fwhm", help="Unknown sensor: FWHM (nm); default 5% of the wavelength."
    ),
    gsd: float | None = typer.Option(
        None, "--gsd", help="Pixel size (m); default from the raster (projected CRS)."
    ),
    scale: float | None = typer.Option(
        None,
        "--scale",
        help="Reflectance = DN * scale + offset (default: the file's scale/offset tags; an integer raster "
        "without tags: 1e-4, with a warning; a float raster: 1). Recorded in the AOM_SCALING tag.",
    ),
    offset: float | None = typer.Option(None, "--offset", help="See --scale (default: file tags or 0)."),
    dtype: str = typer.Option(
        "float32", "--dtype", help="float32 (NaN nodata) or int8 (int8-sqrt, -128 nodata)."
    ),
    token_m: float | None = typer.Option(
        None,
        "--token-m",
        help="Ground size of one token (m), e.g. 40, 80, 160, 320, inside the checkpoint's supported range "
        "(default: its token_ground_m).",
    ),
    core_tokens: int = typer.Option(24, "--core-tokens", help="Tokens a side kept per chip."),
    margin_tokens: int = typer.Option(3, "--margin-tokens", help="Context tokens each side of a chip."),
    blend_tokens: int | None = typer.Option(
        None,
        "--blend-tokens",
        help="Seam blending: tokens each chip writes beyond its core, blended (sin^2 weights) with the "
        "neighbouring chip (0 = cores only; default min(3, margin, core / 2)). See docs/embedding.md, "
        "'Seam blending'.",
    ),
    embedding: str = _embedding_option(),
    batch_size: int = typer.Option(8, "--batch-size", help="Chips per encoder call."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N | mps"),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 (autocast; GPUs)."),
    storage_options: list[str] = storage_options_option(" for the input, checkpoint and --out"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace an existing aom output of another kind at --out (files aom did not write are never touched).",
    ),
) -> None:
    """Embed one GeoTIFF/COG into a georeferenced embedding raster on the model's token grid."""
    from pipelines.embed import embed_raster
    from pipelines.embed.scaling import check_scaling_options
    from pipelines.storage import parse_storage_options

    options = parse_storage_options(storage_options)
    check_scaling_options(scale, offset)
    check_device_available("device (--device)", device)
    check_file_url(checkpoint, "--checkpoint")
    if not out.rstrip("/").lower().endswith(".zarr"):  # a Zarr output is a folder: embed_raster claims it
        check_file_out(out, "--out")

    try:
        wl = [float(v) for v in csv_list(wavelengths)]
        fw = [float(v) for v in csv_list(fwhm)]
    except ValueError:
        raise typer.BadParameter("--wavelengths / --fwhm take comma-separated numbers (nm)") from None
    res = embed_raster(
        input_tif,
        out,
        checkpoint,
        sensor=sensor,
        bands=csv_list(bands),
        wavelengths=wl,
        fwhm=fw,
        gsd=gsd,
        scale=scale,
        offset=offset,
        dtype=dtype,
        token_m=token_m,
        core_tokens=core_tokens,
        margin_tokens=margin_tokens,
        blend_tokens=blend_tokens,
        embedding=embedding,
        batch_size=batch_size,
        device=device,
        precision=precision,
        storage_options=options,
        progress=progress,
        overwrite=overwrite,
    )
    typer.echo(
        f"{res.format} {res.dtype} {res.height}x{res.width} tokens x {res.dim} dims ({res.token_px} px = "
        f"{res.token_m:g} m per token, {res.crs}) -> {res.to_dict()['out']}: {res.valid_tokens} valid tokens, "
        f"{res.chips_run}/{res.chips} chips in {res.elapsed_s:.1f} s"
    )


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)
    app.command("embed-raster")(embed_raster_cmd)
