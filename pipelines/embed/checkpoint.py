"""Checkpoints for embedding: loaded once per process from any storage URL, shared by threads."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipelines import storage
from pipelines.embed.chips import (
    EmbedConfigError,
)
from pipelines.errors import check_device_available

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class LoadedCheckpoint:
    model: Any
    config: Any
    norm_stats: dict[str, Any] | None
    meta: dict[str, Any]
    sha256: str
    name: str
    model_version: str


_MODELS: dict[tuple[str, str], LoadedCheckpoint] = {}


_MODELS_LOCK = threading.Lock()


def _model_name(config: Any, extra: Mapping[str, Any]) -> str:
    from aom_model import AOMConfig

    if extra.get("model_name"):
        return str(extra["model_name"])
    for size in ("tiny", "small", "base"):
        if config == AOMConfig.named(size):
            return f"aom-{size}"
    return "aom-custom"


def load_checkpoint_url(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    expect_sha256: str | None = None,
    device: str = "cpu",
) -> LoadedCheckpoint:
    """Read a checkpoint from any fsspec URL, hash it, load the model (cached per process + device).

    With ``expect_sha256`` (workers) a cached model of that hash is reused without reading; without
    it (planning) the bytes are always read and hashed, so a replaced checkpoint is never stale.
    """
    key = (storage.normalise_url(url), device)
    with _MODELS_LOCK:
        hit = _MODELS.get(key)
        if hit is not None and expect_sha256 is not None and hit.sha256 == expect_sha256:
            return hit
    from aom_model import load_checkpoint

    fs, path = storage.filesystem(url, storage_options)
    try:
        with fs.open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise EmbedConfigError(f"checkpoint {storage.redact_url(url)} not found") from None
    except IsADirectoryError:
        raise EmbedConfigError(
            f"checkpoint {storage.redact_url(url)} is a folder; give its model.safetensors file"
        ) from None
    sha = hashlib.sha256(data).hexdigest()
    if hit is not None and hit.sha256 == sha:
        return hit
    if expect_sha256 is not None and sha != expect_sha256:
        raise EmbedConfigError(
            f"checkpoint {storage.redact_url(url)} changed during the run (sha256 {sha[:12]} != {expect_sha256[:12]})"
        )
    try:
        model, config, norm_stats, meta = load_checkpoint(data, map_location=device)
    except ValueError as exc:
        raise EmbedConfigError(f"checkpoint {storage.redact_url(url)} cannot be loaded: {exc}") from None
    extra = dict(meta.get("extra") or {})
    loaded = LoadedCheckpoint(
        model=model,
        config=config,
        norm_stats=norm_stats,
        meta=meta,
        sha256=sha,
        name=_model_name(config, extra),
        model_version=str(extra.get("model_version") or f"sha256-{sha[:12]}"),
    )
    with _MODELS_LOCK:
        _MODELS[key] = loaded
    return loaded


def _resolve_device(device: str) -> str:
    if device != "auto":
        check_device_available("device (--device)", device)  # one line, not torch's traceback
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:  # pragma: no cover - torch is a dependency
        return "cpu"
