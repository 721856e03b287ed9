"""Encoders over band tokens: ``joint`` (one sequence of C*N tokens) and ``factorized``.

Both take band tokens ``x [B, N, C, d_tok]`` (content or mask token, plus band embedding), the
positional embedding ``pos [B, N, D]`` and token masks, and return position tokens ``[B, N, D]``,
band tokens ``[B, N, C, d_band]`` and position validity ``[B, N]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from aom_model.blocks import (
    AttentionPool,
    Block,
    SpectralDistanceBias,
    drop_if_all,
    masked_mean,
    per_position,
)
from aom_model.config import AOMConfig


class JointEncoder(nn.Module):
    """All band x position tokens in one SDPA sequence (the paper's layout); cost ~ (C*N)^2."""

    def __init__(self, cfg: AOMConfig) -> None:
        super().__init__()
        self.band_dim = cfg.embed_dim
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)

    def forward(
        self,
        x: Tensor,  # [B, N, C, D]
        pos: Tensor,  # [B, N, D]
        visible: Tensor,  # [B, N, C] bool: keys (unmasked, present tokens)
        present: Tensor,  # [B, N, C] bool
        wavelength_nm: Tensor | None = None,  # [B, C] (unused: one sequence mixes space and spectrum)
    ) -> tuple[Tensor, Tensor, Tensor]:
        b, n, c, d = x.shape
        h = (x + pos[:, :, None, :]).reshape(b, n * c, d)  # [B, N*C, D]
        kv = drop_if_all(visible.reshape(b, n * c))  # [B, N*C] or None
        for blk in self.blocks:
            h = blk(h, kv)
        band_tokens = self.norm(h).reshape(b, n, c, d)  # [B, N, C, D]
        pos_valid = visible.any(dim=-1)  # [B, N]
        # position token = mean of its visible band tokens (of present ones where none is visible)
        weights = torch.where(pos_valid[..., None], visible, present)  # [B, N, C]
        return masked_mean(band_tokens, weights, dim=2), band_tokens, pos_valid


class FactorizedEncoder(nn.Module):
    """Band tokens stay explicit in a narrow stream (width d_s); attention is split.

    Per block i (``depth`` blocks of width D on N position tokens):
      if i % spectral_every == 0 (spectral layer j):
        band  += down_j(position)              broadcast position context to its band tokens
        band   = SpectralBlock_j(band)         attention over the C band tokens of each position
        pos   += pool_j(band)                  learned-query attention pooling over visible bands
      pos = SpatialBlock_i(pos)                attention over the N position tokens
    Cost: spatial blocks as a plain ViT + (depth / k) * C * O(d_s^2) per position: linear in C.
    """

    def __init__(self, cfg: AOMConfig) -> None:
        super().__init__()
        d, ds = cfg.embed_dim, cfg.spectral_dim
        self.band_dim = ds
        self.spectral_at = [i for i in range(cfg.depth) if i % cfg.spectral_every == 0]
        n_spec = len(self.spectral_at)
        self.empty = nn.Parameter(torch.zeros(d))  # start of every position token
        self.down = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(d, eps=1e-6), nn.Linear(d, ds)) for _ in range(n_spec)
        )
        self.spectral = nn.ModuleList(
            Block(ds, cfg.spectral_heads, cfg.spectral_mlp_ratio) for _ in range(n_spec)
        )
        self.pool = nn.ModuleList(AttentionPool(ds, cfg.pool_heads, d) for _ in range(n_spec))
        self.spectral_bias = (
            nn.ModuleList(SpectralDistanceBias(cfg.spectral_heads) for _ in range(n_spec))
            if cfg.spectral_distance_bias
            else None
        )
        self.blocks = nn.ModuleList(Block(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.band_norm = nn.LayerNorm(ds, eps=1e-6)

    def forward(
        self,
        x: Tensor,  # [B, N, C, d_s]
        pos: Tensor,  # [B, N, D]
        visible: Tensor,  # [B, N, C] bool
        present: Tensor,  # [B, N, C] bool (unused: masked bands stay queries, never keys)
        wavelength_nm: Tensor | None = None,  # [B, C]: needed for the spectral distance bias
    ) -> tuple[Tensor, Tensor, Tensor]:
        b, n, c, ds = x.shape
        pos_valid = visible.any(dim=-1)  # [B, N]
        vis = drop_if_all(visible.reshape(b * n, c))  # [B*N, C] or None (all visible)
        spatial_keys = pos_valid if vis is not None else None
        p = pos + self.empty  # [B, N, D]
        band = x
        j = 0
        for i, blk in enumerate(self.blocks):
            if j < len(self.spectral_at) and self.spectral_at[j] == i:
                band = band + self.down[j](p)[:, :, None, :]  # [B, N, C, d_s]
                bias = None
                if self.spectral_bias is not None:
                    if wavelength_nm is None:
                        raise ValueError("the spectral distance bias needs wavelength_nm")
                    bias = per_position(self.spectral_bias[j](wavelength_nm), n)  # [B*N, h, C, C]
                band = self.spectral[j](band.reshape(b * n, c, ds), vis, bias)  # [B*N, C, d_s]
                p = p + self.pool[j](band, vis).reshape(b, n, -1)  # [B, N, D]
                band = band.reshape(b, n, c, ds)
                j += 1
            p = blk(p, spatial_keys)  # [B, N, D]
        return self.norm(p), self.band_norm(band), pos_valid


def build_encoder(cfg: AOMConfig) -> JointEncoder | FactorizedEncoder:
    return JointEncoder(cfg) if cfg.layout == "joint" else FactorizedEncoder(cfg)
