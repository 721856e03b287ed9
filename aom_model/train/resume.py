"""Where a pretraining run starts: a fresh ``--out``, a resumed run, or ``--init`` weights.

* Checked before any work (:func:`check_start`): a fresh run refuses an ``--out`` that already
  holds a run (``pretrain_config.json`` or ``checkpoints/latest.json``) unless ``--resume``, and
  one holding any file a run writes (:data:`RUN_OUTPUTS`: it would overwrite the user's files);
  ``--init`` must be a file.
* ``--resume`` continues from the newest *readable* kept checkpoint (:func:`find_resume_point`):
  a corrupt or missing ``latest.json`` or checkpoint is skipped with a warning naming it; one that
  cannot be *read* (access refused, storage or network failing) fails the resume (exit 1), since
  falling back would rewind the run and overwrite the newer checkpoint.
* ``--resume`` refuses changed hyper-parameters (:func:`check_resume_changes`, the fields of
  :data:`HYPER_PARAMETERS`), naming them, unless ``--resume-with-changes``: then the new values
  are used from the resumed step on and ``pretrain_config.json`` records both under ``resumes``.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aom_model.train.config import PretrainConfig
from pipelines.errors import InputError, RunFailedError
from pipelines.storage import (
    exists,
    filesystem,
    join,
    normalise_url,
    read_json,
    redact_record,
    redact_url,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "pretrain_config.json"
"""The run's configuration, written into ``--out`` when training starts."""

RUN_OUTPUTS = (
    "model.safetensors",
    "norm_stats.json",
    "metrics.jsonl",
    "loss_curve.png",
    "result.json",
    "checkpoints",
)
"""What a run writes into ``--out`` besides :data:`CONFIG_FILE`: a fresh run refuses an ``--out``
that already has any of them (it would overwrite files it did not create)."""


def check_start(cfg: PretrainConfig) -> None:
    """Refuse a start that would mix runs or read what is not there, with one line saying the fix."""
    so: Mapping[str, Any] = cfg.storage_options
    out = redact_url(cfg.out)
    latest = join(cfg.out, "checkpoints", "latest.json")
    run_here = exists(join(cfg.out, CONFIG_FILE), so) or exists(latest, so)
    if run_here and not cfg.resume:
        raise InputError(
            f"{out} already holds a pretraining run: pass --resume to continue it, or use a new --out"
        )
    if not run_here:  # a fresh start (also with --resume): nothing of a run may be there yet
        taken = [name for name in RUN_OUTPUTS if exists(join(cfg.out, name), so)]
        if taken:  # not a run, but a run would overwrite them: never touch files it did not create
            raise InputError(
                f"{out} already holds {', '.join(taken)}, which a pretraining run writes: "
                "use a new or empty --out"
            )
    if cfg.init:
        fs, path = filesystem(normalise_url(cfg.init), so)
        if not fs.exists(path):
            raise InputError(f"--init {redact_url(cfg.init)}: no such file (give a model.safetensors)")
        if fs.isdir(path):
            raise InputError(f"--init {redact_url(cfg.init)} is a folder; give its model.safetensors file")


HYPER_PARAMETERS = (
    "model",
    "model_overrides",
    "seed",
    "batch_size",
    "grad_accum",
    "lr",
    "min_lr_ratio",
    "warmup_steps",
    "weight_decay",
    "betas",
    "clip_grad_norm",
    "chips",
    "cubes",
)
"""What a resumed run must share with the run it continues (``max_steps`` may grow, and the
execution settings, workers, logging and checkpoint cadence, may change freely)."""


@dataclass(frozen=True)
class ResumePoint:
    """A checkpoint a run can continue from, read and checked whole."""

    dir: str
    """The checkpoint folder (``OUT/checkpoints/step-0000000s``)."""
    model: Any
    """``load_checkpoint``'s result for its ``model.safetensors``: (model, config, norm stats, meta)."""
    trainer_state: dict[str, Any]
    """Its ``trainer.pt``: optimiser, schedule, step, epoch, data position, counters."""
    skipped: tuple[str, ...] = ()
    """Newer checkpoints that could not be read, ``"<dir>: <reason>"`` (warned about)."""


