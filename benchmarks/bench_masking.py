"""Channel-wise masking: what the whole-band share (``band_mask_share``) does.

For each share and band count: the measured whole-band share of masked tokens, the share of
positions left without any visible band, and the FLOPs of a masked pretraining encoder forward
(tokenizer + encoder, ``torch.utils.flop_counter``) over an unmasked one, at mask ratio 0.75.
``tiny`` by default (cheap); ``--size small`` for the benchmark's model.

    .venv/bin/python benchmarks/bench_masking.py

Prints one line per cell, then ONE JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aom_model import AOM, AOMConfig, BandBatch, channel_mask
from aom_model.masking import mask_stats
from pipelines.registry import load_registry

S2_BANDS = load_registry(use_env=False).sensor("sentinel-2-msi").bands


def _flops(fn: Any) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="tiny", choices=["tiny", "small", "base"])
    p.add_argument("--shares", default="0.33,0.5,0.7,0.85")
    p.add_argument("--bands", default="4,12")
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--samples", type=int, default=32, help="samples per mask-statistics cell")
    args = p.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_encoder import _register_cpu_sdpa_flops

    _register_cpu_sdpa_flops()
    out: dict[str, dict[str, dict[str, float]]] = {}
    for c in (int(b) for b in args.bands.split(",")):
        x = torch.randn(1, c, args.img, args.img, generator=torch.Generator().manual_seed(c))
        bb = BandBatch.from_tensor(
            x, [b.center_wavelength_nm for b in S2_BANDS[:c]], [b.fwhm_nm for b in S2_BANDS[:c]], 10.0
        )
        for share in (float(s) for s in args.shares.split(",")):
            cfg = AOMConfig.named(args.size, band_mask_share=share)
            model = AOM(cfg).eval()
            tok = model.tokenize(bb)
            present = tok.present.expand(args.samples, -1, -1)
            st = mask_stats(
                present, channel_mask(present, cfg.mask_ratio, share, torch.Generator().manual_seed(0))
            )
            masked = channel_mask(tok.present, cfg.mask_ratio, share, torch.Generator().manual_seed(0))
            full = _flops(lambda m=model, b=bb: m.encode(m.tokenize(b)))
            part = _flops(lambda m=model, k=masked, b=bb: m.encode(m.tokenize(b), k))
            cell = {
                "band_share": round(st.band_share, 3),
                "empty_position_share": round(st.empty_position_share, 3),
                "masked_flops_vs_unmasked": round(part / full, 3),
            }
            out.setdefault(str(c), {})[str(share)] = cell
            print(f"{c:>2} bands, band_mask_share {share}: {cell}")
    print(json.dumps({"benchmark": "bench_masking", "size": args.size, "mask_ratio": 0.75, "cells": out}))


if __name__ == "__main__":
    main()
