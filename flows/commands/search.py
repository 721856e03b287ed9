"""`aom search`: find STAC items in a STAC API or a local catalog and save them with a content hash.

Exit codes: 0 items found and saved; 1 the search started and failed (the catalog still
unreachable or failing after the retries, a file that cannot be read: rerun later); 2 bad input
(bad arguments, a URL that is not a catalog, a collection the catalog does not have ...); 1 and 2
print one ``error: ...`` line (see :mod:`flows.cli`); 3 nothing matched (the reasons are printed,
``--out`` is left untouched).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from flows.commands._options import (
    check_file_out,
    check_not_empty,
    csv_list,
    json_arg,
    max_attempts_option,
    parse_bbox,
    read_aoi_file,
    storage_options_option,
)
from pipelines.errors import InputError
from pipelines.registry import DEFAULT_CATALOG

EXIT_EMPTY = 3
"""Exit status when nothing matched (not an error: the reasons are printed). Not 1, which every verb
uses for a run that failed (here: the catalog unreachable after retries), so that a scheduler can
tell "retry later" from "nothing to do"."""


def _json_arg(text: str | None, name: str) -> dict[str, Any] | None:
    """A JSON object given inline or as ``@file.json``; None when the option is not given."""
    return None if text is None else json_arg(text, name)


def _aoi_geometry(path: Path) -> dict[str, Any]:
    from pipelines.tiling import TileError, geojson_geometry

    try:
        return geojson_geometry(read_aoi_file(path))
    except TileError as exc:
        raise InputError(f"--aoi {path}: {exc}") from None


def _check_result_out(out: str) -> None:
    """``--out`` names a file ``save_result`` writes (ndjson or stac-geoparquet, by its ending), and
    an existing local file there is an earlier result (it has its ``.meta.json``), never a file aom
    did not write."""
    from urllib.parse import urlsplit

    from pipelines.search.local import NDJSON_SUFFIXES, PARQUET_SUFFIXES
    from pipelines.search.saved import sidecar_url
    from pipelines.storage import is_local, local_href, redact_url

    path = (urlsplit(out).path if "://" in out else out).lower()
    if not path.endswith(NDJSON_SUFFIXES + PARQUET_SUFFIXES):
        raise InputError(
            f"--out {redact_url(out)}: a search result is ndjson or stac-geoparquet; give a name ending in "
            + ", ".join(NDJSON_SUFFIXES + PARQUET_SUFFIXES)
        )
    local = Path(local_href(out)).expanduser()
    if is_local(out) and local.exists() and not Path(sidecar_url(str(local))).exists():
        raise InputError(
            f"--out {out} already exists and is not an aom search result (no {local.name}.meta.json "
            "beside it); give a new name"
        )


def search(
    collections: str = typer.Option(
        "", "--collections", "-c", help="Comma-separated collection ids (or sensor names) of the catalog."
    ),
    bbox: str | None = typer.Option(
        None, "--bbox", help="W,S,E,N in WGS84 degrees; W > E means the box crosses the antimeridian."
    ),
    aoi: str | None = typer.Option(
        None, "--aoi", help="GeoJSON file (geometry, Feature or FeatureCollection)."
    ),
    datetime: str | None = typer.Option(
        None, "--datetime", help="RFC 3339 instant or interval, e.g. 2023-01-01/2023-12-31 ('..' = open)."
    ),
    max_cloud_cover: float | None = typer.Option(
        None, "--max-cloud-cover", help="Maximum eo:cloud_cover, percent."
    ),
    catalog: str = typer.Option(
        DEFAULT_CATALOG, "--catalog", help="Registry catalog: sample, earth-search, ... (`aom sensors`)."
    ),
    catalog_url: str | None = typer.Option(
        None,
        "--catalog-url",
        help="Override the catalog URL: a STAC API root, or catalog.json / *.parquet / *.ndjson (local or s3://).",
    ),
    updated_since: str | None = typer.Option(
        None,
        "--updated-since",
        help="Only items whose `updated` (else `created`) is after this RFC 3339 time.",
    ),
    max_items: int | None = typer.Option(None, "--max-items", min=1, help="Stop after this many items."),
    query: str | None = typer.Option(
        None,
        "--query",
        help='Dict-form query as JSON (or @file), e.g. \'{"platform": {"eq": "sentinel-2a"}}\'.',
    ),
    cql2_filter: str | None = typer.Option(None, "--filter", help="CQL2-JSON filter as JSON (or @file)."),
    out: str = typer.Option(
        ...,
        "--out",
        "-o",
        help="Where to save the items: *.ndjson or *.parquet (stac-geoparquet); any fsspec URL.",
    ),
    storage_options: list[str] = storage_options_option(" (e.g. an S3 endpoint) for the catalog and --out"),
    max_attempts: int = max_attempts_option(),
    progress: bool = typer.Option(
        True, "--progress/--no-progress", help="Show a progress bar while scanning."
    ),
) -> None:
    """Search a STAC API or the local catalog; save the matching items with a content hash.

    Exit codes: 0 saved; 1 failed (the catalog still unreachable or failing after the retries: rerun
    later); 2 bad input; 3 nothing matched (--out left unchanged).
    """
    from tqdm import tqdm

    from pipelines.retry import RetryPolicy
    from pipelines.search import SearchError, SearchRequest, load_result, new_items, save_result
    from pipelines.search import search as run_search
    from pipelines.storage import check_credentials, check_url, exists, parse_storage_options, redact_url

    if bbox is not None and aoi is not None:
        raise typer.BadParameter("give --bbox or --aoi, not both")
    check_not_empty(aoi, "--aoi", "a GeoJSON file")  # "" was the working directory ('Is a directory')
    options = parse_storage_options(storage_options) or None
    check_file_out(out, "--out")  # a folder is refused before searching, not when saving
    for option, url in (("--catalog-url", catalog_url), ("--out", out)):
        check_url(url, option)
        check_credentials(url, options, option)
    _check_result_out(out)
    request = SearchRequest(
        collections=csv_list(collections),
        bbox=parse_bbox(bbox) if bbox else None,
        intersects=_aoi_geometry(Path(aoi)) if aoi else None,
        datetime=datetime,
        max_cloud_cover=max_cloud_cover,
        updated_since=updated_since,
        query=_json_arg(query, "--query"),
        filter=_json_arg(cql2_filter, "--filter"),
        max_items=max_items,
        catalog=catalog,
    )
    bar = tqdm(desc="scanning", unit=" items", disable=None if progress else True, leave=False)
    try:
        result = run_search(
            request,
            catalog_url=catalog_url,
            storage_options=options,
            retry=RetryPolicy(max_attempts=max_attempts),
            progress=bar.update,
        )
    finally:
        bar.close()

    typer.echo(f"catalog: {catalog} ({result.source})")
    for note in result.notes:
        typer.echo(f"note: {note}")
    if not result.items:
        typer.echo(f"nothing found; {redact_url(out)} left unchanged", err=True)
        raise typer.Exit(EXIT_EMPTY)

    typer.echo(f"found {len(result.items)} items")
    for coll, n in result.count_by_collection.items():
        typer.echo(f"  {coll:28s} {n:6d}")
    typer.echo(
        "  by CRS: "
        + ", ".join(
            f"EPSG:{k}={v}" if k != "unknown" else f"unknown={v}" for k, v in result.count_by_epsg.items()
        )
    )
    previous = None
    try:
        if exists(out, options):
            previous = load_result(out, options)
    except (SearchError, OSError, ValueError) as exc:
        typer.echo(f"note: previous result at {redact_url(out)} not readable ({exc}); not comparing")
    if previous is not None:
        fresh = new_items(result, previous)
        same = "same items as" if previous.content_hash == result.content_hash else "differs from"
        typer.echo(
            f"new or updated since the previous run: {len(fresh)} ({same} {previous.content_hash[:19]}...)"
        )
    try:
        digest = save_result(result, out, options)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot save to {redact_url(out)}: {exc}") from exc
    typer.echo(f"hash: {digest}")
    typer.echo(f"saved: {redact_url(out)} (+ .meta.json)")


def register(app: typer.Typer) -> None:
    app.command("search")(search)
