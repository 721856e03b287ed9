"""`aom samples`: build the embedded sample catalog (real products when present + synthetic)."""

from __future__ import annotations

from pathlib import Path

import typer

from flows.commands._options import local_out

DEFAULT_SAMPLES_DIR = Path(".aom") / "samples"


def samples(
    out: str = typer.Option(
        str(DEFAULT_SAMPLES_DIR),
        "--out",
        help="Local folder for catalog.json, items.ndjson, items.parquet and COGs: new, empty, or an earlier aom "
        "samples build.",
    ),
    seed: int = typer.Option(0, min=0, help="Seed of the synthetic generator (same seed, same bytes; >= 0)."),
    real_dir: Path | None = typer.Option(
        None, "--real-dir", help="Real-product folder (default: $AOM_REAL_DATA or ../shared/data/real)."
    ),
    no_real: bool = typer.Option(False, "--no-real", help="Synthetic items only."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="First remove everything an earlier aom samples build wrote in --out."
    ),
) -> None:
    """Build the sample STAC catalog: a static catalog plus ndjson and stac-geoparquet for local search."""
    from pipelines.samples import build_sample_catalog

    out_dir = local_out(out, "--out", "samples", folder=True)
    if real_dir is not None and not real_dir.is_dir():
        raise typer.BadParameter(f"--real-dir {real_dir} is not a folder")

    result = build_sample_catalog(
        out_dir,
        real_dir=real_dir if real_dir else "auto",
        seed=seed,
        include_real=not no_real,
        overwrite=overwrite,
    )
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(
        f"{len(result.item_ids)} items in {len(result.collections)} collections: {', '.join(result.collections)}"
    )
    typer.echo(f"static catalog: {result.catalog_json}")
    typer.echo(f"ndjson:         {result.items_ndjson}")
    typer.echo(f"geoparquet:     {result.items_parquet}")


def register(app: typer.Typer) -> None:
    app.command("samples")(samples)
