"""`aom query`: explore embedding stores (similar / map / export / classify / versions).

Examples::

    aom query versions --embeddings s3://bucket/emb
    aom query similar  --embeddings s3://bucket/emb --lon 5.99 --lat 45.0 --k 20 --out hits.parquet
    aom query map      --embeddings /data/emb --bbox 5.95,44.98,6.05,45.02 --out pca.png
    aom query map      --embeddings /data/emb --bbox 5.95,44.98,6.05,45.02 --lon 5.99 --lat 45 --out sim.png
    aom query export   --embeddings /data/emb --bbox 5.95,44.98,6.05,45.02 --out area.tif
    aom query classify --embeddings /data/emb --labels labels.geojson --out classes.tif
    aom query similar  --embeddings /data/emb --lon 5.99 --lat 45.0 --level tile --k 20
    aom query tiles    --embeddings /data/emb --out tiles.parquet

Object-store credentials come from the usual chains; ``--storage-options '{"endpoint_url": ...}'``
(or ``@file.json``, or repeated ``key=value``) passes extra fsspec options (never printed). A store
that cannot answer exits 2 with one ``error: ...`` line (see :mod:`flows.cli`).
"""

from __future__ import annotations

from typing import Any

import typer

from flows.commands._options import (
    check_area,
    check_file_out,
    check_file_url,
    check_lonlat,
    storage_options_option,
)

