"""GSD-aware 2-D sin-cos positional embedding of token centres in ground metres."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def ground_sincos(
    grid_hw: tuple[int, int],
    token_m: Tensor,  # [B, 2] ground size of one token (y, x) in metres
    dim: int,
    min_period_m: float = 10.0,
    max_period_m: float = 1.0e6,
) -> Tensor:  # [B, N, dim], N = Hp * Wp (row-major)
    """Sin-cos of token-centre ground coordinates (metres from the top-left corner).

    Periods are log-spaced in metres between ``min_period_m`` and ``max_period_m``, so the same
    ground distance gets the same encoding at any GSD / patch size.
    """
    if dim % 4 != 0:
        raise ValueError(f"dim must be a multiple of 4, got {dim}")
    hp, wp = grid_hw
    dev = token_m.device
    nf = dim // 4
    periods = torch.logspace(math.log10(min_period_m), math.log10(max_period_m), nf, device=dev)
    omega = 2 * math.pi / periods  # [F] rad / m
    iy = torch.arange(hp, device=dev, dtype=torch.float32) + 0.5
    ix = torch.arange(wp, device=dev, dtype=torch.float32) + 0.5
    y = iy[None, :, None] * token_m[:, None, 0:1].float()  # [B, Hp, 1] metres
    x = ix[None, :, None] * token_m[:, None, 1:2].float()  # [B, Wp, 1]
    ay = y * omega  # [B, Hp, F]
    ax = x * omega  # [B, Wp, F]
    ey = torch.cat([ay.sin(), ay.cos()], dim=-1)  # [B, Hp, 2F]
    ex = torch.cat([ax.sin(), ax.cos()], dim=-1)  # [B, Wp, 2F]
    b = token_m.shape[0]
    emb = torch.cat(
        [ey[:, :, None, :].expand(b, hp, wp, 2 * nf), ex[:, None, :, :].expand(b, hp, wp, 2 * nf)], dim=-1
    )  # [B, Hp, Wp, dim]
    return emb.reshape(b, hp * wp, dim)
