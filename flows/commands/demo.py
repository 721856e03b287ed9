"""`aom demo`: the whole chain on the embedded default, orchestrated by an ephemeral Prefect."""

from __future__ import annotations

import typer

from flows.commands._options import check_file_url, local_out, workers_option
from pipelines.demo import DEMO_OUT, DEMO_PRETRAIN_STEPS, DEMO_WORKERS


def demo(
    out: str = typer.Option(str(DEMO_OUT), "--out", help="Local folder for every output of the demo."),
    pretrain_steps: int = typer.Option(
        DEMO_PRETRAIN_STEPS, min=1, help="Optimiser steps of the short `tiny` pretraining."
    ),
    workers: int = workers_option(DEMO_WORKERS, " while embedding (Dask LocalCluster worker processes)"),
    init: str = typer.Option(
        "shipped",
        "--init",
        help="Weights the short pretraining starts from: 'shipped' (checkpoints/aom-tiny-real.safetensors, "
        "if present), 'none' (random init) or a model.safetensors path/URL.",
    ),
) -> None:
    """Sample catalog -> search -> cubes -> short pretraining -> embeddings -> similarity + PCA map."""
    from pipelines.checkpoints import shipped_checkpoint

    out_dir = local_out(out, "--out", "demo", folder=True)
    start: str | None = {"shipped": shipped_checkpoint(), "none": None}.get(init.lower(), init)
    if init.lower() not in ("shipped", "none"):
        check_file_url(init, "--init")  # before the first step, not after the pretraining's set-up
        from aom_model.checkpoint import check_checkpoint_header

        check_checkpoint_header(init, what="--init")  # its header only: ~20 s of steps ran before
    from flows.demo import demo as demo_flow  # Prefect: imported once the arguments are known good
    from flows.params import withhold_credentials

    # Prefect stores a flow run's parameters as given: a URL with a token goes to it masked, and the
    # pretraining task reads the real one from this process's memory (flows.params)
    init_param = withhold_credentials(start) if start else None
    result = demo_flow(out=str(out_dir), pretrain_steps=pretrain_steps, workers=workers, init=init_param)
    if not result["top"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