def find_resume_point(ckpt_root: str, storage_options: Mapping[str, Any]) -> ResumePoint | None:
    """The newest readable kept checkpoint: the one ``latest.json`` names, else (``latest.json`` or
    that checkpoint corrupt or missing) the previous kept ones, newest first, each skipped one
    warned about by name. None when the run has no checkpoint at all (a fresh start)."""
    so = storage_options
    latest_url = join(ckpt_root, "latest.json")
    named: str | None = None
    problems: list[str] = []
    if exists(latest_url, so):
        try:
            named = str(read_json(latest_url, so)["dir"])
            if not named.startswith("step-"):
                raise ValueError(f"unexpected dir {named!r}")
        except Exception as exc:
            _fail_unless_content(exc, latest_url)
            problems.append(f"{redact_url(latest_url)}: {_reason(exc)}")
            log.warning(
                "--resume: %s is unreadable (%s); looking for the previous kept checkpoint",
                redact_url(latest_url),
                _reason(exc),
            )
            named = None
    kept = _kept_dirs(ckpt_root, so)
    if named is not None:
        order = [named, *[d for d in kept if d < named]]
    else:
        order = kept
    if not order and not problems:
        return None
    for name in order:
        d = join(ckpt_root, name)
        try:
            point = _read_point(d, so)
        except Exception as exc:
            _fail_unless_content(exc, d)
            problems.append(f"{redact_url(d)}: {_reason(exc)}")
            log.warning(
                "--resume: checkpoint %s is unreadable (%s); falling back to the previous kept one",
                redact_url(d),
                _reason(exc),
            )
            continue
        if problems:
            log.warning("--resume: continuing from %s (skipped: %s)", redact_url(d), "; ".join(problems))
        return ResumePoint(point.dir, point.model, point.trainer_state, tuple(problems))
    raise InputError(
        f"--resume: no readable checkpoint in {redact_url(ckpt_root)} ({'; '.join(problems) or 'none kept'}); "
        "start a new --out"
    )


_MISSING = (FileNotFoundError, IsADirectoryError, NotADirectoryError)
_NETWORK_CLIENTS = ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "google", "azure", "fsspec")


def _fail_unless_content(exc: BaseException, where: str) -> None:
    """RunFailedError when ``exc`` says nothing about the checkpoint's content (access refused,
    storage or network failing): only a missing or corrupt checkpoint may be skipped. (Every error
    was skipped: a newest checkpoint that could not be read for a moment rewound the run to an older
    one, which then overwrote it.)"""
    if isinstance(exc, _MISSING):
        return
    client = type(exc).__module__.split(".")[0] in _NETWORK_CLIENTS
    if isinstance(exc, OSError) or client:  # PermissionError, ConnectionError, TimeoutError, EIO ...
        raise RunFailedError(
            f"--resume: could not read {redact_url(where)} ({type(exc).__name__}: {_reason(exc)}); "
            "nothing was changed: fix the access (permissions, credentials, network) and rerun"
        ) from exc


def _kept_dirs(ckpt_root: str, so: Mapping[str, Any]) -> list[str]:
    """Names of the ``step-*`` folders, newest first."""
    fs, root = filesystem(ckpt_root, so)
    try:
        entries = fs.ls(root, detail=False)
    except FileNotFoundError:
        return []
    names = [posixpath.basename(str(p).rstrip("/")) for p in entries]
    return sorted((n for n in names if n.startswith("step-")), reverse=True)


def _read_point(d: str, so: Mapping[str, Any]) -> ResumePoint:
    import torch

    from aom_model.checkpoint import load_checkpoint

    model = load_checkpoint(_read_bytes(join(d, "model.safetensors"), so))
    state = torch.load(io.BytesIO(_read_bytes(join(d, "trainer.pt"), so)), weights_only=True)
    missing = [
        k for k in ("optimizer", "scheduler", "step", "epoch", "global_micro_batches_done") if k not in state
    ]
    if missing:
        raise ValueError(f"trainer.pt lacks {missing}")
    return ResumePoint(d, model, dict(state))


def _read_bytes(url: str, so: Mapping[str, Any]) -> bytes:
    fs, path = filesystem(url, so)
    with fs.open(path, "rb") as fh:
        data: bytes = fh.read()
    return data


def _reason(exc: BaseException) -> str:
    return " ".join(redact_url(str(exc)).split())[:200] or type(exc).__name__


def changed_hyper_parameters(before: Mapping[str, Any], cfg: PretrainConfig) -> dict[str, list[Any]]:
    """``{field: [old, new]}`` for the hyper-parameters where ``cfg`` differs from ``before`` (the
    configuration the checkpoint was trained with, as ``PretrainConfig.to_dict`` wrote it)."""
    now = cfg.record()
    before = redact_record(dict(before))  # a record written before URLs were redacted compares alike
    out: dict[str, list[Any]] = {}
    for key in HYPER_PARAMETERS:
        if key in before and key in now and _canon(before[key]) != _canon(now[key]):
            out[key] = [before[key], now[key]]
    return out


def check_resume_changes(before: Mapping[str, Any], cfg: PretrainConfig, where: str) -> dict[str, list[Any]]:
    """Refuse a resume whose hyper-parameters differ from the checkpoint's, naming the fields,
    unless ``cfg.resume_with_changes``; returns the changes (recorded in ``pretrain_config.json``)."""
    changed = changed_hyper_parameters(before, cfg)
    if changed and not cfg.resume_with_changes:
        fields = ", ".join(f"{k} {_show(old)} -> {_show(new)}" for k, (old, new) in changed.items())
        raise InputError(
            f"--resume: {redact_url(where)} was trained with other hyper-parameters ({fields}): give the "
            "run's values, or --resume-with-changes to continue with the new ones (both are recorded in "
            "pretrain_config.json)"
        )
    return changed


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
