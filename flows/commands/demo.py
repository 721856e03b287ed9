"""`aom demo`: the whole chain on the embedded default, orchestrated by an ephemeral Prefect."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    out: Path = typer.Option(Path("aom-demo"), "--out", help="Folder for every output of the demo."),
    pretrain_steps: int = typer.Option(60, min=1, help="Optimiser steps of the short `tiny` pretraining."),
    workers: int = typer.Option(2, min=1, help="Dask LocalCluster worker processes for embedding."),
) -> None:
    """Sample catalog -> search -> cubes -> short pretraining -> embeddings -> similarity + PCA map."""
    from flows.demo import demo as demo_flow

    result = demo_flow(out_dir=str(out), pretrain_steps=pretrain_steps, workers=workers)
    if not result["top"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
