"""Helper of ``benchmarks/gpu_check.sh``: the parts of the GPU check that are Python.

    python benchmarks/gpu_check.py peak                       # bf16 dense peak of this GPU (TFLOP/s)
    python benchmarks/gpu_check.py train [--device cuda] [--config base] [--steps 100] [--cubes URL]
    python benchmarks/gpu_check.py embed-cluster --work DIR   # `aom embed` on a LocalCUDACluster
    python benchmarks/gpu_check.py merge A.json B.json ...    # one JSON line from the parts

``train``: ``--steps`` optimiser steps of ``--config`` with bf16 autocast (on CUDA), fed by the shard-level
chip loader (``make_loader``, ``--workers`` processes, pixels normalised on the device); reports the
median step time, samples/s, MFU = counted FLOPs per step (``torch.utils.flop_counter``) / step time /
the card's bf16 peak, and peak memory. ``--device cpu`` runs the same code on the CPU (the unit test).
Each subcommand prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# dense bf16 tensor-core peaks (TFLOP/s, without sparsity) from the vendors' data sheets
BF16_PEAK_TFLOPS = {
    "H100 SXM": 989.4,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.4,
    "H200": 989.4,
    "GH200": 989.4,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
}


def bf16_peak_tflops(name: str) -> float | None:
    """The dense bf16 peak of a GPU from its name (``torch.cuda.get_device_name``), None if unknown."""
    up = name.upper()
    for key in sorted(BF16_PEAK_TFLOPS, key=len, reverse=True):
        parts = key.upper().split()
        if all(p in up for p in parts):
            if key == "H100" and "PCIE" in up:
                continue
            return BF16_PEAK_TFLOPS[key]
    return None


def cmd_peak(_: argparse.Namespace) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"gpu": None, "bf16_peak_tflops": None}
    name = torch.cuda.get_device_name(0)
    return {"gpu": name, "bf16_peak_tflops": bf16_peak_tflops(name)}


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from aom_model.config import AOMConfig
    from aom_model.model import AOM
    from aom_model.train import ChipBatchDataset, ChipConfig, ChipIndex, compute_norm_stats, make_loader
    from pipelines.pretrain import OPENER

    dev = torch.device(args.device)
    cubes = args.cubes
    if not cubes:
        from bench_embed import make_block_cubes

        cubes = str(make_block_cubes(Path(args.work), args.acquisitions, 1)[0])
    index = ChipIndex.build([cubes], chip=ChipConfig(chip_m=args.chip_m), opener=OPENER)
    norm = compute_norm_stats(index, seed=0)
    ds = ChipBatchDataset(index, norm, args.batch_size, seed=0)
    torch.manual_seed(0)
    model = AOM(AOMConfig.named(args.config)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = dev.type == "cuda"
    gen = torch.Generator().manual_seed(0)

    def batches() -> Any:
        epoch = 0
        while True:
            ds.set_epoch(epoch)
            yield from make_loader(ds, num_workers=args.workers)
            epoch += 1

    def step(tb: Any) -> int:
        native, coarse = tb.to(dev)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
            loss = model.pretrain_step(native, coarse, gen)["loss"]
        loss.backward()
        opt.step()
        return int(tb.size)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    it = batches()
    first = next(it)
    fc = FlopCounterMode(display=False)
    with fc:
        step(first)
    flops_first = fc.get_total_flops() / max(1, first.size)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, samples, wait = [], 0, 0.0
    sync()
    for _ in range(args.steps):
        t0 = time.perf_counter()
        tb = next(it)
        t1 = time.perf_counter()
        samples += step(tb)
        sync()
        times.append(time.perf_counter() - t0)
        wait += t1 - t0
    step_s = statistics.median(times)
    total = sum(times)
    peak = args.peak_tflops
    if peak is None and dev.type == "cuda":
        peak = bf16_peak_tflops(torch.cuda.get_device_name(dev))
    achieved = flops_first * args.batch_size / step_s
    return {
        "part": "train",
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "config": args.config,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "loader_workers": args.workers,
        "step_s_median": round(step_s, 4),
        "samples_per_s": round(samples / total, 1),
        "loader_wait_fraction": round(wait / total, 3),
        "flops_per_sample_fwd_bwd": round(flops_first),
        "achieved_tflops": round(achieved / 1e12, 2),
        "bf16_peak_tflops": peak,
        "mfu": None if not peak else round(achieved / (peak * 1e12), 6),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
        if dev.type == "cuda"
        else None,
    }


def cmd_embed_cluster(args: argparse.Namespace) -> dict[str, Any]:
    """``aom embed`` on a LocalCUDACluster (GPU workers advertise ``GPU=1``, embed tasks annotated)."""
    from bench_embed import block_tiles, make_block_cubes, make_checkpoint

    work = Path(args.work)
    cubes, _ = make_block_cubes(work, 2, 1)
    ckpt = make_checkpoint(work / f"{args.config}.safetensors", args.config)
    try:
        from dask_cuda import LocalCUDACluster

        cluster = LocalCUDACluster(n_workers=1, threads_per_worker=2, resources={"GPU": 1})
        kind = "LocalCUDACluster"
    except ImportError:  # dask-cuda absent: a LocalCluster whose worker advertises the GPU resource
        from distributed import LocalCluster

        cluster = LocalCluster(n_workers=1, threads_per_worker=2, resources={"GPU": 1}, processes=True)
        kind = "LocalCluster (dask-cuda not installed)"
    out = work / "embed-out"
    summary = work / "embed-summary.json"
    cmd = [
        str(Path(sys.executable).parent / "aom"), "embed",
        "--cubes", str(cubes), "--checkpoint", str(ckpt), "--out", str(out),
        "--datetime", "2023-06-01/2023-06-30", "--tiles", block_tiles(1)[0],
        "--dask-address", cluster.scheduler_address, "--gpu-resource", "auto",
        "--device", args.device, "--precision", args.precision, "--no-progress",
        "--summary-json", str(summary),
    ]  # fmt: skip
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
    wall = time.perf_counter() - t0
    cluster.close()
    res: dict[str, Any] = {"part": "embed", "cluster": kind, "rc": r.returncode, "wall_s": round(wall, 1)}
    if r.returncode != 0:
        res["stderr_tail"] = r.stderr[-800:]
    elif summary.exists():
        s = json.loads(summary.read_text())
        res["summary"] = {k: v for k, v in s.items() if isinstance(v, (int, float, str, bool))}
    return res


def cmd_merge(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"check": "gpu_check"}
    for p in args.parts:
        path = Path(p)
        if not path.exists():
            out[path.stem] = {"missing": True}
            continue
        lines = [ln for ln in path.read_text().splitlines() if ln.strip().startswith("{")]
        try:
            out[path.stem] = json.loads(lines[-1]) if lines else {"no_json": True}
        except json.JSONDecodeError:
            out[path.stem] = {"bad_json": lines[-1][:200]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("peak")
    t = sub.add_parser("train")
    t.add_argument("--device", default="cuda")
    t.add_argument("--config", default="base")
    t.add_argument("--steps", type=int, default=100)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--workers", type=int, default=4)
    t.add_argument("--chip-m", type=float, default=480.0)
    t.add_argument("--acquisitions", type=int, default=3)
    t.add_argument("--cubes", default=None)
    t.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "aom-gpu-check"))
    t.add_argument("--peak-tflops", type=float, default=None)
    e = sub.add_parser("embed-cluster")
    e.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "aom-gpu-check"))
    e.add_argument("--config", default="tiny")
    e.add_argument("--device", default="cuda")
    e.add_argument("--precision", default="bf16")
    e.add_argument("--timeout", type=int, default=180)
    m = sub.add_parser("merge")
    m.add_argument("parts", nargs="*")
    args = ap.parse_args(argv)
    fn = {"peak": cmd_peak, "train": cmd_train, "embed-cluster": cmd_embed_cluster, "merge": cmd_merge}[
        args.cmd
    ]
    print(json.dumps(fn(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
