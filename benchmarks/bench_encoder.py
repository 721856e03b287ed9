"""Encoder inference benchmark: AOM ``joint`` / ``factorized`` vs a plain ViT of the same width,
depth and patch size (built from the same blocks), at 224 x 224 px and 4 / 6 / 12 bands.

Prints human-readable lines, then ONE JSON object on the last line. CPU defaults finish in a few
minutes on 2 cores:

    .venv/bin/python benchmarks/bench_encoder.py                 # size small, 2 threads
    .venv/bin/python benchmarks/bench_encoder.py --size base --batch 4 --joint-batch 1

Throughput is samples/s of ``forward_features`` (tokenizer included) for AOM and of the ViT
forward, measured round-robin in one process with the same thread count; each config keeps its
best round (robust to other processes sharing the cores). Peak memory is the peak-RSS increase
of one forward, measured in a fresh subprocess per config. FLOPs per sample come from
``torch.utils.flop_counter`` (with a formula for the CPU flash-attention op, which it lacks).

Two further keys, always measured (``--only-keys`` measures just these):

* ``factorized_vs_vit_12_cpu``: throughput of the factorized encoder over the plain ViT at 12 bands
  by **CPU time** (``time.process_time``), one thread, interleaved rounds (ViT, factorized, ViT, ...),
  total CPU seconds of each over all rounds; robust to other processes on the machine, unlike wall
  clock.
* ``masked_flops_vs_unmasked``: FLOPs of a pretraining encoder forward (tokenizer + encoder) at
  mask ratio 0.75 with the config's channel-wise mask, over an unmasked forward, 12 bands
  (``torch.utils.flop_counter``); ``masked_pretrain_flops_vs_unmasked`` adds the decoder to both.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aom_model import AOM, AOMConfig, BandBatch, PlainViT, channel_mask
from aom_model.masking import mask_stats
from pipelines.registry import load_registry

# Sentinel-2 MSI from the sensor registry: 12 bands (no cirrus band), the first N used
S2_BANDS = load_registry(use_env=False).sensor("sentinel-2-msi").bands
MODELS = ("vit", "factorized", "joint")


def _register_cpu_sdpa_flops() -> None:
    """flop_counter has no formula for the CPU flash-attention kernel; add the standard one."""
    from torch.utils.flop_counter import flop_registry, register_flop_formula, sdpa_flop_count

    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if op in flop_registry:
        return

    @register_flop_formula(op, get_raw=True)
    def _cpu_flash_flops(query: Any, key: Any, value: Any, *args: Any, out_val: Any = None, **kw: Any) -> int:
        return int(sdpa_flop_count(query.shape, key.shape, value.shape))


def build(
    name: str, cfg: AOMConfig, bands: int, batch: int, img: int, gsd: float, patch: int
) -> Callable[[], Any]:
    """A zero-arg callable running one inference forward of ``name`` on a fixed random batch."""
    gen = torch.Generator().manual_seed(bands)
    x = torch.randn(batch, bands, img, img, generator=gen)
    if name == "vit":
        vit = PlainViT.from_config(cfg, bands, patch).eval()
        return lambda: vit(x)
    model = AOM(cfg.replace(layout=name)).eval()
    wl = [b.center_wavelength_nm for b in S2_BANDS[:bands]]
    fw = [b.fwhm_nm for b in S2_BANDS[:bands]]
    bb = BandBatch.from_tensor(x, wl, fw, gsd)
    return lambda: model.forward_features(bb)


def flops_per_sample(fn: Callable[[], Any]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def matmul_flops_per_s(n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(reps))
    return 2.0 * n**3 / best


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def memory_worker(args: argparse.Namespace) -> None:
    """Subprocess: peak-RSS increase (MB) of one inference forward of one config."""
    torch.set_num_threads(args.threads)
    cfg = AOMConfig.named(args.size)
    batch = args.joint_batch if args.worker_model == "joint" else args.batch
    with torch.inference_mode():
        fn = build(args.worker_model, cfg, args.worker_bands, batch, args.img, args.gsd, args.patch)
        gc.collect()
        try:  # reset the kernel's peak-RSS mark (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        base = _rss_bytes()
        fn()
        peak = _peak_rss_bytes()
    print(json.dumps({"peak_mb": max(0.0, (peak - base) / 2**20), "batch": batch}))


def masked_flops(cfg: AOMConfig, img: int, gsd: float, bands: int = 12) -> dict[str, float]:
    """FLOPs of a masked pretraining forward over an unmasked one (encoder; encoder + decoder)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = AOM(cfg).eval()
    x = torch.randn(1, bands, img, img, generator=torch.Generator().manual_seed(0))
    wl = [b.center_wavelength_nm for b in S2_BANDS[:bands]]
    fw = [b.fwhm_nm for b in S2_BANDS[:bands]]
    bb = BandBatch.from_tensor(x, wl, fw, gsd)
    tok = model.tokenize(bb)
    masked = channel_mask(tok.present, cfg.mask_ratio, cfg.band_mask_share, torch.Generator().manual_seed(0))
    none = torch.zeros_like(masked)

    def count(fn: Callable[[], Any]) -> float:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            fn()
        return float(fc.get_total_flops())

    enc_full = count(lambda: model.encode(model.tokenize(bb)))
    enc_masked = count(lambda: model.encode(model.tokenize(bb), masked))
    pre_full = count(lambda: model.decode(model.encode(model.tokenize(bb), none), tok, none))
    pre_masked = count(lambda: model.decode(model.encode(model.tokenize(bb), masked), tok, masked))
    st = mask_stats(tok.present, masked)
    return {
        "masked_flops_vs_unmasked": round(enc_masked / enc_full, 3),
        "masked_pretrain_flops_vs_unmasked": round(pre_masked / pre_full, 3),
        "mask_ratio": round(st.mask_ratio, 3),
        "mask_band_share": round(st.band_share, 3),
        "mask_empty_position_share": round(st.empty_position_share, 3),
        "encoder_gflops_unmasked": round(enc_full / 1e9, 3),
        "encoder_gflops_masked": round(enc_masked / 1e9, 3),
    }


