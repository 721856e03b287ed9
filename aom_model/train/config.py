"""What a pretraining run is asked to do (:class:`PretrainConfig`) and what it reports."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aom_model.config import AOMConfig
from aom_model.train.chips import ChipConfig
from pipelines.errors import InputError, RunFailedError, check_device, check_number
from pipelines.storage import check_url, normalise_url, redact_record

log = logging.getLogger(__name__)


class NonFiniteLossError(RunFailedError):
    """Too many steps with a non-finite loss or gradient norm."""


@dataclass
class PretrainConfig:
    cubes: tuple[str, ...]
    out: str
    model: str = "tiny"  # AOMConfig.named(...)
    model_overrides: dict[str, Any] = field(default_factory=dict)
    storage_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    max_steps: int = 1000
    batch_size: int = 16  # per-device micro-batch
    grad_accum: int = 1  # global batch = batch_size * grad_accum * world size
    lr: float = 5e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad_norm: float = 1.0  # <= 0: no clipping (norm still measured)
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    activation_checkpointing: bool = False
    num_workers: int = 2
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    resume: bool = False  # continue from out/checkpoints/latest.json when present
    resume_with_changes: bool = False  # --resume with other hyper-parameters: use them, record both
    init: str | None = None  # initial weights (fine-tuning): a model.safetensors URL
    max_nonfinite_steps: int = 20
    chips: ChipConfig = field(default_factory=ChipConfig)
    device: str = "auto"
    threads: int | None = None  # torch intra-op threads (None: leave as is)
    progress: bool = True
    stop_after: int | None = None  # stop after this step (as if killed); the schedule still spans max_steps

    def __post_init__(self) -> None:
        if isinstance(self.cubes, str):
            self.cubes = (self.cubes,)
        self.cubes = tuple(normalise_url(u) for u in self.cubes)
        self.out = normalise_url(self.out)
        if isinstance(self.chips, Mapping):
            self.chips = ChipConfig.from_dict(self.chips)
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if not self.cubes:
            raise InputError("at least one cube store URL is needed (--cubes)")
        for name in (
            "max_steps",
            "batch_size",
            "grad_accum",
            "checkpoint_every",
            "log_every",
            "keep_checkpoints",
        ):
            check_number(f"{name} (--{name.replace('_', '-')})", getattr(self, name), minimum=1)
        check_number("lr (--lr)", self.lr, above=0)
        check_number("min_lr_ratio", self.min_lr_ratio, minimum=0, maximum=1)
        check_number("warmup_steps (--warmup-steps)", self.warmup_steps, minimum=0)
        check_number("weight_decay (--weight-decay)", self.weight_decay, minimum=0)
        check_number("clip_grad_norm (--clip-grad-norm)", self.clip_grad_norm)  # finite; <= 0: off
        check_number("num_workers (--num-workers)", self.num_workers, minimum=0)
        check_number("max_nonfinite_steps", self.max_nonfinite_steps, minimum=0)
        check_number("threads", self.threads, minimum=1)
        for beta in self.betas:
            check_number("betas", beta, minimum=0, below=1)
        check_device("device (--device)", self.device)
        for url in (*self.cubes, self.out, self.init):
            check_url(url, "a cube store, --out or --init")

    def model_config(self) -> AOMConfig:
        return AOMConfig.named(self.model, **self.model_overrides)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["cubes"] = list(self.cubes)
        d["betas"] = list(self.betas)
        d["chips"] = self.chips.to_dict()
        d.pop("storage_options")  # may carry credentials: never written out
        return d

    def record(self) -> dict[str, Any]:
        """:meth:`to_dict` as written into ``pretrain_config.json``, checkpoints and logs: URLs
        (``cubes``, ``out``, ``init``) redacted by :func:`pipelines.redaction.redact_record`.
        ``to_dict`` itself stays whole: it is how the ranks of a torchrun get the configuration."""
        return dict(redact_record(self.to_dict()))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PretrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown PretrainConfig keys: {unknown}")
        kw = dict(d)
        if "cubes" in kw:
            kw["cubes"] = tuple(kw["cubes"])
        if "betas" in kw:
            kw["betas"] = tuple(kw["betas"])
        return cls(**kw)


@dataclass
class PretrainResult:
    out: str
    checkpoint: str  # final model.safetensors (or the last checkpoint's when stopped early)
    steps: int
    epochs_started: int
    final_loss: float | None
    metrics_url: str
    loss_curve_url: str
    counters: dict[str, int]
    index_counts: dict[str, int]
    norm_stats: dict[str, Any]
    wall_s: float
    samples_per_s: float
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
