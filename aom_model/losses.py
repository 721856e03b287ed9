"""Pretraining losses: per-patch-normalised masked MSE, patch-statistics MSE, symmetric InfoNCE and
the spectral-consistency distances."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from aom_model.config import SPECTRAL_CONSISTENCY_LOSSES


def normalized_patch_mse(
    pred: Tensor,  # [..., P] prediction in per-patch-normalised pixel space
    target: Tensor,  # [..., P] raw pixels
    pixel_valid: Tensor,  # [..., P] bool
    token_weight: Tensor,  # [...] bool: tokens that count (masked and present)
    eps: float = 1e-6,
) -> tuple[Tensor, Tensor]:  # (sum of per-token losses, number of tokens)
    """Target normalised by its patch's mean / std over valid pixels; MSE over valid pixels."""
    m = pixel_valid.to(target.dtype)
    cnt = m.sum(dim=-1, keepdim=True).clamp(min=1.0)
    mean = (target * m).sum(dim=-1, keepdim=True) / cnt
    var = (((target - mean) ** 2) * m).sum(dim=-1, keepdim=True) / cnt
    norm_target = (target - mean) / torch.sqrt(var + eps)
    per_token = (((pred - norm_target) ** 2) * m).sum(dim=-1) / cnt.squeeze(-1)  # [...]
    w = token_weight.to(per_token.dtype)
    return (per_token * w).sum(), w.sum()


def patch_stats(
    target: Tensor,  # [..., P] pixels (band-normalised)
    pixel_valid: Tensor,  # [..., P] bool
) -> Tensor:  # [..., 2] (mean, std) over valid pixels
    m = pixel_valid.to(target.dtype)
    cnt = m.sum(dim=-1, keepdim=True).clamp(min=1.0)
    mean = (target * m).sum(dim=-1, keepdim=True) / cnt
    var = (((target - mean) ** 2) * m).sum(dim=-1, keepdim=True) / cnt
    return torch.cat([mean, torch.sqrt(var)], dim=-1)


def chip_stats(
    target: Tensor,  # [B, N, C_g, P] pixels (band-normalised) of one group's tokens
    pixel_valid: Tensor,  # [B, N, C_g, P] bool
) -> tuple[Tensor, Tensor]:  # ([B, C_g, 2] (mean, std) over the chip's valid pixels, [B, C_g] any valid)
    """Per band, the (mean, std) of every valid pixel of the chip (all its token positions)."""
    b, n, c, p = target.shape
    t = target.permute(0, 2, 1, 3).reshape(b, c, n * p)  # [B, C_g, N*P]
    v = pixel_valid.permute(0, 2, 1, 3).reshape(b, c, n * p)
    return patch_stats(t, v), v.any(dim=-1)


def patch_stats_mse(
    pred: Tensor,  # [..., 2] predicted (mean, std)
    target: Tensor,  # [..., P] pixels (band-normalised)
    pixel_valid: Tensor,  # [..., P] bool
    token_weight: Tensor,  # [...] bool
) -> tuple[Tensor, Tensor]:  # (sum of per-token losses, number of tokens)
    """MSE between the predicted and the actual (mean, std) of each token's valid pixels."""
    per_token = ((pred - patch_stats(target, pixel_valid)) ** 2).mean(dim=-1)  # [...]
    w = token_weight.to(per_token.dtype)
    return (per_token * w).sum(), w.sum()


def info_nce(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE between rows of ``a`` [B, d] and ``b`` [B, d] (positives on the diagonal)."""
    za = F.normalize(a.float(), dim=-1)
    zb = F.normalize(b.float(), dim=-1)
    logits = za @ zb.T / temperature  # [B, B]
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def consistency_distance(
    student: Tensor,  # [B, N, S, d] spectral-query tokens of the band subset
    teacher: Tensor,  # [B, N, S, d] the same of all bands (no gradient expected)
    weight: Tensor,  # [B, N] positions that count
    kind: str = "cosine",
) -> Tensor:  # [B, N, S]
    """Per (position, query) distance of the spectral-consistency term (``SPECTRAL_CONSISTENCY_LOSSES``).

    ``cosine``: 1 - cosine similarity. ``standardized``: mean over the d dimensions of the squared
    difference in units of the teacher's standard deviation over the weighted positions of the
    batch (per query and dimension, floored at 1e-3): the scale a linear probe on standardised
    features sees, and invariant to a per-dimension affine change of the token space. A token is
    mostly a component every position shares (it is layer-normalised), so a small cosine distance
    can still be a large error along the directions that tell positions apart. ``whitened``: as
    ``standardized`` along the teacher's principal axes (per query, over the weighted positions;
    variances floored at 1 % of their mean), so low-variance directions count as much as the
    dominant ones."""
    s, t = student.float(), teacher.float()
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(s, t, dim=-1)
    if kind not in SPECTRAL_CONSISTENCY_LOSSES:
        raise ValueError(
            f"consistency distance must be one of {', '.join(SPECTRAL_CONSISTENCY_LOSSES)}, got {kind!r}"
        )
    w = weight.to(t.dtype)[..., None, None]  # [B, N, 1, 1]
    n = w.sum().clamp(min=1.0)
    mu = (t * w).sum(dim=(0, 1)) / n  # [S, d]
    if kind == "whitened":
        xc = (t - mu) * w  # [B, N, S, d]
        cov = torch.einsum("bnsi,bnsj->sij", xc, xc) / n  # [S, d, d]
        lam, vec = torch.linalg.eigh(cov)  # [S, d], [S, d, d]
        lam = torch.maximum(lam, 1e-2 * lam.mean(dim=-1, keepdim=True)).clamp(min=1e-8)
        white = vec / lam.sqrt()[:, None, :]  # [S, d, d]: columns = principal axes / their std
        diff = torch.einsum("bnsi,sij->bnsj", s - t, white)  # [B, N, S, d]
        return (diff**2).mean(dim=-1)
    sd = ((((t - mu) ** 2) * w).sum(dim=(0, 1)) / n).sqrt().clamp(min=1e-3)  # [S, d]
    return (((s - t) / sd) ** 2).mean(dim=-1)
