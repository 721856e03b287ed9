"""`aom publish`: per-tile COGs + STAC items over an existing embeddings store (exactly once).

Example::

    aom publish --embeddings s3://bucket/emb --version aom-tiny-3f2a9c1b0d4e

Writes ``<store>/published/<version>/`` (``t<time>/<tile>.tif``, ``items/``, ``collection.json``);
``odc.stac.load``, stackstac, TorchGeo, GDAL and QGIS open them directly. A rerun publishes only the
tiles and times not published yet (``docs/embeddings.md``).
"""

from __future__ import annotations

import typer

from flows.commands._options import storage_options_option


def publish(
    embeddings: str = typer.Option(
        ..., "--embeddings", "-e", help="Embeddings store URL (local path or s3://...)."
    ),
    version: str | None = typer.Option(
        None, "--version", help="Dataset version (model/checkpoint); needed when several exist."
    ),
    encoding: str = typer.Option(
        "int8-sqrt",
        "--encoding",
        help="int8-sqrt: the store's codes bit for bit (decoding rule in the tags); int8-linear: "
        "q = round(127 v) with band scale 1/127 that loaders apply.",
    ),
    license: str = typer.Option(
        "CC-BY-4.0",
        "--license",
        help="SPDX licence id of the published data, or proprietary / various (STAC 1.0.0).",
    ),
    license_url: str = typer.Option(
        "https://creativecommons.org/licenses/by/4.0/",
        "--license-url",
        help="Link to the licence text (an http(s) URL).",
    ),
    storage_options: list[str] = storage_options_option(" for the store"),
) -> None:
    """Publish a version as one COG per tile and time, with STAC items every loader opens."""
    from pipelines.embeddings import ENCODINGS, EmbeddingsStoreError, StacOptions, list_versions, publish_cogs
    from pipelines.embeddings.stac import check_license
    from pipelines.storage import check_credentials, check_url, parse_storage_options, redact_url

    check_license(license, license_url, ("--license", "--license-url"))
    opts = parse_storage_options(storage_options)
    check_url(embeddings, "--embeddings")
    check_credentials(embeddings, opts, "--embeddings")
    if encoding not in ENCODINGS:
        raise EmbeddingsStoreError(f"unknown --encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
    if version is None:
        names = [v.name for v in list_versions(embeddings, opts)]
        if len(names) != 1:
            raise EmbeddingsStoreError(
                f"{redact_url(embeddings)} holds {len(names)} versions; pick one with --version: "
                f"{', '.join(names) or '(none)'}"
            )
        version = names[0]
    summary = publish_cogs(
        embeddings,
        version,
        opts,
        encoding,  # type: ignore[arg-type]
        StacOptions(license=license, license_href=license_url),
    )
    typer.echo(
        f"published {len(summary.written)} tile-time(s) ({summary.bytes_written / 1e6:.1f} MB), "
        f"{summary.already} already published"
    )
    typer.echo(f"collection: {redact_url(summary.collection)}")


def register(app: typer.Typer) -> None:
    app.command("publish")(publish)
