"""Held-out masked-band reconstruction error, against naive baselines (band mean, nearest-band copy)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from aom_model.losses import normalized_patch_mse
from aom_model.model import AOM
from aom_model.train.chips import ChipIndex
from aom_model.train.loader import ChipBatchDataset
from aom_model.train.norm import NormStats

log = logging.getLogger(__name__)


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
