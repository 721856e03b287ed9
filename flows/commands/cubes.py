"""`aom cubes`: build per-tile Zarr v3 reflectance cubes from STAC items, exactly once per tile.

Items come from ``--items`` (the ndjson/parquet saved by ``aom search``, any fsspec URL) or from a
search (``--catalog-url``/``--catalog`` with ``--collections``, ``--bbox``, ``--datetime``). Tiles
are those of the grid touched by the items (within ``--bbox`` when given) or ``--tiles``. A rerun
skips complete tiles and redoes the rest.

Exit codes: 0 the store holds usable tiles (some may have been skipped or failed: see the summary);
1 nothing useful was produced; 2 the run could not start (bad arguments, unreadable items, an
incompatible existing store).
"""

from __future__ import annotations

import json
from typing import Any

import typer

EXIT_NOTHING = 1
EXIT_ERROR = 2


def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def parse_storage_options(pairs: list[str] | None, json_text: str | None = None) -> dict[str, Any]:
    """``k=v`` pairs (dotted keys nest: ``client_kwargs.endpoint_url=...``) over an optional JSON object."""
    options: dict[str, Any] = {}
    if json_text:
        try:
            loaded = json.loads(json_text)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"--storage-options is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise typer.BadParameter("--storage-options must be a JSON object")
        options.update(loaded)
    for pair in pairs or []:
        if "=" not in pair:
            raise typer.BadParameter(f"--storage-option needs key=value, got {pair.split('=')[0]!r}")
        key, value = pair.split("=", 1)
        node = options
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise typer.BadParameter("--storage-option has an empty key")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _parse_value(value)
    return options


def _parse_bbox(text: str) -> tuple[float, float, float, float]:
    parts = [p for p in text.replace(" ", "").split(",") if p]
    if len(parts) != 4:
        raise typer.BadParameter(f"--bbox needs W,S,E,N (4 numbers), got {text!r}")
    try:
        w, s, e, n = (float(p) for p in parts)
    except ValueError:
        raise typer.BadParameter(f"--bbox needs numbers, got {text!r}") from None
    return w, s, e, n


def _same_scheme(a: str, b: str) -> bool:
    def scheme(u: str) -> str:
        return u.split("://", 1)[0] if "://" in u else "file"

    return scheme(a) == scheme(b)


def cubes(
    out: str = typer.Option(
        ..., "--out", "-o", help="Cube store URL: a local path or s3://bucket/prefix (any fsspec URL)."
    ),
    items_url: str | None = typer.Option(
        None, "--items", help="Items to build from: ndjson/parquet/catalog.json (e.g. saved by `aom search`)."
    ),
    catalog: str = typer.Option("sample", "--catalog", help="Registry catalog the collections belong to."),
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
        None, "--tiles", help="Comma-separated tile ids to build (default: all touched)."
    ),
    tile_size: float = typer.Option(7680.0, "--tile-size", help="Tile edge in metres (a multiple of 60)."),
    encoding: str = typer.Option("int16", "--encoding", help="int16 (reflectance x 1e4) or float16."),
    chunk_px: int = typer.Option(256, "--chunk-px", help="Zarr chunk edge in pixels (training chip size)."),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="Tiles built in parallel (threads)."),
    dask_scheduler: str | None = typer.Option(
        None, "--dask-scheduler", help="Address of a dask.distributed scheduler to run the tiles on."
    ),
    storage_option: list[str] = typer.Option(
        [], "--storage-option", help="fsspec option key=value for --out (repeatable; dotted keys nest)."
    ),
    storage_options_json: str | None = typer.Option(
        None, "--storage-options", help="fsspec options as a JSON object."
    ),
    skip_unreachable: bool = typer.Option(
        False, "--skip-unreachable", help="Leave out unreachable assets instead of failing their tiles."
    ),
    missing_proj: str = typer.Option(
        "skip",
        "--missing-proj",
        help="Items without projection metadata: skip, or read_header (from the file).",
    ),
    summary_json: str | None = typer.Option(
        None, "--summary-json", help="Also write the run summary here (JSON)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Build Zarr cubes (one per tile, collection and native GSD) from STAC items."""
    from pipelines.cubes import CubeSpec, CubeStoreError, write_cubes
    from pipelines.storage import redact_url, write_json_atomic
    from pipelines.tiling import TileError, TileGrid

    options = parse_storage_options(storage_option, storage_options_json)
    if items_url is not None and catalog_url is not None:
        raise typer.BadParameter("give --items or --catalog-url, not both")
    wanted = tuple(c.strip() for c in collections.split(",") if c.strip())
    box = _parse_bbox(bbox) if bbox else None

    try:
        if items_url is not None:
            from pipelines.search import iter_items

            read_opts = options if _same_scheme(items_url, out) else None
            items = list(iter_items(items_url, read_opts))
        else:
            if not wanted:
                raise typer.BadParameter("--collections is required when searching a catalog")
            from pipelines.search import SearchRequest, search

            result = search(
                SearchRequest(collections=wanted, bbox=box, datetime=datetime, catalog=catalog),
                catalog_url=catalog_url,
            )
            for note in result.notes:
                typer.echo(f"note: {note}")
            items = list(result.items)
    except typer.BadParameter:
        raise
    except Exception as exc:
        typer.echo(f"error: cannot read items: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(EXIT_ERROR) from None

    try:
        grid = TileGrid(tile_size)
        if not wanted:
            from pipelines.registry import load_registry

            known = {c.collection for c in load_registry().collections_in(catalog)}
            wanted = tuple(sorted({str(i.get("collection")) for i in items} & known))
            if not wanted:
                typer.echo(
                    f"error: no item belongs to a {catalog!r} collection of the registry; use --collections",
                    err=True,
                )
                raise typer.Exit(EXIT_ERROR)
        spec = CubeSpec(
            grid=grid,
            collections=wanted,
            catalog=catalog,
            encoding=encoding,  # type: ignore[arg-type]
            chunk_px=chunk_px,
            skip_unreachable=skip_unreachable,
            missing_proj=missing_proj,  # type: ignore[arg-type]
        )
        items = [
            i
            for i in items
            if i.get("collection") in spec.collections or (i.get("collection") is None and len(wanted) == 1)
        ]
        if tiles:
            tile_list = [grid.tile(t.strip()) for t in tiles.split(",") if t.strip()]
        else:
            tile_list = grid.tiles_for_items(items)
            if box is not None:
                inside = {t.tile_id for t in grid.tiles_for_bbox(box)}
                tile_list = [t for t in tile_list if t.tile_id in inside]
    except (ValueError, TileError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_ERROR) from None

    typer.echo(
        f"{len(items)} item(s) of {', '.join(spec.collections)}; {len(tile_list)} tile(s) of "
        f"{grid.tile_size_m:g} m -> {redact_url(out)}"
    )
    client = None
    if dask_scheduler:
        from distributed import Client

        client = Client(dask_scheduler)
    try:
        summary = write_cubes(
            items, tile_list, spec, out, options, progress=progress, dask_client=client, workers=workers
        )
    except (CubeStoreError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_ERROR) from None
    finally:
        if client is not None:
            client.close()
    typer.echo(summary.format())
    if summary_json:
        write_json_atomic(summary_json, summary.to_dict())
    if summary.exit_code:
        raise typer.Exit(EXIT_NOTHING)


def register(app: typer.Typer) -> None:
    app.command("cubes")(cubes)
