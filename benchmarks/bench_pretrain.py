"""Pretraining data path: chip loader rate per core (CPU time) against the decode floor, and the cores
one H100 needs for ``base``.

    nice -n 10 .venv/bin/python benchmarks/bench_pretrain.py [--tiles 1] [--acquisitions 3] [--batches 40]

Same run, one process, one thread (CPU time = per core):
  * store: written by ``aom cubes``' own code (``write_cubes`` over synthetic Sentinel-2 items: 12 bands
    at 10/20/60 m, 7680 m tiles, the production chunk/shard layout), cached under ``--work``;
  * loader: ``make_loader`` (0 workers) over the first ``--batches`` micro-batches of an epoch with
    default channel sampling and coarse view, best of ``--repeats`` passes (each with a fresh dataset:
    groups opened, shards read and decoded again; the floor is best of 3 too, and a training loader
    runs in this steady state; the first pass is reported as well): chips per CPU-second, pixels handed over as int16
    (normalised on the device in training); also with the normalisation done on the CPU
    (``TrainBatch.native``/``coarse``), and the former per-chip xarray path (``read_window`` per group)
    on a sample of the same chips, for reference;
  * floor (:mod:`decode_floor`): reading exactly the shards the loader touched, decompressing exactly
    the chunks it decoded with blosc directly, converting only the pixels delivered;
    ``loader_vs_floor`` = floor CPU-s / loader CPU-s for the same chips (1.0 = at the floor);
  * ``base``: FLOPs of one pretraining forward + backward per sample (``torch.utils.flop_counter``
    on one delivered batch), the samples/s one H100 sustains at ``--h100-tflops`` achieved bf16
    (default 400 = ~40 % of the 989 TFLOP/s dense bf16 peak of an H100 SXM) and hence the loader
    cores it needs at the measured per-core rate.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_embed import make_block_cubes  # noqa: E402
from decode_floor import collect_chunks, floor_cpu_s  # noqa: E402

from aom_model.config import AOMConfig  # noqa: E402
from aom_model.model import AOM  # noqa: E402
from aom_model.train import ChipBatchDataset, ChipConfig, ChipIndex, compute_norm_stats, make_loader  # noqa: E402
from pipelines.pretrain import OPENER  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "aom-bench-embed"))
    p.add_argument("--tiles", type=int, default=1, help="tiles per side of the block (1 -> 1 tile)")
    p.add_argument("--acquisitions", type=int, default=3)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--chip-m", type=float, default=480.0)
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="loader passes (fresh dataset each); best CPU time, as the floor's",
    )
    p.add_argument("--legacy-chips", type=int, default=32)
    p.add_argument("--flops-batch", type=int, default=2)
    p.add_argument("--h100-tflops", type=float, default=400.0)
    p.add_argument("--no-flops", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cubes, _ = make_block_cubes(work, args.acquisitions, args.tiles)
    chips = ChipConfig(chip_m=args.chip_m)
    index = ChipIndex.build([str(cubes)], chip=chips, opener=OPENER)
    norm = compute_norm_stats(index, seed=0)

    # loader: best of ``--repeats`` passes over the same micro-batches, as the floor is best of 3; each
    # pass with a fresh dataset, so every group is opened and every shard read and decoded again
    passes = []
    for _ in range(max(1, args.repeats)):
        ds = ChipBatchDataset(index, norm, args.batch_size, seed=0)
        n = min(args.batches, len(ds))
        c0 = time.process_time()
        batches = []
        for tb in make_loader(ds, num_workers=0):
            batches.append(tb)
            if len(batches) == n:
                break
        passes.append(time.process_time() - c0)
    loader_cpu = min(passes)
    n_chips = sum(b.size for b in batches)
    used = 0
    for b in batches:
        for v in (b.raw_native, b.raw_coarse):
            if v is not None:
                used += sum(
                    int(bv.sum()) * px.shape[-1] * px.shape[-2] for px, bv in zip(v.pixels, v.band_valid)
                )
    rawgroups = [v for k, v in ds.reader._cache.items() if k[0] != "store"]
    chunks = collect_chunks(rawgroups)
    floor = floor_cpu_s(chunks, used, repeats=3)
    c0 = time.process_time()
    for b in batches:
        b.native, b.coarse  # noqa: B018  (CPU normalisation, for reference)
    norm_cpu = time.process_time() - c0

    # former path: per chip, per group, an xarray window read (what the loader did before)
    store = OPENER(str(cubes), None)
    sample = [cid for b in batches for cid in b.chip_ids][: args.legacy_chips]
    handles: dict[tuple[int, int], object] = {}
    for cid in sample:  # open the groups first (steady state, as the old loader's handle cache)
        c = index.chips[cid]
        src = index.sources[c.source]
        for gi, g in enumerate(src.groups):
            if (c.source, gi) not in handles:
                handles[(c.source, gi)] = store.open_group(
                    src.tile_id, src.collection, g.gsd_label, lazy=True
                )
    c0 = time.process_time()
    for cid in sample:
        c = index.chips[cid]
        src = index.sources[c.source]
        for gi, g in enumerate(src.groups):
            key = (c.source, gi)
            m = round(args.chip_m / g.gsd_m)
            store.read_window(handles[key], src.time_index[c.t][gi], c.row * m, c.col * m, m, m)
    legacy_cpu = time.process_time() - c0
    legacy_cps = len(sample) / legacy_cpu if legacy_cpu > 0 else float("nan")

    loader_cps = n_chips / loader_cpu
    result: dict[str, object] = {
        "benchmark": "bench_pretrain",
        "machine": f"{platform.machine()} {os.cpu_count()} logical CPUs (shared), torch {torch.__version__}",
        "cubes": f"aom cubes layout (write_cubes): {args.tiles}x{args.tiles} tile(s) of 7680 m, Sentinel-2 "
        f"12 bands 10/20/60 m, {args.acquisitions} acquisitions",
        "chip_m": args.chip_m,
        "batch_size": args.batch_size,
        "micro_batches": len(batches),
        "chips": n_chips,
        "shards_read": sum(g.counts.shards for g in rawgroups),
        "chunks_decoded": len(chunks),
        "pixels_used": used,
        "loader_cpu_s": round(loader_cpu, 3),
        "loader_cpu_s_passes": [round(c, 3) for c in passes],
        "loader_vs_floor_first_pass": round(floor / passes[0], 3),
        "loader_chips_per_cpu_s": round(loader_cps, 1),
        "loader_cpu_normalise_chips_per_cpu_s": round(n_chips / (loader_cpu + norm_cpu), 1),
        "floor_cpu_s": round(floor, 3),
        "floor_chips_per_cpu_s": round(n_chips / floor, 1),
        "loader_vs_floor": round(floor / loader_cpu, 3),
        "legacy_xarray_chips_per_cpu_s": round(legacy_cps, 1),
        "loader_vs_legacy": round(loader_cps / legacy_cps, 1),
    }
    if not args.no_flops:
        from torch.utils.flop_counter import FlopCounterMode

        torch.manual_seed(0)
        base = AOM(AOMConfig.named("base"))
        fb = ChipBatchDataset(index, norm, args.flops_batch, seed=0, augment=False)
        sub = fb[0]
        native, coarse = sub.to("cpu")
        assert native is not None
        fc = FlopCounterMode(display=False)
        with fc:
            base.pretrain_step(native, coarse, torch.Generator().manual_seed(0))["loss"].backward()
        fps = fc.get_total_flops() / sub.size
        h100_sps = args.h100_tflops * 1e12 / fps
        result.update(
            {
                "base_flops_per_sample_fwd_bwd": round(fps),
                "base_sample": "all 12 bands, 10/20/60 m, coarse view = the chip averaged 2x (no partner)",
                "h100_assumed_tflops": args.h100_tflops,
                "h100_base_bf16_samples_per_s": round(h100_sps, 1),
                "loader_cores_per_h100_base": round(h100_sps / loader_cps, 2),
            }
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
