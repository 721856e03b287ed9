"""Pretraining throughput: loader chips/s per core vs the model's step rate, and H100 loader sizing.

    .venv/bin/python benchmarks/bench_pretrain.py [--cubes URL ...] [--batches 12] [--batch-size 16]

Measures, on this machine:
  * loader: chips/s of ``ChipBatchDataset`` in one process with one thread (= per core), reading a
    local cube store (a seeded synthetic store is written to a temp dir unless ``--cubes`` is given);
    each chip includes its coarse view (a partner chip read or an area average);
  * model: ``tiny`` optimiser steps/s on CPU (one thread) on those batches;
  * FLOPs of one ``base`` pretraining step (forward + backward) counted with
    ``torch.utils.flop_counter.FlopCounterMode`` on a real batch, and from them the samples/s one
    H100 would sustain at an assumed achieved throughput (default 400 TFLOP/s bf16), hence how many
    loader cores feed it.
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aom_model.config import AOMConfig
from aom_model.model import AOM
from aom_model.train import ChipBatchDataset, ChipConfig, ChipIndex, compute_norm_stats
from pipelines.pretrain import OPENER
from pipelines.testing import write_synthetic_cubes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cubes", nargs="*", default=None)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--chip-m", type=float, default=480.0)
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--flops-batch", type=int, default=8)
    p.add_argument("--h100-tflops", type=float, default=400.0)
    args = p.parse_args()
    torch.set_num_threads(1)
    tmp = None
    cubes = args.cubes
    if not cubes:
        tmp = tempfile.TemporaryDirectory(prefix="aom-bench-")
        root = Path(tmp.name) / "cubes"
        write_synthetic_cubes(root, seed=0, n_tiles=4, tile_m=1920, n_times=4)
        cubes = [str(root)]
    chips = ChipConfig(chip_m=args.chip_m)
    t = time.perf_counter()
    index = ChipIndex.build(cubes, chip=chips, opener=OPENER)
    index_s = time.perf_counter() - t
    norm = compute_norm_stats(index, seed=0)
    ds = ChipBatchDataset(index, norm, args.batch_size, seed=0)
    n = min(args.batches, len(ds))
    ds[0]  # open handles (steady state)
    t = time.perf_counter()
    batches = [ds[i % len(ds)] for i in range(1, n + 1)]
    load_s = time.perf_counter() - t
    n_chips = sum(b.size for b in batches)
    loader_cps = n_chips / load_s

    # tiny: optimiser steps on CPU
    torch.manual_seed(0)
    tiny = AOM(AOMConfig.named("tiny"))
    opt = torch.optim.AdamW(tiny.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def step(model: AOM, b) -> None:  # type: ignore[no-untyped-def]
        opt.zero_grad(set_to_none=True)
        model.pretrain_step(b.native, b.coarse, gen)["loss"].backward()
        opt.step()

    step(tiny, batches[0])
    t = time.perf_counter()
    for i in range(args.train_steps):
        step(tiny, batches[i % len(batches)])
    tiny_s = (time.perf_counter() - t) / args.train_steps

    # base: FLOPs of one forward + backward (per layout, averaged over the measured batches' mix)
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    base = AOM(AOMConfig.named("base"))
    flops_per_sample = []
    seen = set()
    for b in batches:
        if b.native is None:
            continue
        key = tuple(tuple(g.pixels.shape[1:]) for g in b.native.groups)
        if key in seen:
            continue
        seen.add(key)
        nb = ChipBatchDataset(index, norm, args.flops_batch, seed=0)
        sub = next(x for x in (nb[i] for i in range(len(nb))) if x.native is not None)
        assert sub.native is not None
        fc = FlopCounterMode(display=False)
        t = time.perf_counter()
        with fc:
            base.pretrain_step(sub.native, sub.coarse, torch.Generator().manual_seed(0))["loss"].backward()
        base_cpu_s = time.perf_counter() - t
        flops_per_sample.append(fc.get_total_flops() / sub.size)
        break  # one representative layout keeps the benchmark short on CPU
    fps = sum(flops_per_sample) / len(flops_per_sample)
    h100_sps = args.h100_tflops * 1e12 / fps
    result = {
        "benchmark": "bench_pretrain",
        "machine": f"{platform.machine()} {os.cpu_count()} logical CPUs (shared), torch {torch.__version__}",
        "gpu": "none lent to this session: GPU figures are projections from counted FLOPs",
        "cubes": "synthetic local store (4 tiles x 1920 m, S2 10/20/60 m + Landsat 30 m, 4 times)"
        if tmp
        else cubes,
        "chip_m": args.chip_m,
        "batch_size": args.batch_size,
        "index_build_s": round(index_s, 2),
        "chips_valid": index.counts.chips_valid,
        "loader_chips_per_s_per_core": round(loader_cps, 1),
        "tiny_cpu_step_s": round(tiny_s, 4),
        "tiny_cpu_samples_per_s_1thread": round(args.batch_size / tiny_s, 1),
        "loader_cores_per_tiny_cpu_thread": round(args.batch_size / tiny_s / loader_cps, 2),
        "base_flops_per_sample_fwd_bwd": round(fps),
        "base_gflops_per_step": round(fps * args.batch_size / 1e9, 2),
        "base_cpu_fwd_bwd_s_batch": round(base_cpu_s, 2),
        "h100_assumed_tflops": args.h100_tflops,
        "h100_base_bf16_samples_per_s": round(h100_sps, 1),
        "loader_cores_per_h100_base": round(h100_sps / loader_cps, 1),
    }
    if tmp is not None:
        tmp.cleanup()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
