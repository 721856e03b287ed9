"""Positions in ground metres.

* ``ground_rope`` / ``apply_rope``: 2-D rotary position encoding (RoPE) of token centres in metres,
  the encoder's only positional signal. Queries and keys are rotated by angles proportional to
  their ground coordinates, so an attention logit depends on the *difference* of two tokens'
  positions only: where a chip or raster starts never enters a token's content.
* ``ground_sincos``: additive absolute 2-D sin-cos of token centres (metres from the grid's
  corner), kept for the plain-ViT benchmark baseline only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def token_centres_m(
    grid_hw: tuple[int, int],
    token_m: Tensor,  # [B, 2] ground size of one token (y, x) in metres
) -> Tensor:  # [B, N, 2] (y, x) of token centres in metres from the grid's corner, row-major
    hp, wp = grid_hw
    dev = token_m.device
    iy = torch.arange(hp, device=dev, dtype=torch.float64) + 0.5
    ix = torch.arange(wp, device=dev, dtype=torch.float64) + 0.5
    tm = token_m.to(torch.float64)
    y = iy[None, :, None] * tm[:, None, 0:1]  # [B, Hp, 1]
    x = ix[None, :, None] * tm[:, None, 1:2]  # [B, Wp, 1]
    b = token_m.shape[0]
    yy = y[:, :, None, :].expand(b, hp, wp, 1)
    xx = x[:, None, :, :].expand(b, hp, wp, 1)
    return torch.cat([yy, xx], dim=-1).reshape(b, hp * wp, 2)


def ground_rope(
    coords_m: Tensor,  # [B, L, 2] (y, x) ground coordinates in metres (any origin)
    head_dim: int,
    min_period_m: float,
    max_period_m: float,
) -> tuple[Tensor, Tensor]:  # (cos, sin), each [B, 1, L, head_dim] float32
    """Axial 2-D RoPE tables: the first half of each head's channels rotates with y, the second
    with x; ``head_dim / 4`` frequencies per axis with periods log-spaced in metres between
    ``min_period_m`` and ``max_period_m``, so the same ground offset gets the same rotation at any
    GSD or token size. Angles are computed in float64 and reduced modulo 2 pi before the cast, so
    large coordinates keep their precision."""
    if head_dim % 4 != 0:
        raise ValueError(f"head_dim must be a multiple of 4 for 2-D RoPE, got {head_dim}")
    nf = head_dim // 4
    dev = coords_m.device
    periods = torch.logspace(
        math.log10(min_period_m), math.log10(max_period_m), nf, device=dev, dtype=torch.float64
    )
    omega = 2 * math.pi / periods  # [F] rad / m
    c = coords_m.to(torch.float64)
    ang = torch.cat([c[..., 0:1] * omega, c[..., 1:2] * omega], dim=-1)  # [B, L, 2F]
    ang = torch.remainder(ang, 2 * math.pi)
    ang = torch.cat([ang, ang], dim=-1)[:, None]  # [B, 1, L, head_dim]
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
    """Rotate ``x`` [B, h, L, dh] by the tables of ``ground_rope`` (rotate-half pairing)."""
    cos, sin = rope
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rot * sin.to(x.dtype)


def ground_sincos(
    grid_hw: tuple[int, int],
    token_m: Tensor,  # [B, 2] ground size of one token (y, x) in metres
    dim: int,
    min_period_m: float = 10.0,
    max_period_m: float = 1.0e6,
) -> Tensor:  # [B, N, dim], N = Hp * Wp (row-major)
    """Additive sin-cos of token-centre ground coordinates (metres from the top-left corner).

    Absolute: the code depends on where the grid starts. Only the plain-ViT baseline uses it.
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
