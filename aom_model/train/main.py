"""Pretraining's command line: the argument parser and :func:`main`, run by ``python -m pipelines.pretrain``.

The engine (:mod:`aom_model.train.engine`) knows nothing about argv; this module turns arguments into a
:class:`~aom_model.train.config.PretrainConfig`, as MAE's ``main_pretrain.py`` does for ``engine_pretrain.py``.
It does not know how to open cube stores: :func:`main` takes the ``opener`` from its caller, and
``pipelines.pretrain`` (what ``torchrun`` launches, see :data:`~aom_model.train.distributed.ENTRY_POINT`)
passes ``pipelines.cubes.CubeStore.open``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from aom_model.train.config import PretrainConfig
from aom_model.train.cube_reader import StoreOpener
from aom_model.train.distributed import ENTRY_POINT, torchrun_command
from aom_model.train.engine import _read_bytes, run_pretraining
from pipelines.storage import parse_storage_options, redact_record

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# command line (torchrun-able)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {ENTRY_POINT}",
        description="AOM pretraining on cube stores (run under torchrun for several GPUs / nodes).",
    )
    p.add_argument("--cubes", nargs="+", help="cube store URLs (local paths or s3://...)")
    p.add_argument("--out", help="output URL: checkpoints, metrics, final model")
    p.add_argument("--config", default=None, help="model size: tiny | small | base")
    p.add_argument(
        "--config-json",
        default=None,
        help="a PretrainConfig as JSON: a file path (how aom pretrain passes it: a command line is readable "
        "by every user of the machine) or inline; flags override",
    )
    p.add_argument(
        "--resume", action="store_true", default=None, help="continue from out/checkpoints/latest.json"
    )
    p.add_argument(
        "--resume-with-changes",
        action="store_true",
        default=None,
        help="with --resume: continue with changed hyper-parameters (both recorded in pretrain_config.json)",
    )
    p.add_argument("--init", default=None, help="initial weights (fine-tuning): a model.safetensors URL")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int, help="per-device micro-batch")
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--clip-grad-norm", type=float)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--log-every", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--chip-m", type=float)
    p.add_argument(
        "--streams",
        type=int,
        default=None,
        help="data streams of the epoch plan (the world size must divide them)",
    )
    p.add_argument("--window-blocks", type=int, default=None, help="(tile, time) blocks mixed per window")
    p.add_argument("--min-valid-frac", type=float)
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--no-amp", action="store_true", default=None)
    p.add_argument("--activation-checkpointing", action="store_true", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int)
    p.add_argument("--stop-after", type=int)
    p.add_argument("--no-progress", action="store_true", default=None)
    p.add_argument(
        "--storage-options",
        default=None,
        help="fsspec options: JSON, @file.json or key=value (never logged); or $AOM_STORAGE_OPTIONS",
    )
    return p


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    base: dict[str, Any] = {}
    if args.config_json:
        text = args.config_json
        base = json.loads(text) if text.lstrip().startswith("{") else json.loads(_read_bytes(text, None))
    chips = dict(base.get("chips") or {})
    flags = {
        "cubes": args.cubes,
        "out": args.out,
        "model": args.config,
        "resume": args.resume,
        "resume_with_changes": args.resume_with_changes,
        "init": args.init,
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "grad_accum": args.grad_accum,
        "lr": args.lr,
        "warmup_steps": args.warmup_steps,
        "weight_decay": args.weight_decay,
        "clip_grad_norm": args.clip_grad_norm,
        "num_workers": args.num_workers,
        "checkpoint_every": args.checkpoint_every,
        "log_every": args.log_every,
        "seed": args.seed,
        "device": args.device,
        "threads": args.threads,
        "stop_after": args.stop_after,
        "activation_checkpointing": args.activation_checkpointing,
    }
    base.update({k: v for k, v in flags.items() if v is not None})
    if args.no_amp:
        base["amp"] = False
    if args.no_progress:
        base["progress"] = False
    for flag, key in (
        ("chip_m", "chip_m"),
        ("min_valid_frac", "min_valid_frac"),
        ("val_fraction", "val_fraction"),
        ("streams", "streams"),
        ("window_blocks", "window_blocks"),
    ):
        if getattr(args, flag) is not None:
            chips[key] = getattr(args, flag)
    base["chips"] = chips
    so_text = args.storage_options or os.environ.get(STORAGE_OPTIONS_ENV)
    if so_text:
        base["storage_options"] = parse_storage_options(so_text)
    if not base.get("cubes") or not base.get("out"):
        raise SystemExit("--cubes and --out are required (directly or in --config-json)")
    return PretrainConfig.from_dict(base)


STORAGE_OPTIONS_ENV = "AOM_STORAGE_OPTIONS"
"""The environment variable that carries the storage options to the ranks (JSON; never on argv, never in
the configuration file: :func:`launch_torchrun`)."""

CONFIG_FILE_NAME = "pretrain_config.json"
"""The name of the launch's configuration file in its private folder (:func:`write_config_file`)."""


