"""Where a pretraining run starts: a fresh ``--out``, a resumed run, or ``--init`` weights.

* Checked before any work (:func:`check_start`): a fresh run refuses an ``--out`` that already
  holds a run (``pretrain_config.json`` or ``checkpoints/latest.json``) unless ``--resume``;
  ``--init`` must be a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aom_model.train.config import PretrainConfig
from pipelines.errors import InputError
from pipelines.storage import exists, filesystem, join, normalise_url, redact_url

CONFIG_FILE = "pretrain_config.json"
"""The run's configuration, written into ``--out`` when training starts."""


def check_start(cfg: PretrainConfig) -> None:
    """Refuse a start that would mix runs or read what is not there, with one line saying the fix."""
    so: Mapping[str, Any] = cfg.storage_options
    out = redact_url(cfg.out)
    latest = join(cfg.out, "checkpoints", "latest.json")
    if not cfg.resume and (exists(join(cfg.out, CONFIG_FILE), so) or exists(latest, so)):
        raise InputError(
            f"{out} already holds a pretraining run: pass --resume to continue it, or use a new --out"
        )
    if cfg.init:
        fs, path = filesystem(normalise_url(cfg.init), so)
        if not fs.exists(path):
            raise InputError(f"--init {redact_url(cfg.init)}: no such file (give a model.safetensors)")
        if fs.isdir(path):
            raise InputError(f"--init {redact_url(cfg.init)} is a folder; give its model.safetensors file")
