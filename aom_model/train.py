"""Pretraining engine: ``run_pretraining(PretrainConfig) -> PretrainResult`` and ``python -m aom_model.train``.

Runs alone or under ``torchrun`` (NCCL on GPU, gloo on CPU; see ``aom_model.distributed``):
bf16 autocast on CUDA, AdamW with warmup + cosine, gradient clipping and accumulation, optional
activation checkpointing of the transformer blocks, checkpoints every N steps to any fsspec URL
(model as safetensors with config + normalisation statistics; optimiser, schedule, RNG states and
data position beside it) with exact resume, non-finite-loss detection (the step is skipped on every
rank and counted; training stops after ``max_nonfinite_steps``), metrics as JSON lines plus a
loss-curve PNG, and a progress bar on rank 0.

Layout of ``out``::

    pretrain_config.json  norm_stats.json  metrics.jsonl  loss_curve.png  result.json
    model.safetensors                          final weights (aom_model.checkpoint format)
    checkpoints/latest.json                    {"step": s, "dir": "step-0000000s"}, written last
    checkpoints/step-XXXXXXXX/model.safetensors, trainer.pt, rng-rank<r>.pt
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import math
import os
import posixpath
import random
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from aom_model.checkpoint import load_checkpoint, save_checkpoint
from aom_model.config import AOMConfig
from aom_model.data import (
    ChipBatchDataset,
    ChipConfig,
    ChipIndex,
    NormStats,
    TrainBatch,
    compute_norm_stats,
    make_loader,
)
from aom_model.distributed import (
    DistEnv,
    all_reduce_,
    average_gradients,
    barrier,
    broadcast_parameters,
    init_distributed,
    shutdown,
    torchrun_command,
)
from aom_model.losses import normalized_patch_mse
from aom_model.metrics import MetricsLog, write_loss_curve
from aom_model.model import AOM
from aom_model.schedule import WarmupCosine
from pipelines.storage import (
    exists,
    filesystem,
    is_local,
    join,
    normalise_url,
    read_json,
    write_bytes_atomic,
    write_json_atomic,
)

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
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
            raise ValueError("at least one cube store URL is needed")
        for name in ("max_steps", "batch_size", "grad_accum", "checkpoint_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")

    def model_config(self) -> AOMConfig:
        return AOMConfig.named(self.model, **self.model_overrides)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["cubes"] = list(self.cubes)
        d["betas"] = list(self.betas)
        d["chips"] = self.chips.to_dict()
        d.pop("storage_options")  # may carry credentials: never written out
        return d

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


# ---------------------------------------------------------------------------------------------
# helpers


def _seed_for(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _read_bytes(url: str, storage_options: Mapping[str, Any] | None) -> bytes:
    fs, path = filesystem(url, storage_options)
    with fs.open(path, "rb") as fh:
        data: bytes = fh.read()
    return data


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _rng_state(env: DistEnv) -> dict[str, Any]:
    np_state: Any = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "python": random.getstate(),
    }
    if env.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(env.device)
    return state


def _set_rng_state(state: Mapping[str, Any], env: DistEnv) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    random.setstate(state["python"])
    if "cuda" in state and env.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], env.device)


def enable_activation_checkpointing(model: torch.nn.Module) -> int:
    """Recompute every transformer ``Block`` in backward (non-reentrant checkpointing).
    State-dict keys are unchanged (the block's ``forward`` is wrapped in place)."""
    from torch.utils.checkpoint import checkpoint

    from aom_model.blocks import Block

    n = 0
    for m in model.modules():
        if isinstance(m, Block):
            orig = m.forward

            def fwd(*args: Any, _orig: Any = orig, **kwargs: Any) -> Any:
                if torch.is_grad_enabled():
                    return checkpoint(_orig, *args, use_reentrant=False, **kwargs)
                return _orig(*args, **kwargs)

            m.forward = fwd  # type: ignore[method-assign]
            n += 1
    return n


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "token" in name or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ---------------------------------------------------------------------------------------------
# the engine


class Trainer:
    def __init__(self, cfg: PretrainConfig, env: DistEnv) -> None:
        self.cfg = cfg
        self.env = env
        self.ckpt_root = join(cfg.out, "checkpoints")
        self.step = 0
        self.epoch = 0
        self.pos = 0  # micro-batches consumed by this rank in the current epoch
        self.counters = {"chips_skipped": 0, "nonfinite_steps": 0, "empty_micro_batches": 0, "samples": 0}
        self.metrics = MetricsLog(join(cfg.out, "metrics.jsonl"), cfg.storage_options)
        self.started_from: str | None = None

    # -- set-up ----------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, env = self.cfg, self.env
        so = cfg.storage_options
        latest = join(self.ckpt_root, "latest.json")
        resume_dir = None
        if cfg.resume and exists(latest, so):
            resume_dir = join(self.ckpt_root, read_json(latest, so)["dir"])
        elif not cfg.resume and exists(latest, so):
            raise FileExistsError(
                f"{cfg.out} already holds checkpoints of a run: pass --resume to continue it, or use a new --out"
            )
        self.index = ChipIndex.build(cfg.cubes, so, cfg.chips)
        init_stats: NormStats | None = None
        model_cfg = cfg.model_config()
        init_model: AOM | None = None
        if resume_dir is not None:
            init_model, model_cfg, stats, _ = load_checkpoint(
                _read_bytes(join(resume_dir, "model.safetensors"), so)
            )
            if model_cfg != cfg.model_config():
                raise ValueError(
                    f"--resume: the checkpoint in {resume_dir} was trained with another model config; "
                    "use a new --out or the same --config"
                )
            init_stats = NormStats.from_dict(stats)
        elif cfg.init:
            init_model, model_cfg, stats, _ = load_checkpoint(_read_bytes(normalise_url(cfg.init), so))
            if model_cfg != cfg.model_config() and env.is_main:
                log.warning(
                    "--init: using the checkpoint's model config (it differs from --config %s)", cfg.model
                )
            init_stats = NormStats.from_dict(stats) if stats else None
        # every rank computes the same statistics from the same seeded chips (no communication)
        self.norm = compute_norm_stats(self.index, cfg.seed, "train", known=init_stats)
        self.model_cfg = model_cfg
        torch.manual_seed(cfg.seed)
        model = AOM(model_cfg)
        if init_model is not None:
            model.load_state_dict(init_model.state_dict())
        self.model = model.to(env.device)
        if cfg.activation_checkpointing:
            enable_activation_checkpointing(self.model)
        broadcast_parameters(self.model, env)
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, fused=False
        )
        self.schedule = WarmupCosine(cfg.lr, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
        self.dataset = ChipBatchDataset(self.index, self.norm, cfg.batch_size, cfg.seed, split="train")
        if resume_dir is not None:
            self._load_trainer_state(resume_dir)
            self.started_from = resume_dir
            self.metrics.load(upto_step=self.step)
        elif env.is_main:
            self.metrics.records = []
        if env.is_main:
            write_json_atomic(join(cfg.out, "pretrain_config.json"), cfg.to_dict(), so)
            write_json_atomic(join(cfg.out, "norm_stats.json"), self.norm.to_dict(), so)

    # -- checkpoints -----------------------------------------------------------------------------
    def _load_trainer_state(self, ckpt_dir: str) -> None:
        so = self.cfg.storage_options
        st = torch.load(io.BytesIO(_read_bytes(join(ckpt_dir, "trainer.pt"), so)), weights_only=True)
        self.optimizer.load_state_dict(st["optimizer"])
        self.schedule.load_state_dict(st["scheduler"])
        self.schedule.total_steps = self.cfg.max_steps
        self.step, self.epoch = int(st["step"]), int(st["epoch"])
        global_done = int(st["global_micro_batches_done"])
        if global_done % self.env.world:
            log.warning("resuming with another world size: data position rounded down")
        self.pos = global_done // self.env.world
        self.counters.update({k: int(v) for k, v in st["counters"].items()})
        rng_url = join(ckpt_dir, f"rng-rank{self.env.rank}.pt")
        if exists(rng_url, so):
            _set_rng_state(torch.load(io.BytesIO(_read_bytes(rng_url, so)), weights_only=True), self.env)
        if self.env.is_main:
            log.info(
                "resumed from %s at step %d (epoch %d, position %d)",
                ckpt_dir,
                self.step,
                self.epoch,
                self.pos,
            )

    def save_checkpoint(self) -> str:
        cfg, env, so = self.cfg, self.env, self.cfg.storage_options
        name = f"step-{self.step:08d}"
        d = join(self.ckpt_root, name)
        write_bytes_atomic(join(d, f"rng-rank{env.rank}.pt"), _torch_bytes(_rng_state(env)), so)
        barrier(env)
        if env.is_main:
            meta = {"step": self.step, "epoch": self.epoch, "pretrain": cfg.to_dict()}
            write_bytes_atomic(
                join(d, "model.safetensors"),
                save_checkpoint(None, self.model, self.model_cfg, self.norm.to_dict(), meta),
                so,
            )
            state = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.schedule.state_dict(),
                "step": self.step,
                "epoch": self.epoch,
                "global_micro_batches_done": self.pos * env.world,
                "counters": dict(self.counters),
            }
            write_bytes_atomic(join(d, "trainer.pt"), _torch_bytes(state), so)
            self.metrics.flush()
            write_loss_curve(join(cfg.out, "loss_curve.png"), self.metrics.records, so)
            write_json_atomic(join(self.ckpt_root, "latest.json"), {"step": self.step, "dir": name}, so)
            self._prune_checkpoints()
        barrier(env)
        return d

    def _prune_checkpoints(self) -> None:
        if self.cfg.keep_checkpoints <= 0:
            return
        fs, root = filesystem(self.ckpt_root, self.cfg.storage_options)
        dirs = sorted(
            p for p in fs.ls(root, detail=False) if posixpath.basename(p.rstrip("/")).startswith("step-")
        )
        for p in dirs[: -self.cfg.keep_checkpoints]:
            fs.rm(p, recursive=True)

    # -- one optimiser step ----------------------------------------------------------------------
    def _autocast(self) -> Any:
        if self.cfg.amp and self.env.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return nullcontext()

    def train_step(self, micro: Sequence[TrainBatch]) -> dict[str, Any]:
        cfg, env = self.cfg, self.env
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.schedule.apply(self.optimizer, self.step)
        # bad, n_ok, samples, skipped, loss, recon, align, n_align, stats
        acc = torch.zeros(9, dtype=torch.float64)
        for tb in micro:
            acc[3] += tb.skipped_chips
            if tb.native is None:
                self.counters["empty_micro_batches"] += 1
                continue
            gen = torch.Generator().manual_seed(_seed_for(cfg.seed, self.epoch, tb.index))
            native = tb.native.to(env.device)
            coarse = tb.coarse.to(env.device) if tb.coarse is not None else None
            with self._autocast():
                out = self.model.pretrain_step(native, coarse, gen)
            loss = out["loss"]
            vals = {k: float(v.detach().float()) for k, v in out.items()}
            if not all(math.isfinite(v) for v in vals.values()):
                acc[0] += 1
                continue
            (loss / len(micro)).backward()
            acc[1] += 1
            acc[2] += tb.size
            acc[4] += vals["loss"]
            acc[5] += vals["recon"]
            acc[8] += vals.get("stats", 0.0)
            if "align" in vals:
                acc[6] += vals["align"]
                acc[7] += 1
        all_reduce_(acc, env)
        bad, n_ok, samples, skipped = (int(acc[i]) for i in range(4))
        self.counters["chips_skipped"] += skipped
        rec: dict[str, Any] = {"lr": lr, "samples": samples}
        params = [p for p in self.model.parameters() if p.requires_grad]
        if bad == 0 and n_ok > 0:
            # unused parameters (e.g. a kernel-bank size no group needed) get a zero gradient, on one
            # rank as on many, so AdamW treats them identically whatever the world size
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            average_gradients(params, env)
            clip = cfg.clip_grad_norm if cfg.clip_grad_norm > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
            rec["grad_norm"] = grad_norm
            if not math.isfinite(grad_norm):
                bad = 1
        if bad or n_ok == 0:
            self.optimizer.zero_grad(set_to_none=True)
            if bad:
                self.counters["nonfinite_steps"] += 1
                rec["skipped"] = "nonfinite"
                if env.is_main:
                    log.warning("step %d: non-finite loss or gradient; step skipped", self.step)
                if self.counters["nonfinite_steps"] > cfg.max_nonfinite_steps:
                    raise NonFiniteLossError(
                        f"{self.counters['nonfinite_steps']} steps had a non-finite loss or gradient "
                        f"(limit {cfg.max_nonfinite_steps}); stopping at step {self.step}"
                    )
            else:
                rec["skipped"] = "empty"
            return rec
        self.optimizer.step()
        self.counters["samples"] += samples
        rec["loss"] = float(acc[4] / n_ok)
        rec["recon"] = float(acc[5] / n_ok)
        rec["stats"] = float(acc[8] / n_ok)
        if acc[7] > 0:
            rec["align"] = float(acc[6] / acc[7])
        return rec

    # -- the loop --------------------------------------------------------------------------------
    def fit(self) -> PretrainResult:
        cfg, env = self.cfg, self.env
        t_start = time.perf_counter()
        stop_at = cfg.max_steps if cfg.stop_after is None else min(cfg.max_steps, cfg.stop_after)
        bar = None
        if env.is_main and cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=cfg.max_steps, initial=self.step, desc="pretrain", unit="step", dynamic_ncols=True
            )
        window_samples, window_t = 0, time.perf_counter()
        win_sum: dict[str, float] = {}
        win_n: dict[str, int] = {}
        last_loss: float | None = None
        try:
            while self.step < stop_at:
                self.dataset.set_epoch(self.epoch)
                n_local = len(self.dataset) // env.world
                per_epoch = n_local // cfg.grad_accum
                if per_epoch == 0:
                    raise ValueError(
                        f"an epoch has {len(self.dataset)} micro-batches of {cfg.batch_size}: fewer than "
                        f"world size x grad_accum = {env.world * cfg.grad_accum}; lower batch_size or add cubes"
                    )
                if self.pos + cfg.grad_accum > per_epoch * cfg.grad_accum:
                    self.epoch, self.pos = self.epoch + 1, 0
                    continue
                loader = make_loader(self.dataset, env.rank, env.world, self.pos, cfg.num_workers)
                it = iter(loader)
                try:
                    while self.pos + cfg.grad_accum <= per_epoch * cfg.grad_accum and self.step < stop_at:
                        micro = [next(it) for _ in range(cfg.grad_accum)]
                        rec = self.train_step(micro)
                        self.pos += cfg.grad_accum
                        self.step += 1
                        window_samples += rec["samples"]
                        for key in ("loss", "recon", "stats", "align"):
                            if key in rec:
                                win_sum[key] = win_sum.get(key, 0.0) + rec[key]
                                win_n[key] = win_n.get(key, 0) + 1
                        if "loss" in rec:
                            last_loss = rec["loss"]
                        if bar is not None:
                            bar.update(1)
                            if "loss" in rec:
                                bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}")
                        if self.step % cfg.log_every == 0 or self.step == stop_at:
                            now = time.perf_counter()
                            rec.update(
                                step=self.step,
                                epoch=self.epoch,
                                samples_per_s=window_samples / max(now - window_t, 1e-9),
                                chips_skipped=self.counters["chips_skipped"],
                                nonfinite_steps=self.counters["nonfinite_steps"],
                                time=time.time(),
                            )
                            # loss terms: means over the steps since the last record
                            rec.update({k: win_sum[k] / win_n[k] for k in win_sum})
                            window_samples, window_t = 0, now
                            win_sum, win_n = {}, {}
                            if env.is_main:
                                self.metrics.append(rec)
                                if is_local(cfg.out):  # object stores: written at checkpoints only
                                    self.metrics.flush()
                        if self.step % cfg.checkpoint_every == 0 or self.step == stop_at:
                            self.save_checkpoint()
                finally:
                    del it, loader
                if self.pos + cfg.grad_accum > per_epoch * cfg.grad_accum:
                    self.epoch, self.pos = self.epoch + 1, 0
        finally:
            if bar is not None:
                bar.close()
        wall = time.perf_counter() - t_start
        so = cfg.storage_options
        stopped_early = self.step < cfg.max_steps
        final = join(cfg.out, "model.safetensors")
        if env.is_main:
            if not stopped_early:
                meta = {"step": self.step, "epoch": self.epoch, "pretrain": cfg.to_dict()}
                write_bytes_atomic(
                    final, save_checkpoint(None, self.model, self.model_cfg, self.norm.to_dict(), meta), so
                )
            self.metrics.flush()
            write_loss_curve(join(cfg.out, "loss_curve.png"), self.metrics.records, so)
        if stopped_early:
            final = join(self.ckpt_root, f"step-{self.step:08d}", "model.safetensors")
        result = PretrainResult(
            out=cfg.out,
            checkpoint=final,
            steps=self.step,
            epochs_started=self.epoch + 1,
            final_loss=last_loss,
            metrics_url=self.metrics.url,
            loss_curve_url=join(cfg.out, "loss_curve.png"),
            counters=dict(self.counters),
            index_counts=self.index.counts.to_dict(),
            norm_stats=self.norm.to_dict(),
            wall_s=wall,
            samples_per_s=self.counters["samples"] / max(wall, 1e-9),
            stopped_early=stopped_early,
        )
        if env.is_main:
            write_json_atomic(join(cfg.out, "result.json"), result.to_dict(), so)
        barrier(env)
        return result


