"""Channel-wise masking for pretraining, deterministic under an explicit ``torch.Generator``."""

from __future__ import annotations

import torch
from torch import Tensor


def _rand(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def channel_mask(
    present: Tensor,  # [B, N, C] bool: tokens that exist (band valid, enough valid pixels)
    mask_ratio: float,
    band_mask_prob: float,
    generator: torch.Generator,
) -> Tensor:  # [B, N, C] bool, True = masked (hidden from the encoder, reconstructed)
    """Mask ``round(mask_ratio * n_present)`` tokens per sample (at most n_present - 1, so at least
    one token stays visible): first whole bands (each present band with probability
    ``band_mask_prob``, in random order while they fit in the budget), then random band-position
    tokens until the budget is met. Same generator state -> same mask."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    b, n, c = present.shape
    dev = present.device
    n_present = present.sum(dim=(1, 2))  # [B]
    target = torch.minimum(torch.round(n_present.float() * mask_ratio).long(), (n_present - 1).clamp(min=0))
    # 1) whole bands
    band_tokens = present.sum(dim=1)  # [B, C] tokens per band
    u = _rand((b, c), generator, dev)  # [B, C]
    chosen = (u < band_mask_prob) & (band_tokens > 0)
    order_key = torch.where(chosen, u, torch.full_like(u, 2.0))  # chosen bands first, random order
    order = torch.argsort(order_key, dim=1)  # [B, C]
    counts_sorted = torch.gather(band_tokens * chosen, 1, order)  # [B, C]
    keep_sorted = (torch.cumsum(counts_sorted, dim=1) <= target[:, None]) & torch.gather(chosen, 1, order)
    band_masked = torch.zeros_like(chosen).scatter(1, order, keep_sorted)  # [B, C]
    masked = present & band_masked[:, None, :]  # [B, N, C]
    # 2) random band-position tokens to reach the budget
    remaining = target - masked.sum(dim=(1, 2))  # [B]
    scores = _rand((b, n * c), generator, dev)  # [B, N*C]
    eligible = (present & ~masked).reshape(b, n * c)
    scores = torch.where(eligible, scores, torch.full_like(scores, 2.0))
    rank = torch.argsort(torch.argsort(scores, dim=1), dim=1)  # [B, N*C] rank of each token
    extra = (rank < remaining[:, None]) & eligible
    return masked | extra.reshape(b, n, c)
