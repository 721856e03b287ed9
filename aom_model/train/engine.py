"""Pretraining engine: ``run_pretraining(PretrainConfig, opener) -> PretrainResult``.

``opener`` opens a cube store as a :class:`~aom_model.train.cube_reader.CubeReader`; the runnable
composition is :mod:`pipelines.pretrain` (``python -m pipelines.pretrain``, what ``torchrun`` launches),
which passes ``pipelines.cubes.CubeStore.open``.

Runs alone or under ``torchrun`` (NCCL on GPU, gloo on CPU; see ``aom_model.train.distributed``):
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

import io
import logging
import math
import posixpath
import random
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from aom_model.checkpoint import load_checkpoint, save_checkpoint
from aom_model.config import AOMConfig
from aom_model.model import AOM
from aom_model.tokenizer import finest_gsd
from aom_model.train.chips import ChipIndex
from aom_model.train.config import NonFiniteLossError, PretrainConfig, PretrainResult
from aom_model.train.cube_reader import StoreOpener
from aom_model.train.distributed import (
    DistEnv,
    all_reduce_,
    average_gradients,
    barrier,
    broadcast_parameters,
    init_distributed,
    shutdown,
)
from aom_model.train.loader import ChipBatchDataset, TrainBatch, make_loader
from aom_model.train.metrics import MetricsLog, write_loss_curve
from aom_model.train.norm import NormStats, compute_norm_stats
from aom_model.train.resume import check_resume_changes, check_start, find_resume_point
from aom_model.train.schedule import WarmupCosine
from pipelines.errors import InputError
from pipelines.storage import (
    exists,
    filesystem,
    is_local,
    join,
    normalise_url,
    read_json,
    redact_record,
    redact_url,
    write_bytes_atomic,
    write_json_atomic,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# helpers


def _seed_for(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


MIN_TOKEN_PX = 2.0
"""A drawn token covers at least this many pixels of the batch's finest band group: a one-pixel
token's per-patch-normalised target is 0, so it teaches no reconstruction."""


def token_m_for_step(seed: int, step: int, config: AOMConfig, finest_gsd_m: float | None = None) -> float:
    """The token size (m) of one optimiser step: log-uniform over ``config.token_m_range``, a pure
    function of (seed, step), the same on every rank and for every micro-batch of the step, so a
    resumed run draws the same sizes. A fixed-size config gives ``token_ground_m``.

    ``finest_gsd_m`` (the finest GSD of a micro-batch's band groups): the lower end is raised to
    :data:`MIN_TOKEN_PX` pixels of it (at most the upper end), with the same uniform draw, so 60 m
    data draws from 120 m up instead of wasting the draws below (~40 % of 40-320 m); 10 m data is
    unchanged. Still a pure function of (seed, step, the batch's GSDs)."""
    lo, hi = config.token_m_range
    if hi <= lo:
        return lo
    if finest_gsd_m is not None:
        lo = min(hi, max(lo, MIN_TOKEN_PX * float(finest_gsd_m)))
        if hi <= lo:
            return hi
    u = float(np.random.default_rng([int(seed), int(step), 0x70CE]).random())
    return float(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))))


def _read_bytes(url: str, storage_options: Mapping[str, Any] | None) -> bytes:
    fs, path = filesystem(url, storage_options)
    with fs.open(path, "rb") as fh:
        data: bytes = fh.read()
    return data