def write_config_file(cfg: PretrainConfig) -> str:
    """Write ``cfg.to_dict()`` (the real URLs, tokens and all: the ranks need them) to a new private
    folder (``tempfile.mkdtemp``: mode 0700) as :data:`CONFIG_FILE_NAME` (created exclusively, mode
    0600) and return its path, for ``--config-json PATH``. The configuration never goes on a command
    line: every user of the machine can read a process's argv (``ps``, ``/proc/<pid>/cmdline``) and
    schedulers log it. Storage options are not in it (``to_dict`` leaves them out); they reach the
    ranks as :data:`STORAGE_OPTIONS_ENV` (:func:`launch_torchrun`). The caller removes the folder (:func:`private_config_file`)."""
    folder = tempfile.mkdtemp(prefix="aom-pretrain-")
    path = os.path.join(folder, CONFIG_FILE_NAME)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(cfg.to_dict(), fh)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return path


@contextmanager
def private_config_file(cfg: PretrainConfig) -> Iterator[str]:
    """:func:`write_config_file`, and its folder removed when the block ends, also on failure."""
    path = write_config_file(cfg)
    try:
        yield path
    finally:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def pretrain_torchrun_command(config_file: str, nproc_per_node: int, **rendezvous: Any) -> list[str]:
    """torchrun command line running the configuration in ``config_file`` (a path, as
    :func:`write_config_file` writes it; ``rendezvous``: nnodes, node_rank, rdzv_endpoint, rdzv_id).
    Only the path goes on the command line: a configuration there (its URLs may carry tokens) would
    be readable by every user of the machine."""
    if not isinstance(config_file, str) or config_file.lstrip().startswith("{"):
        raise TypeError(
            "pretrain_torchrun_command takes the path of a configuration file (write_config_file)"
        )
    return torchrun_command(["--config-json", config_file], nproc_per_node, **rendezvous)


def launch_torchrun(
    cfg: PretrainConfig, nproc_per_node: int, env: Mapping[str, str] | None = None, **rendezvous: Any
) -> tuple[int, list[str]]:
    """Run ``cfg`` under torchrun and wait: the configuration in a :func:`private_config_file` (removed
    when torchrun ends, also on failure), its path on the command line, and ``cfg.storage_options`` in
    the ranks' environment (:data:`STORAGE_OPTIONS_ENV`; ``env``: the environment to add them to, the
    process's own by default). -> (exit status, command)."""
    run_env = None if env is None else dict(env)
    if cfg.storage_options:  # readable by this user only, unlike a command line
        run_env = {
            **(os.environ if run_env is None else run_env),
            STORAGE_OPTIONS_ENV: json.dumps(cfg.storage_options),
        }
    with private_config_file(cfg) as path:
        cmd = pretrain_torchrun_command(path, nproc_per_node, **rendezvous)
        return subprocess.run(cmd, env=run_env).returncode, cmd


def main(argv: Sequence[str] | None, opener: StoreOpener) -> int:
    """Parse ``argv`` (``sys.argv[1:]`` when None), train on the stores ``opener`` opens, and print
    the result as one JSON line on rank 0."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(build_parser().parse_args(argv))
    result = run_pretraining(cfg, opener)
    if int(os.environ.get("RANK", "0")) == 0:
        shown = redact_record(result.to_dict())  # the URLs in it may carry credentials
        print(json.dumps({k: v for k, v in shown.items() if k != "norm_stats"}, default=str))
    return 0