query_app = typer.Typer(
    name="query",
    help="Query embedding stores: similarity search, maps, exports, few-shot classification.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EMB_OPT = typer.Option(..., "--embeddings", "-e", help="Embeddings store URL (local path or s3://...).")
VERSION_OPT = typer.Option(
    None, "--version", help="Dataset version (model/checkpoint); needed when several exist."
)
TIME_OPT = typer.Option(
    None, "--time", help="ISO date/datetime or index; default: the latest time with data."
)
OPTS_OPT = storage_options_option(" for the store (and outputs on the same storage)")
CRS_OPT = typer.Option("EPSG:4326", "--crs", help="CRS of --bbox (EPSG code, WKT or PROJ string).")
TARGET_OPT = typer.Option(
    None, "--target-crs", help="Output CRS when zones are merged (default: zone of the bbox centre)."
)
METRIC_OPT = typer.Option(
    "cosine",
    "--metric",
    help="cosine: of the stored vectors; whitened: cosine after centring and whitening 32 principal axes "
    "fitted on a sample of this version (better retrieval on T29UNU, docs/query.md). Token vectors only.",
)


def _opts(values: list[str]) -> dict[str, Any]:
    """--storage-options -> fsspec options; {} when not given."""
    from pipelines.storage import parse_storage_options

    return parse_storage_options(values)


def _out_opts(out: str | None, embeddings: str, storage_options: list[str]) -> dict[str, Any] | None:
    """Outputs on the same object store as the embeddings reuse its options; others get none."""
    if out and "://" in out and out.split("://", 1)[0] == embeddings.split("://", 1)[0]:
        return _opts(storage_options)
    return None


# The files each verb writes, by extension (anything else is refused before the store is opened:
# a PNG written to m.tif, GeoJSON to hits.csv, Parquet to tiles.csv).
SIMILAR_FORMATS = {
    ".json": "geojson",
    ".geojson": "geojson",
    ".parquet": "geoparquet",
    ".geoparquet": "geoparquet",
}
MAP_FORMATS = {".png": "png"}
TILES_FORMATS = {".parquet": "geoparquet", ".geoparquet": "geoparquet"}
CLASSIFY_FORMATS = {".tif": "cog", ".tiff": "cog"}


def _check_out(out: str | None, formats: dict[str, str]) -> str | None:
    """``--out``: a known URL scheme, not a folder, and a name ending in one of ``formats``; its
    format (None without ``--out``)."""
    from pipelines.outputs import check_output_format

    if out is None:
        return None
    check_file_out(out, "--out")
    return check_output_format(out, formats)


def _time(text: str | None) -> int | str | None:
    if text is None:
        return None
    return int(text) if text.strip().lstrip("-").isdigit() else text


def _open(url: str, version: str | None, storage_options: list[str]) -> Any:
    from pipelines.query import open_embeddings
    from pipelines.storage import check_credentials, check_url

    opts = _opts(storage_options)
    check_url(url, "--embeddings")
    check_credentials(url, opts, "--embeddings")
    return open_embeddings(url, version, opts)


@query_app.command("versions")
def versions(embeddings: str = EMB_OPT, storage_options: list[str] = OPTS_OPT) -> None:
    """List the versions (model, checkpoint, times, zones, extent) of a store."""
    from pipelines.query import available_versions, open_embeddings
    from pipelines.storage import check_credentials, check_url

    opts = _opts(storage_options)
    check_url(embeddings, "--embeddings")
    check_credentials(embeddings, opts, "--embeddings")
    for v in available_versions(embeddings, opts):
        typer.echo(open_embeddings(embeddings, v.name, opts).describe())


@query_app.command("similar")
def similar_cmd(
    embeddings: str = EMB_OPT,
    lon: list[float] = typer.Option(..., "--lon", help="Example longitude (repeat for several examples)."),
    lat: list[float] = typer.Option(..., "--lat", help="Example latitude (repeat, same order as --lon)."),
    k: int = typer.Option(10, "--k", min=1, help="Number of results."),
    aoi: str | None = typer.Option(
        None, "--aoi", help="Search only inside minx,miny,maxx,maxy (in --aoi-crs)."
    ),
    aoi_crs: str = typer.Option("EPSG:4326", "--aoi-crs", help="CRS of --aoi."),
    exclude_radius_m: float = typer.Option(
        0.0, "--exclude-radius-m", help="Skip results this close to the examples."
    ),
    out: str | None = typer.Option(
        None, "--out", help="Write results: .json/.geojson or .parquet (GeoParquet)."
    ),
    level: str = typer.Option(
        "token", "--level", help="token: every token vector; tile: one pooled vector per tile."
    ),
    metric: str = METRIC_OPT,
    version: str | None = VERSION_OPT,
    time: str | None = TIME_OPT,
    storage_options: list[str] = OPTS_OPT,
) -> None:
    """Top-k most similar locations (tokens or tiles) to example point(s), over an AOI or everything."""
    from pipelines import storage
    from pipelines.errors import InputError, check_choice, check_number
    from pipelines.query import similar, similar_tiles
    from pipelines.query.similarity import METRICS, describe_result

    check_lonlat(lon, lat)
    check_number("--exclude-radius-m", exclude_radius_m, minimum=0)
    check_area(aoi, aoi_crs, "--aoi")
    out_format = _check_out(out, SIMILAR_FORMATS)
    check_choice("level (--level)", level, ("token", "tile"))
    check_choice("metric (--metric)", metric, METRICS)
    emb = _open(embeddings, version, storage_options)
    if level == "tile":
        if aoi is not None or exclude_radius_m > 0 or metric != "cosine":
            raise InputError("--aoi, --exclude-radius-m and --metric apply to --level token only")
        res = similar_tiles(emb, lon=lon, lat=lat, k=k, time=_time(time))
    else:
        res = similar(
            emb,
            lon=lon,
            lat=lat,
            k=k,
            aoi=aoi,
            aoi_crs=aoi_crs,
            time=_time(time),
            exclude_radius_m=exclude_radius_m,
            metric=metric,
        )
    typer.echo(describe_result(res, embeddings))
    if out:
        if out_format == "geoparquet":
            res.to_geoparquet(out, _out_opts(out, embeddings, storage_options))
        else:
            storage.write_json_atomic(out, res.to_geojson(), _out_opts(out, embeddings, storage_options))
        typer.echo(f"results: {out}")


@query_app.command("map")
def map_cmd(
    embeddings: str = EMB_OPT,
    bbox: str = typer.Option(..., "--bbox", help="minx,miny,maxx,maxy in --crs."),
    out: str = typer.Option(..., "--out", help="PNG path or URL."),
    crs: str = CRS_OPT,
    lon: list[float] | None = typer.Option(
        None, "--lon", help="With --lat: a similarity heatmap to this point."
    ),
    lat: list[float] | None = typer.Option(None, "--lat", help="Latitude of the example point(s)."),
    metric: str = METRIC_OPT,
    target_crs: str | None = TARGET_OPT,
    version: str | None = VERSION_OPT,
    time: str | None = TIME_OPT,
    storage_options: list[str] = OPTS_OPT,
) -> None:
    """PCA -> RGB map of an area, or a similarity heatmap when --lon/--lat are given."""
    from pipelines.errors import InputError, check_choice
    from pipelines.query import pca_map, similarity_heatmap
    from pipelines.query.similarity import METRICS

    check_lonlat(lon, lat)
    check_area(bbox, crs)
    _check_out(out, MAP_FORMATS)
    check_choice("metric (--metric)", metric, METRICS)
    if metric != "cosine" and not (lon or lat):
        raise InputError("--metric applies to a similarity heatmap (--lon/--lat) only")
    emb = _open(embeddings, version, storage_options)
    if lon or lat:
        similarity_heatmap(
            emb,
            bbox,
            out,
            crs,
            lon=lon,
            lat=lat,
            time=_time(time),
            target_crs=target_crs,
            storage_options=_out_opts(out, embeddings, storage_options),
            metric=metric,
        )
    else:
        pca_map(
            emb,
            bbox,
            out,
            crs,
            time=_time(time),
            target_crs=target_crs,
            storage_options=_out_opts(out, embeddings, storage_options),
        )
    typer.echo(f"map: {out}")


@query_app.command("export")
def export_cmd(
    embeddings: str = EMB_OPT,
    bbox: str = typer.Option(..., "--bbox", help="minx,miny,maxx,maxy in --crs."),
    out: str = typer.Option(..., "--out", help=".tif (Cloud-Optimised GeoTIFF) or .parquet (GeoParquet)."),
    crs: str = CRS_OPT,
    dtype: str = typer.Option("float32", "--dtype", help="GeoTIFF: float32 (dequantised) or int8 (codes)."),
    geometry: str = typer.Option("point", "--geometry", help="GeoParquet: point (token centre) or polygon."),
    target_crs: str | None = TARGET_OPT,
    version: str | None = VERSION_OPT,
    time: str | None = TIME_OPT,
    storage_options: list[str] = OPTS_OPT,
) -> None:
    """Export the embeddings of an area to a COG or to GeoParquet vectors."""
    from pipelines.query import export

    if dtype not in ("float32", "int8"):
        raise typer.BadParameter("--dtype must be float32 or int8")
    if geometry not in ("point", "polygon"):
        raise typer.BadParameter("--geometry must be point or polygon")
    check_area(bbox, crs)
    check_file_out(out, "--out")
    emb = _open(embeddings, version, storage_options)
    export(
        emb,
        bbox,
        out,
        crs,
        time=_time(time),
        target_crs=target_crs,
        dtype=dtype,  # type: ignore[arg-type]
        geometry=geometry,  # type: ignore[arg-type]
        storage_options=_out_opts(out, embeddings, storage_options),
    )
    typer.echo(f"export: {out}")


@query_app.command("tiles")
def tiles_cmd(
    embeddings: str = EMB_OPT,
    out: str = typer.Option(..., "--out", help="GeoParquet file: one row per tile (footprint + vector)."),
    version: str | None = VERSION_OPT,
    time: str | None = TIME_OPT,
    storage_options: list[str] = OPTS_OPT,
) -> None:
    """Export every tile's pooled vector with its footprint (EPSG:4326) to GeoParquet."""
    from pipelines.query import tiles_geoparquet

    _check_out(out, TILES_FORMATS)
    emb = _open(embeddings, version, storage_options)
    tiles_geoparquet(emb, out, time=_time(time), storage_options=_out_opts(out, embeddings, storage_options))
    typer.echo(f"tiles: {out}")


@query_app.command("classify")
def classify_cmd(
    embeddings: str = EMB_OPT,
    labels: str = typer.Option(
        ..., "--labels", help="Labelled points (.geojson/.parquet) or a label raster (.tif)."
    ),
    out: str | None = typer.Option(None, "--out", help="Class map GeoTIFF (COG)."),
    label_field: str | None = typer.Option(
        None, "--label-field", help="Property holding the class (auto-detected)."
    ),
    bbox: str | None = typer.Option(None, "--bbox", help="Area to map (default: the labels' extent)."),
    crs: str = CRS_OPT,
    method: str = typer.Option("linear", "--method", help="linear (logistic-regression probe) or knn."),
    cv: int = typer.Option(5, "--cv", min=2, help="Folds of the stratified cross-validation."),
    target_crs: str | None = TARGET_OPT,
    version: str | None = VERSION_OPT,
    time: str | None = TIME_OPT,
    storage_options: list[str] = OPTS_OPT,
) -> None:
    """Few-shot mapping: fit a probe on labelled points, report CV accuracy, write a class map."""
    from pipelines.query import classify

    if method not in ("linear", "knn"):
        raise typer.BadParameter("--method must be linear or knn")
    check_area(bbox, crs)
    _check_out(out, CLASSIFY_FORMATS)
    check_file_url(labels, "--labels")
    emb = _open(embeddings, version, storage_options)
    res = classify(
        emb,
        labels,
        bbox=bbox,
        crs=crs,
        out=out,
        method=method,  # type: ignore[arg-type]
        time=_time(time),
        label_field=label_field,
        cv=cv,
        target_crs=target_crs,
        storage_options=_out_opts(out or labels, embeddings, storage_options),
    )
    typer.echo(res.summary())


def register(app: typer.Typer) -> None:
    app.add_typer(query_app, name="query")
