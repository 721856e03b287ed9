"""Cost of seam blending and of the spectral embedding on the tile path: encoder CPU time of one
48-token tile (7680 m at 160 m tokens) embedded with cores only (``--blend-tokens 0``, the baseline)
and with seam blending, and (``--spectral``, on by default) with ``--embedding spectral`` at the
largest blend, same checkpoint, same padded pixels (synthetic Sentinel-2 reflectance at 10/20/60 m),
same process.

Prints one line per layout, then ONE JSON object on the last line::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_seam_blend.py            # ~1 min on 1 core
    .venv/bin/python benchmarks/bench_seam_blend.py --blend 0 2 3 --repeats 3

``cpu_s_per_tile`` is ``time.process_time`` per tile (best of ``--repeats``); ``vs_core_only`` is that
over the baseline's; ``chips`` the chips run per tile; the spectral row's ``vs_position`` is its time
over the position embedding's at the same blend. The quality side (seam contrast, shift
consistency) is measured on real data with ``run_product_metrics`` (``docs/evaluation.md``).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    import torch

    from pipelines.embed import (
        GroupPixels,
        choose_layout,
        embed_region,
        load_checkpoint_url,
        resolve_normaliser,
    )
    from pipelines.registry import load_registry

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="checkpoints/aom-tiny-real.safetensors")
    ap.add_argument(
        "--blend", type=int, nargs="+", default=[0, 3], help="blend_tokens to time (0 = baseline)"
    )
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--spectral",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time --embedding spectral at the largest blend",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    ckpt = load_checkpoint_url(args.checkpoint)
    s2 = load_registry().sensor("sentinel-2-msi")
    names = {
        10.0: ["B02", "B03", "B04", "B08"],
        20.0: ["B05", "B06", "B07", "B8A", "B11", "B12"],
        60.0: ["B01"],
    }
    gsds = sorted(names)
    rng = np.random.default_rng(0)
    results = []
    base = None
    blends = [0, *[b for b in args.blend if b != 0]]
    runs = [(b, "position") for b in blends] + ([(blends[-1], "spectral")] if args.spectral else [])
    by_blend: dict[int, float] = {}
    for blend, embedding in runs:
        layout = choose_layout(48, 160.0, gsds, blend_tokens=blend)
        side_m = (48 + 2 * layout.pad_tokens) * 160.0
        groups = []
        for g in gsds:
            n = round(side_m / g)
            bands = tuple(s2.band(b) for b in names[g])
            smooth = 0.15 + 0.05 * np.sin(np.arange(n) / (n / 7))[None, :, None]
            px = (smooth + rng.normal(0, 0.02, (len(bands), n, n))).astype(np.float32)
            groups.append(GroupPixels("sentinel-2-l2a", g, bands, px))
        norm = resolve_normaliser(ckpt.norm_stats, [b for g in groups for b in g.bands])
        best, chips = float("inf"), 0
        for _ in range(args.repeats):
            t0 = time.process_time()
            res = embed_region(ckpt.model, groups, layout, norm, batch_size=8, embedding=embedding)
            best = min(best, time.process_time() - t0)
            chips = res.chips_run
        base = best if blend == 0 and embedding == "position" else base
        row = {
            "blend_tokens": blend,
            "embedding": embedding,
            "dim": ckpt.model.embedding_dim(embedding),
            "chips": chips,
            "pad_tokens": layout.pad_tokens,
            "cpu_s_per_tile": round(best, 3),
            "vs_core_only": round(best / base, 3) if base else None,
        }
        if embedding == "position":
            by_blend[blend] = best
        else:
            row["vs_position"] = round(best / by_blend[blend], 3)
        results.append(row)
        print(
            f"blend {blend}, {embedding}: {chips} chips, padded read {layout.pad_tokens} tokens, {best:.2f} CPU-s per tile"
        )
    print(json.dumps({"benchmark": "bench_seam_blend", "checkpoint": args.checkpoint, "layouts": results}))


if __name__ == "__main__":
    main()