def run_pretraining(cfg: PretrainConfig) -> PretrainResult:
    """Train (or resume / fine-tune) per ``cfg``; under torchrun every rank calls this."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    env = init_distributed(cfg.device)
    try:
        trainer = Trainer(cfg, env)
        trainer.setup()
        return trainer.fit()
    finally:
        shutdown(env)


# ---------------------------------------------------------------------------------------------
# evaluation: masked-band reconstruction against naive baselines


@torch.no_grad()
def evaluate_masked_band(
    model: AOM,
    index: ChipIndex,
    norm: NormStats,
    split: str = "val",
    batch_size: int = 8,
    seed: int = 1234,
    max_batches: int | None = None,
) -> dict[str, Any]:
    """Hide each band of each held-out chip in turn (all others visible) and score its reconstruction with
    the pretraining metric (per-patch-normalised MSE over valid pixels of the band's tokens) against
    two naive baselines on the same tokens: the band's mean (a constant patch, i.e. 0 after
    per-patch normalisation) and the nearest-wavelength visible band copied (resampled to the masked
    band's patch grid when its GSD differs, then per-patch normalised)."""
    import torch.nn.functional as F

    model.eval()
    dev = next(model.parameters()).device
    ds = ChipBatchDataset(
        index, norm, batch_size, seed, split=split, augment=False, with_coarse=False, drop_remainder=False
    )
    sums = {"model": 0.0, "band_mean": 0.0, "nearest_band_copy": 0.0}
    n_tokens = 0.0
    by_gsd: dict[str, dict[str, float]] = {}
    n = len(ds) if max_batches is None else min(len(ds), max_batches)
    for i in range(n):
        tb = ds[i]
        if tb.native is None:
            continue
        batch = tb.native.to(dev)
        tokens = model.tokenize(batch)
        present = tokens.present  # [B, N, C]
        b, _, c = present.shape
        wl = tokens.wavelength_nm  # [B, C]
        valid_any = present.any(dim=1) & tokens.band_valid  # [B, C]
        enough = valid_any.sum(dim=1) >= 2
        for band in range(c):  # every band of every chip is hidden once
            target_band = torch.where(valid_any[:, band].cpu() & enough.cpu(), band, -1)
            masked = torch.zeros_like(present)
            masked[:, :, band] = present[:, :, band] & (target_band >= 0).to(present.device)[:, None]
            if not bool(masked.any()):
                continue
            enc = model.encode(tokens, masked)
            preds = model.decode(enc, tokens, masked).pixels
            slices = tokens.group_slices
            group_of = [gi for gi, (a, e) in enumerate(slices) for _ in range(a, e)]
            for gi, ((a, e), pred, target, pv) in enumerate(
                zip(slices, preds, tokens.pixel_patches, tokens.pixel_patch_valid)
            ):
                w = masked[:, :, a:e]
                if not bool(w.any()):
                    continue
                l_model, cnt = normalized_patch_mse(pred.float(), target, pv, w, model.config.norm_pix_eps)
                l_mean, _ = normalized_patch_mse(
                    torch.zeros_like(target), target, pv, w, model.config.norm_pix_eps
                )
                sums["model"] += float(l_model)
                sums["band_mean"] += float(l_mean)
                n_tokens += float(cnt)
                gkey = f"{float(batch.groups[gi].gsd_m[0]):g}m"
                bg = by_gsd.setdefault(
                    gkey, {"model": 0.0, "band_mean": 0.0, "nearest_band_copy": 0.0, "tokens": 0.0}
                )
                bg["model"] += float(l_model)
                bg["band_mean"] += float(l_mean)
                bg["tokens"] += float(cnt)
                # nearest-wavelength visible band, copied
                ph, pw = tokens.plan.groups[gi].patch_hw
                for s in range(b):
                    t = int(target_band[s])
                    if t < a or t >= e:
                        continue
                    others = [
                        j
                        for j in range(c)
                        if j != t and bool(tokens.band_valid[s, j]) and bool(present[s, :, j].any())
                    ]
                    j = min(others, key=lambda k: abs(float(wl[s, k]) - float(wl[s, t])))
                    gj = group_of[j]
                    aj = slices[gj][0]
                    src = tokens.pixel_patches[gj][s, :, j - aj, :]  # [N, P']
                    qh, qw = tokens.plan.groups[gj].patch_hw
                    if (qh, qw) != (ph, pw):
                        src = F.interpolate(
                            src.reshape(-1, 1, qh, qw),
                            size=(ph, pw),
                            mode="bilinear",
                            align_corners=False,
                            antialias=(qh > ph or qw > pw),
                        ).reshape(-1, ph * pw)
                    mu = src.mean(dim=-1, keepdim=True)
                    sd = src.std(dim=-1, unbiased=False, keepdim=True)
                    copy = (src - mu) / torch.sqrt(sd**2 + model.config.norm_pix_eps)
                    l_copy, _ = normalized_patch_mse(
                        copy[None, :, None, :],
                        target[s : s + 1, :, t - a : t - a + 1, :],
                        pv[s : s + 1, :, t - a : t - a + 1, :],
                        w[s : s + 1, :, t - a : t - a + 1],
                        model.config.norm_pix_eps,
                    )
                    sums["nearest_band_copy"] += float(l_copy)
                    bg["nearest_band_copy"] += float(l_copy)
    if n_tokens == 0:
        raise ValueError(f"no maskable tokens in split {split!r}")
    per_gsd = {
        g: {k: (v / d["tokens"] if k != "tokens" else int(v)) for k, v in d.items()}
        for g, d in sorted(by_gsd.items())
        if d["tokens"] > 0
    }
    return {k: v / n_tokens for k, v in sums.items()} | {
        "tokens": int(n_tokens),
        "batches": n,
        "by_gsd": per_gsd,
    }


# ---------------------------------------------------------------------------------------------
# command line (torchrun-able)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m aom_model.train",
        description="AOM pretraining on cube stores (run under torchrun for several GPUs / nodes).",
    )
    p.add_argument("--cubes", nargs="+", help="cube store URLs (local paths or s3://...)")
    p.add_argument("--out", help="output URL: checkpoints, metrics, final model")
    p.add_argument("--config", default=None, help="model size: tiny | small | base")
    p.add_argument(
        "--config-json", default=None, help="a PretrainConfig as JSON (a path or inline); flags override"
    )
    p.add_argument(
        "--resume", action="store_true", default=None, help="continue from out/checkpoints/latest.json"
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
        help="fsspec options as JSON (never logged); or $AOM_STORAGE_OPTIONS",
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
    ):
        if getattr(args, flag) is not None:
            chips[key] = getattr(args, flag)
    base["chips"] = chips
    so_text = args.storage_options or os.environ.get("AOM_STORAGE_OPTIONS")
    if so_text:
        base["storage_options"] = json.loads(so_text)
    if not base.get("cubes") or not base.get("out"):
        raise SystemExit("--cubes and --out are required (directly or in --config-json)")
    return PretrainConfig.from_dict(base)


def pretrain_torchrun_command(cfg: PretrainConfig, nproc_per_node: int, **rendezvous: Any) -> list[str]:
    """torchrun command line running ``cfg`` (``rendezvous``: nnodes, node_rank, rdzv_endpoint, rdzv_id).
    Storage options are not put on the command line (they may carry credentials): pass them via the
    environment (AWS_* etc.)."""
    return torchrun_command(["--config-json", json.dumps(cfg.to_dict())], nproc_per_node, **rendezvous)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(build_parser().parse_args(argv))
    result = run_pretraining(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in result.to_dict().items() if k != "norm_stats"}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