def cpu_time_ratio(
    cfg: AOMConfig, batch: int, img: int, gsd: float, patch: int, rounds: int, bands: int = 12
) -> dict[str, Any]:
    """Factorized over plain-ViT throughput by CPU time, one thread, interleaved rounds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            fns = {m: build(m, cfg, bands, batch, img, gsd, patch) for m in ("vit", "factorized")}
            for fn in fns.values():
                fn()  # warm-up
            cpu: dict[str, list[float]] = {m: [] for m in fns}
            for _ in range(rounds):
                for m, fn in fns.items():
                    t0 = time.process_time()
                    fn()
                    cpu[m].append(time.process_time() - t0)
    finally:
        torch.set_num_threads(threads)
    total = {m: sum(v) for m, v in cpu.items()}
    return {
        "factorized_vs_vit_12_cpu": round(total["vit"] / total["factorized"], 3),
        "cpu_s_per_sample_12": {m: round(t / (rounds * batch), 3) for m, t in total.items()},
        "cpu_paired_median_12": round(
            statistics.median(v / f for v, f in zip(cpu["vit"], cpu["factorized"])), 3
        ),
        "cpu_rounds": rounds,
        "cpu_batch": batch,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="small", choices=["tiny", "small", "base"])
    p.add_argument("--bands", default="4,6,12")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batch", type=int, default=4, help="batch for vit / factorized")
    p.add_argument("--joint-batch", type=int, default=1, help="batch for joint (~C^2 costlier)")
    p.add_argument("--rounds", type=int, default=3, help="timed round-robin rounds (after one warm-up)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--gsd", type=float, default=10.0)
    p.add_argument("--patch", type=int, default=16, help="ViT patch size (AOM gets token_ground_m/gsd)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-config memory subprocesses")
    p.add_argument("--cpu-rounds", type=int, default=5, help="interleaved rounds of the CPU-time ratio")
    p.add_argument(
        "--only-keys",
        action="store_true",
        help="measure only factorized_vs_vit_12_cpu and masked_flops_vs_unmasked (skip the wall-clock table)",
    )
    p.add_argument("--worker-model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-bands", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker_model:
        memory_worker(args)
        return

    torch.set_num_threads(args.threads)
    _register_cpu_sdpa_flops()
    cfg = AOMConfig.named(args.size, token_ground_m=args.patch * args.gsd)
    keys = masked_flops(cfg, args.img, args.gsd)
    print(
        f"masked pretraining forward (ratio {keys['mask_ratio']}, whole-band share {keys['mask_band_share']}, "
        f"positions without a visible band {keys['mask_empty_position_share']}): encoder FLOPs "
        f"{keys['masked_flops_vs_unmasked']}x unmasked, with the decoder {keys['masked_pretrain_flops_vs_unmasked']}x"
    )
    keys |= cpu_time_ratio(cfg, args.batch, args.img, args.gsd, args.patch, args.cpu_rounds)
    print(
        f"CPU time, 1 thread, {args.cpu_rounds} interleaved rounds, 12 bands: factorized / ViT throughput "
        f"{keys['factorized_vs_vit_12_cpu']} (CPU s per sample {keys['cpu_s_per_sample_12']})"
    )
    head = {"benchmark": "bench_encoder", "device": "cpu", "torch": torch.__version__, "size": args.size}
    if args.only_keys:
        print(json.dumps(head | keys | {"goal_factorized_vs_vit_12_cpu": 0.9, "goal_masked_flops": 0.45}))
        return
    bands = [int(b) for b in args.bands.split(",")]
    models = [m for m in args.models.split(",") if m]
    print(
        f"AOM encoder benchmark: size={args.size} (D={cfg.embed_dim}, depth={cfg.depth}, heads={cfg.num_heads}, "
        f"spectral_dim={cfg.spectral_dim}, spectral_every={cfg.spectral_every}), {args.img}x{args.img} px, "
        f"patch {args.patch}, threads={torch.get_num_threads()}, torch {torch.__version__}"
    )
    mm = matmul_flops_per_s()
    print(f"matmul 2048^3 fp32: {mm / 1e9:.1f} GFLOP/s")

    fns: dict[tuple[str, int], Callable[[], Any]] = {}
    batch_of: dict[str, int] = {m: (args.joint_batch if m == "joint" else args.batch) for m in models}
    flops: dict[str, dict[str, float]] = {m: {} for m in models}
    times: dict[tuple[str, int], list[float]] = {}
    with torch.inference_mode():
        for c in bands:
            for m in models:
                flops[m][str(c)] = flops_per_sample(build(m, cfg, c, 1, args.img, args.gsd, args.patch))
                fns[(m, c)] = build(m, cfg, c, batch_of[m], args.img, args.gsd, args.patch)
                fns[(m, c)]()  # warm-up
                times[(m, c)] = []
        for r in range(args.rounds):
            for c in bands:
                for m in models:
                    times[(m, c)].append(_timed(fns[(m, c)]))
            print(f"round {r + 1}/{args.rounds} done")

    # paired ratios: the models ran back to back in each round, under the same contention
    paired: dict[str, dict[str, float]] = {}
    if "vit" in models:
        for m in models:
            if m == "vit":
                continue
            paired[m] = {
                str(c): round(
                    statistics.median(
                        (batch_of[m] / tm) / (batch_of["vit"] / tv)
                        for tm, tv in zip(times[(m, c)], times[("vit", c)])
                    ),
                    3,
                )
                for c in bands
            }
    thr: dict[str, dict[str, float]] = {m: {} for m in models}
    thr_median: dict[str, dict[str, float]] = {m: {} for m in models}
    for (m, c), ts in times.items():
        thr[m][str(c)] = batch_of[m] / min(ts)
        thr_median[m][str(c)] = batch_of[m] / statistics.median(ts)

    mem: dict[str, dict[str, float]] = {m: {} for m in models}
    if not args.no_memory:
        for c in bands:
            for m in models:
                cmd = [sys.executable, __file__, "--worker-model", m, "--worker-bands", str(c)]
                cmd += [
                    "--size",
                    args.size,
                    "--batch",
                    str(args.batch),
                    "--joint-batch",
                    str(args.joint_batch),
                ]
                cmd += ["--threads", str(args.threads), "--img", str(args.img), "--gsd", str(args.gsd)]
                cmd += ["--patch", str(args.patch)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                mem[m][str(c)] = round(json.loads(out.strip().splitlines()[-1])["peak_mb"], 1)

    achieved = {m: {c: flops[m][c] * thr[m][c] for c in thr[m]} for m in models}
    for c in bands:
        for m in models:
            k = str(c)
            print(
                f"{m:>10} {c:>2} bands: {thr[m][k]:7.2f} samples/s (median {thr_median[m][k]:.2f}), "
                f"{flops[m][k] / 1e9:7.2f} GFLOP/sample, {achieved[m][k] / 1e9:6.1f} GFLOP/s "
                f"({achieved[m][k] / mm:.0%} of matmul), peak {mem[m].get(k, float('nan')):.0f} MB "
                f"(batch {batch_of[m]})"
            )

    def ratio(a: str, b: str) -> dict[str, float]:
        if a not in thr or b not in thr:
            return {}
        return {k: round(thr[a][k] / thr[b][k], 3) for k in thr[a]}

    fv = ratio("factorized", "vit")
    result = {
        "benchmark": "bench_encoder",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "size": args.size,
        "embed_dim": cfg.embed_dim,
        "depth": cfg.depth,
        "num_heads": cfg.num_heads,
        "spectral_dim": cfg.spectral_dim,
        "spectral_every": cfg.spectral_every,
        "img_px": args.img,
        "patch_px": args.patch,
        "tokens_per_band": (args.img // args.patch) ** 2,
        "batch": batch_of,
        "rounds": args.rounds,
        "throughput_samples_per_s": {m: {k: round(v, 3) for k, v in d.items()} for m, d in thr.items()},
        "throughput_median_samples_per_s": {
            m: {k: round(v, 3) for k, v in d.items()} for m, d in thr_median.items()
        },
        "peak_mem_mb": mem,
        "gflops_per_sample": {m: {k: round(v / 1e9, 3) for k, v in d.items()} for m, d in flops.items()},
        "achieved_gflops_per_s": {
            m: {k: round(v / 1e9, 2) for k, v in d.items()} for m, d in achieved.items()
        },
        "matmul_gflops_per_s": round(mm / 1e9, 2),
        "achieved_vs_matmul": {m: {k: round(v / mm, 3) for k, v in d.items()} for m, d in achieved.items()},
        "factorized_vs_vit": fv,
        "joint_vs_vit": ratio("joint", "vit"),
        "paired_median_vs_vit": paired,
        "flops_factorized_vs_vit_12": round(flops["factorized"]["12"] / flops["vit"]["12"], 3)
        if "factorized" in flops and "vit" in flops and "12" in flops["vit"]
        else None,
        "factorized_vs_vit_12": fv.get("12"),
        "goal_factorized_vs_vit_12": 0.67,
        "goal_factorized_vs_vit_12_cpu": 0.9,
        "goal_masked_flops": 0.45,
    } | keys
    print(json.dumps(result))


if __name__ == "__main__":
    main()
