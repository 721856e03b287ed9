"""`aom pretrain`: pretrain (or resume / fine-tune) AOM on cube stores."""

from __future__ import annotations

import json
import os
import shlex
from typing import Any

import typer

from flows.commands._options import check_folder_url, check_not_empty, storage_options_option


def pretrain(
    cubes: list[str] = typer.Option(
        [], "--cubes", help="Cube store URL (local path or s3://...); repeat, or list more after it."
    ),
    more_cubes: list[str] = typer.Argument(None, help="More cube store URLs (so `--cubes A B C` works)."),
    config: str = typer.Option("tiny", "--config", help="Model size: tiny | small | base."),
    model_set: list[str] = typer.Option(
        [],
        "--model-set",
        help="Override one AOMConfig field of the size, KEY=VALUE (JSON value), e.g. align_weight=0.1; "
        "repeatable. With --init: applied to the checkpoint's config (e.g. a loss weight for a fine-tuning "
        "stage; a field that changes parameter shapes fails to load). Ignored with --resume.",
    ),
    out: str = typer.Option(
        ..., "--out", help="Output URL: checkpoints, metrics.jsonl, loss_curve.png, model."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from OUT/checkpoints/latest.json if present."
    ),
    resume_with_changes: bool = typer.Option(
        False,
        "--resume-with-changes",
        help="With --resume: continue with changed hyper-parameters (--lr, --batch-size ...); without it "
        "such a resume is refused. Both values are recorded in OUT/pretrain_config.json.",
    ),
    init: str | None = typer.Option(
        None, "--init", help="Start from these weights (fine-tuning on new cubes): a model.safetensors URL."
    ),
    max_steps: int = typer.Option(
        1000, "--max-steps", help="Optimiser steps (the cosine schedule spans them)."
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="Micro-batch per device."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per step and device."),
    lr: float = typer.Option(5e-4, "--lr", help="Peak AdamW learning rate."),
    warmup_steps: int = typer.Option(
        100, "--warmup-steps", help="Optimiser steps of linear warmup to --lr (then cosine decay)."
    ),
    weight_decay: float = typer.Option(
        0.05, "--weight-decay", help="AdamW weight decay (on weight matrices only)."
    ),
    clip_grad_norm: float = typer.Option(1.0, "--clip-grad-norm", help="<= 0 disables clipping."),
    chip_m: float = typer.Option(
        480.0,
        "--chip-m",
        help="Chip side in metres: a multiple of a GSD (groups whose GSD does not divide it are left out; "
        "a multiple of every GSD uses them all), at most the tile side.",
    ),
    min_valid_frac: float = typer.Option(0.5, "--min-valid-frac", help="Skip chips with fewer valid pixels."),
    val_fraction: float = typer.Option(0.0, "--val-fraction", help="Chip locations held out of training."),
    streams: int = typer.Option(
        8, "--streams", help="Data streams of the epoch plan (the world size must divide them)."
    ),
    window_blocks: int = typer.Option(
        4, "--window-blocks", help="(tile, time) blocks a stream mixes per window (the shuffle buffer)."
    ),
    num_workers: int = typer.Option(2, "--num-workers", help="Loader worker processes per device."),
    checkpoint_every: int = typer.Option(
        500, "--checkpoint-every", help="Write a checkpoint every N steps (and at the end)."
    ),
    log_every: int = typer.Option(10, "--log-every", help="One metrics.jsonl line every N steps."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data order, masks and initial weights."),
    no_amp: bool = typer.Option(False, "--no-amp", help="Disable bf16 autocast on CUDA."),
    activation_checkpointing: bool = typer.Option(
        False,
        "--activation-checkpointing",
        help="Recompute each transformer block in the backward pass: less memory, more compute.",
    ),
    device: str = typer.Option(
        "auto",
        "--device",
        help="auto | cpu | cuda | cuda:N | mps (auto: this process's GPU when there is one).",
    ),
    nproc_per_node: int = typer.Option(
        1, "--nproc-per-node", help=">1: launch torchrun with this many processes."
    ),
    nnodes: str = typer.Option("1", "--nnodes", help="Nodes (or MIN:MAX); >1 needs --rdzv-endpoint."),
    rdzv_endpoint: str | None = typer.Option(None, "--rdzv-endpoint", help="host:port of the rendezvous."),
    rdzv_id: str = typer.Option("aom-pretrain", "--rdzv-id", help="Same id on every node of one job."),
    storage_options: list[str] = storage_options_option(" (e.g. an endpoint_url) for cubes and --out"),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Print the torchrun command instead of running (its configuration in a private file, kept).",
    ),
) -> None:
    """Pretrain AOM on cube stores: masked band reconstruction + multi-scale alignment.

    Checkpoints, metrics (JSON lines), a loss-curve PNG and the final model.safetensors go to OUT.
    With --nproc-per-node/--nnodes the same run is launched under torchrun (NCCL on GPU, gloo on CPU).
    """
    from aom_model.checkpoint import check_checkpoint_header
    from aom_model.train import (
        ChipConfig,
        PretrainConfig,
        launch_torchrun,
        pretrain_torchrun_command,
        write_config_file,
    )
    from aom_model.train.distributed import check_launch
    from aom_model.train.main import STORAGE_OPTIONS_ENV
    from pipelines.errors import check_device_available
    from pipelines.pretrain import pretrain as train_on_cubes
    from pipelines.storage import parse_storage_options, redact_text, redact_url

    if storage_options:
        options = parse_storage_options(storage_options)
    else:  # checked here, not by every torchrun worker (one line, not a traceback per rank)
        options = parse_storage_options(
            os.environ.get(STORAGE_OPTIONS_ENV) or None, f"${STORAGE_OPTIONS_ENV}"
        )
    nodes = check_launch(nproc_per_node, nnodes, rdzv_endpoint)
    urls = list(cubes) + list(more_cubes or [])
    if not urls:
        raise typer.BadParameter("give at least one cube store with --cubes")
    for store_url in urls:  # "" (an unset shell variable) was the working directory, read as a store
        check_not_empty(store_url, "--cubes")
    try:
        cfg = PretrainConfig(
            cubes=tuple(urls),
            out=out,
            model=config,
            model_overrides=_model_overrides(model_set),
            resume=resume,
            resume_with_changes=resume_with_changes,
            init=init,
            max_steps=max_steps,
            batch_size=batch_size,
            grad_accum=grad_accum,
            lr=lr,
            warmup_steps=warmup_steps,
            weight_decay=weight_decay,
            clip_grad_norm=clip_grad_norm,
            num_workers=num_workers,
            checkpoint_every=checkpoint_every,
            log_every=log_every,
            seed=seed,
            amp=not no_amp,
            activation_checkpointing=activation_checkpointing,
            device=device,
            storage_options=options,
            chips=ChipConfig(
                chip_m=chip_m,
                min_valid_frac=min_valid_frac,
                val_fraction=val_fraction,
                streams=streams,
                window_blocks=window_blocks,
            ),
        )
        cfg.model_config()
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    from aom_model.train.resume import check_start
    from pipelines.storage import check_credentials

    check_folder_url(out, "--out")
    if not dry_run:  # a printed command may run elsewhere, with other credentials and stores
        check_device_available("device (--device)", device)
        for url in (*cfg.cubes, cfg.out, cfg.init):
            check_credentials(url, options, "--cubes/--out/--init")
        check_start(cfg)
        if cfg.init:  # its header, after check_start named a missing file or a folder
            check_checkpoint_header(cfg.init, options, "--init")
    if nproc_per_node > 1 or nodes > 1 or dry_run:
        rendezvous: dict[str, Any] = {"nnodes": nnodes, "rdzv_endpoint": rdzv_endpoint, "rdzv_id": rdzv_id}
        if dry_run:  # the configuration goes in a private file (0600), kept: the command runs as printed
            path = write_config_file(cfg)
            cmd = pretrain_torchrun_command(path, nproc_per_node, **rendezvous)
            typer.echo(shlex.join([redact_text(arg) for arg in cmd]))  # quoted: it can be pasted as it is
            typer.echo(
                f"note: the configuration, URL credentials included, is in {path} (mode 0600, readable "
                "only by you); the command reads it there (on every node: copy it to the same path), and "
                f"storage options are not in it (set ${STORAGE_OPTIONS_ENV} or AWS_* variables). Remove "
                f"{os.path.dirname(path)} after the run.",
                err=True,
            )
            return
        # the configuration (URLs with their tokens) in a private file, removed when torchrun ends; the
        # storage options in the ranks' environment
        raise typer.Exit(launch_torchrun(cfg, nproc_per_node, **rendezvous)[0])
    result = train_on_cubes(cfg)
    typer.echo(f"{result.steps} steps, final loss {result.final_loss}, {result.samples_per_s:.1f} samples/s")
    typer.echo(f"model:   {redact_url(result.checkpoint)}")
    typer.echo(f"metrics: {redact_url(result.metrics_url)}")
    typer.echo(f"curve:   {redact_url(result.loss_curve_url)}")
    if any(result.counters.get(k) for k in ("chips_skipped", "nonfinite_steps")):
        typer.echo(f"counters: {result.counters}")


def _model_overrides(pairs: list[str]) -> dict[str, object]:
    """``["align_weight=0.1", "layout=joint"]`` -> ``{"align_weight": 0.1, "layout": "joint"}``."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--model-set needs KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw  # a bare string such as layout=joint
    return out


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain)
