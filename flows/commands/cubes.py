"""`aom cubes`: build per-tile Zarr v3 reflectance cubes from STAC items, exactly once per tile.

Items come from ``--items`` (the ndjson/parquet saved by ``aom search``, any fsspec URL) or from a
search (``--catalog-url``/``--catalog`` with ``--collections``, ``--bbox``, ``--datetime``). Tiles
are those of the grid touched by the items (within ``--bbox`` when given) or ``--tiles``. A rerun
skips complete tiles and redoes the rest.

Planning (collections, items, tiles) is :func:`pipelines.cubes.plan_cubes`, the same as the
``ingest`` flow's.

Exit codes: 0 the store holds usable tiles (some may have been skipped or failed: see the summary);
1 nothing useful was produced; 2 the run could not start (bad arguments, unreadable items, an
incompatible existing store: ``error: ...`` on one line, see :mod:`flows.cli`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import typer

from flows.commands._options import (
    check_file_out,
    check_folder_url,
    csv_list,
    dask_address_option,
    holder_wait_option,
    max_attempts_option,
    parse_bbox,
    storage_options,
    storage_options_option,
    workers_option,
)
from pipelines.errors import EXIT_FAILED, InputError
from pipelines.registry import DEFAULT_CATALOG
from pipelines.tiling import DEFAULT_TILE_SIZE_M


def cubes(
    out: str = typer.Option(
        ..., "--out", "-o", help="Cube store URL: a local path or s3://bucket/prefix (any fsspec URL)."
    ),
    items_url: str | None = typer.Option(
        None, "--items", help="Items to build from: ndjson/parquet/catalog.json (e.g. saved by `aom search`)."
    ),
    catalog: str | None = typer.Option(
        None,
        "--catalog",
        help="Registry catalog the collections belong to (`aom sensors`); default: the one --items "
        f"come from (their links), else {DEFAULT_CATALOG}.",
    ),
    catalog_url: str | None = typer.Option(
        None, "--catalog-url", help="Search this STAC API / local catalog instead of reading --items."
    ),
    collections: str = typer.Option(
        "",
        "--collections",
        "-c",
        help="Comma-separated collection ids (default with --items: those in the items).",
    ),
    bbox: str | None = typer.Option(None, "--bbox", help="W,S,E,N (WGS84); W > E crosses the antimeridian."),
    datetime: str | None = typer.Option(
        None, "--datetime", help="RFC 3339 instant or interval (search only)."
    ),
    tiles: str | None = typer.Option(
        None,
        "--tiles",
        help="Comma-separated tile ids to build (default: all touched; with --bbox: intersected).",
    ),
    tile_size_m: float = typer.Option(
        DEFAULT_TILE_SIZE_M, "--tile-size-m", help="Tile edge in metres (a multiple of 60)."
    ),
    encoding: str = typer.Option("int16", "--encoding", help="int16 (reflectance x 1e4) or float16."),
    chunk_px: int = typer.Option(256, "--chunk-px", help="Zarr chunk edge in pixels (training chip size)."),
    composite: str = typer.Option(
        "none",
        "--composite",
        help="none: every acquisition; median: one stored median per tile and group (what aom embed "
        "composites, done once: an embedding run then decodes one image, not all).",
    ),
    workers: int = workers_option(1, " (threads)"),
    dask_address: str | None = dask_address_option(),
    storage_options_text: list[str] = storage_options_option(" for --out (and --items on the same storage)"),
    skip_unreachable: bool = typer.Option(
        False, "--skip-unreachable", help="Leave out unreachable assets instead of failing their tiles."
    ),
    missing_proj: str = typer.Option(
        "skip",
        "--missing-proj",
        help="Items without projection metadata: skip, or read_header (from the file).",
    ),
    max_attempts: int = max_attempts_option(
        " of the --catalog-url search or the --items read and of every asset read (GDAL_HTTP_MAX_RETRY=N-1)"
    ),
    holder_wait: float = holder_wait_option(),
    summary_json: str | None = typer.Option(
        None, "--summary-json", help="Also write the run summary here (JSON)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Build Zarr cubes (one per tile, collection and native GSD) from STAC items."""
    from pipelines import runs
    from pipelines.cubes import CubeRequest, complete_projection, plan_cubes, read_items, write_cubes
    from pipelines.cubes.reading import read_attempts
    from pipelines.search.filters import parse_interval
    from pipelines.storage import check_credentials, check_url, redact_url, write_json_atomic

    options = storage_options(storage_options_text)
    runs.dask_address(dask_address)  # a malformed --dask-address or $DASK_SCHEDULER_ADDRESS: before any work
    check_folder_url(out, "--out")
    check_file_out(summary_json, "--summary-json")  # before the cubes are built, not after
    for option, url in (("--items", items_url), ("--catalog-url", catalog_url), ("--out", out)):
        check_url(url, option)
        check_credentials(url, options if option != "--catalog-url" else None, option)
    parse_interval(datetime)
    box = parse_bbox(bbox) if bbox else None
    request = CubeRequest.from_dict(
        {
            "catalog": catalog,
            "collections": csv_list(collections),
            "aoi": box,
            "tiles": csv_list(tiles),
            "tile_size_m": tile_size_m,
            "encoding": encoding,
            "chunk_px": chunk_px,
            "skip_unreachable": skip_unreachable,
            "missing_proj": missing_proj,
            "composite": composite,
        }
    )
    if items_url is not None and catalog_url is not None:
        raise InputError("give --items or --catalog-url, not both")
    from pipelines.retry import RetryPolicy

    if items_url is not None:
        items = read_items(items_url, out, options, RetryPolicy(max_attempts=max_attempts))
    else:
        if not request.collections:
            raise InputError("--collections is required when searching a catalog (or give --items)")
        from pipelines.search import SearchRequest, search

        found = search(
            SearchRequest(
                collections=request.collections,
                bbox=box,
                datetime=datetime,
                catalog=catalog or DEFAULT_CATALOG,
            ),
            catalog_url=catalog_url,
            retry=RetryPolicy(max_attempts=max_attempts),
        )
        for note in found.notes:
            typer.echo(f"note: {note}")
        items = list(found.items)
    reads = read_attempts(max_attempts)  # the same attempts per HTTP request for the asset reads
    plan, notes = complete_projection(plan_cubes(request, items), items_url, out, options, reads)
    for note in notes:
        typer.echo(f"note: {note}")
    if not plan.tiles:  # before the store is created: nothing to build is bad input, not a failed run
        raise InputError(_nothing_to_build(items, bbox))
    typer.echo(f"{plan.describe()} -> {redact_url(out)}")
    summary = write_cubes(
        plan.items,
        plan.tiles,
        plan.spec,
        out,
        options,
        read_options=reads,
        progress=progress,
        dask_address=dask_address,
        workers=workers,
        holder_wait_s=holder_wait * 60,
    )
    typer.echo(summary.format())
    if summary_json:
        write_json_atomic(summary_json, summary.to_dict())
    if summary.exit_code:
        raise typer.Exit(EXIT_FAILED)


def _nothing_to_build(items: Sequence[Mapping[str, Any]], bbox: str | None) -> str:
    """Why a plan has no tile: no items, or items outside ``--bbox`` (their extent named)."""
    boxes = [i["bbox"] for i in items if len(i.get("bbox") or ()) == 4]
    if not boxes:
        return "no tile to build: no items with a footprint (check --items / the search)"
    w, s = min(b[0] for b in boxes), min(b[1] for b in boxes)
    e, n = max(b[2] for b in boxes), max(b[3] for b in boxes)
    where = f"the {len(items)} item(s) (lon {w:g}..{e:g}, lat {s:g}..{n:g})"
    if bbox:
        return f"no tile to build: {where} do not touch --bbox {bbox}"
    return f"no tile to build from {where}"


def register(app: typer.Typer) -> None:
    app.command("cubes")(cubes)