def _trained_with(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The ``PretrainConfig.to_dict()`` a checkpoint was saved with (its ``extra.pretrain``)."""
    extra = meta.get("extra") or {}
    return dict(extra.get("pretrain") or {}) if isinstance(extra, Mapping) else {}


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


# heads that exist only while their loss term is on: a --init checkpoint may lack them (they start
# from their seeded init) or carry them (dropped when the term is off)
OPTIONAL_HEADS = ("decoder.pool_stats.",)


def load_init_weights(model: torch.nn.Module, state: Mapping[str, torch.Tensor], log_it: bool = True) -> None:
    """Copy ``state`` into ``model``: every tensor must match, except those of ``OPTIONAL_HEADS``."""
    res = model.load_state_dict(dict(state), strict=False)
    bad = [k for k in (*res.missing_keys, *res.unexpected_keys) if not k.startswith(OPTIONAL_HEADS)]
    if bad:
        raise RuntimeError(f"--init: the checkpoint's tensors do not fit the model: {', '.join(bad[:8])}")
    if log_it and res.missing_keys:
        log.info("--init: %d new head tensors start from their initialisation", len(res.missing_keys))
    if log_it and res.unexpected_keys:
        log.info("--init: %d tensors of heads not trained in this run dropped", len(res.unexpected_keys))


# ---------------------------------------------------------------------------------------------
# the engine


class Trainer:
    def __init__(self, cfg: PretrainConfig, env: DistEnv, opener: StoreOpener) -> None:
        self.cfg = cfg
        self.env = env
        self.opener = opener
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
        check_start(cfg)
        point = find_resume_point(self.ckpt_root, so) if cfg.resume else None
        resume_dir = point.dir if point is not None else None
        self.resume_changes: dict[str, list[Any]] = {}
        if point is not None:  # checked before the chip index is built: nothing done on refusal
            trained_with = _trained_with(point.model[3])
            self.resume_changes = check_resume_changes(trained_with, cfg, cfg.out)
            # a run started from --init trains with that checkpoint's config (+ --model-set), not
            # --config's: its model and overrides are compared above, its config is the checkpoint's
            if not trained_with.get("init") and point.model[1] != cfg.model_config():
                raise InputError(
                    f"--resume: the checkpoint in {redact_url(point.dir)} was trained with another model "
                    "config; use a new --out or the same --config"
                )
        self.index = ChipIndex.build(cfg.cubes, so, cfg.chips, opener=self.opener)
        init_stats: NormStats | None = None
        model_cfg = cfg.model_config()
        init_model: AOM | None = None
        if point is not None and resume_dir is not None:
            init_model, model_cfg, stats, _ = point.model
            init_stats = NormStats.from_dict(stats)
        elif cfg.init:
            init_model, model_cfg, stats, _ = load_checkpoint(_read_bytes(normalise_url(cfg.init), so))
            if model_cfg != cfg.model_config() and env.is_main:
                log.warning(
                    "--init: using the checkpoint's model config (it differs from --config %s)%s",
                    cfg.model,
                    ", with the --model-set overrides" if cfg.model_overrides else "",
                )
            if cfg.model_overrides:  # e.g. loss weights for a fine-tuning stage
                model_cfg = model_cfg.replace(**cfg.model_overrides)
            init_stats = NormStats.from_dict(stats) if stats else None
        # every rank computes the same statistics from the same seeded chips (no communication)
        self.norm = compute_norm_stats(self.index, cfg.seed, "train", known=init_stats)
        self.model_cfg = model_cfg
        torch.manual_seed(cfg.seed)
        model = AOM(model_cfg)
        if init_model is not None:
            load_init_weights(model, init_model.state_dict(), env.is_main)
        self.model = model.to(env.device)
        if cfg.activation_checkpointing:
            enable_activation_checkpointing(self.model)
        broadcast_parameters(self.model, env)
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, fused=False
        )
        self.schedule = WarmupCosine(cfg.lr, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
        self.dataset = ChipBatchDataset(self.index, self.norm, cfg.batch_size, cfg.seed, split="train")
        if point is not None and resume_dir is not None:
            self._load_trainer_state(resume_dir, point.trainer_state)
            self.started_from = resume_dir
            self.metrics.load(upto_step=self.step)
        elif env.is_main:
            self.metrics.records = []
        if env.is_main:
            record = cfg.record()
            if resume_dir is not None:
                record["resumes"] = self._resume_history(resume_dir)
            write_json_atomic(join(cfg.out, "pretrain_config.json"), record, so)
            write_json_atomic(join(cfg.out, "norm_stats.json"), self.norm.to_dict(), so)

    # -- checkpoints -----------------------------------------------------------------------------
    def _load_trainer_state(self, ckpt_dir: str, st: Mapping[str, Any]) -> None:
        so = self.cfg.storage_options
        self.optimizer.load_state_dict(st["optimizer"])
        self.schedule.load_state_dict(st["scheduler"])
        self.schedule.total_steps = self.cfg.max_steps
        if self.resume_changes:  # --resume-with-changes: the new values rule from this step on
            cfg = self.cfg
            self.schedule.base_lr, self.schedule.warmup_steps = cfg.lr, cfg.warmup_steps
            self.schedule.min_lr_ratio = cfg.min_lr_ratio
            for group in self.optimizer.param_groups:
                group["betas"] = cfg.betas
                if group.get("weight_decay"):
                    group["weight_decay"] = cfg.weight_decay
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

    def _resume_history(self, resume_dir: str) -> list[dict[str, Any]]:
        """Earlier resumes recorded in ``pretrain_config.json`` plus this one (step, checkpoint and
        the hyper-parameters it changed as ``[old, new]``)."""
        so = self.cfg.storage_options
        history: list[dict[str, Any]] = []
        url = join(self.cfg.out, "pretrain_config.json")
        try:
            history = list(read_json(url, so).get("resumes") or []) if exists(url, so) else []
        except Exception:  # an unreadable record: keep this resume at least
            history = []
        name = posixpath.basename(resume_dir.rstrip("/"))
        history.append({"step": self.step, "from": name, "changed": self.resume_changes})
        return history

    def save_checkpoint(self) -> str:
        cfg, env, so = self.cfg, self.env, self.cfg.storage_options
        name = f"step-{self.step:08d}"
        d = join(self.ckpt_root, name)
        write_bytes_atomic(join(d, f"rng-rank{env.rank}.pt"), _torch_bytes(_rng_state(env)), so)
        barrier(env)
        if env.is_main:
            meta = {"step": self.step, "epoch": self.epoch, "pretrain": cfg.record()}
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
        token_m = token_m_for_step(cfg.seed, self.step, self.model_cfg)
        used_tm: list[float] = []  # per micro-batch: the draw, raised to 2 px of its finest GSD
        # bad, n_ok, samples, skipped, loss, recon, align, n_align, stats, spectral, pool_stats
        acc = torch.zeros(11, dtype=torch.float64)
        for tb in micro:
            acc[3] += tb.skipped_chips
            if tb.raw_native is None:
                self.counters["empty_micro_batches"] += 1
                continue
            gen = torch.Generator().manual_seed(_seed_for(cfg.seed, self.epoch, tb.index))
            native, coarse = tb.to(env.device)  # stored pixels, normalised on the device
            assert native is not None
            with self._autocast():
                used_tm.append(token_m_for_step(cfg.seed, self.step, self.model_cfg, finest_gsd(native)))
                out = self.model.pretrain_step(native, coarse, gen, used_tm[-1])
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
            acc[9] += vals.get("spectral", 0.0)
            acc[10] += vals.get("pool_stats", 0.0)
            if "align" in vals:
                acc[6] += vals["align"]
                acc[7] += 1
        all_reduce_(acc, env)
        bad, n_ok, samples, skipped = (int(acc[i]) for i in range(4))
        self.counters["chips_skipped"] += skipped
        if used_tm:
            token_m = sum(used_tm) / len(used_tm)
        rec: dict[str, Any] = {"lr": lr, "samples": samples, "token_m": token_m}
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
        if self.model_cfg.spectral_consistency_weight > 0:
            rec["spectral"] = float(acc[9] / n_ok)
        if self.model_cfg.pooled_stats_weight > 0:
            rec["pool_stats"] = float(acc[10] / n_ok)
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
                        for key in ("loss", "recon", "stats", "align", "spectral"):
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
                meta = {"step": self.step, "epoch": self.epoch, "pretrain": cfg.record()}
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
            write_json_atomic(join(cfg.out, "result.json"), redact_record(result.to_dict()), so)
        barrier(env)
        return result


def run_pretraining(cfg: PretrainConfig, opener: StoreOpener) -> PretrainResult:
    """Train (or resume / fine-tune) per ``cfg`` on the cube stores ``opener`` opens (``cfg.cubes``
    with ``cfg.storage_options``); under torchrun every rank calls this."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    env = init_distributed(cfg.device)
    try:
        trainer = Trainer(cfg, env, opener)
        trainer.setup()
        return trainer.fit()
    finally:
        shutdown(env)
