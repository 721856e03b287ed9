"""Encoders over band tokens: ``joint`` (one sequence of C*N tokens) and ``factorized``.

Both take band tokens ``x [B, N, C, d_tok]`` (content plus band embedding), the token centres'
ground coordinates ``coords [B, N, 2]`` (metres, any origin), which band tokens are visible
``visible [B, N, C]`` and the bands' wavelengths, and return position tokens ``[B, N, D]``, band
tokens ``[B, N, C, d_band]`` and position validity ``[B, N]``. Positions enter attention only
through 2-D rotary encoding of ground offsets (``pos_embed.ground_rope``); spectral attention has
no positional term (a band's identity is its embedding and, optionally, wavelength distances).

In pretraining ``N`` and ``C`` are *packed* sizes (``model.pack_visible``): only positions with a
visible band and only visible band tokens reach the encoder (MAE-style). Invisible entries of a
packed tensor are padding: never keys, outputs discarded.
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
from aom_model.pos_embed import ground_rope


def spectral_bias_for(
    module: nn.Module,  # SpectralDistanceBias
    wavelength_nm: Tensor,  # [B, C] (same bands at every position) or [B, N, C] (packed)
    n: int,
) -> Tensor:  # [B*N, h, C, C]
    if wavelength_nm.dim() == 2:
        return per_position(module(wavelength_nm), n)
    b, _, c = wavelength_nm.shape
    return module(wavelength_nm.reshape(b * n, c))


class JointEncoder(nn.Module):
    """All band x position tokens in one SDPA sequence (the paper's layout); cost ~ (C*N)^2."""

    def __init__(self, cfg: AOMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.band_dim = cfg.embed_dim
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)

    def forward(
        self,
        x: Tensor,  # [B, N, C, D]
        coords: Tensor,  # [B, N, 2] ground metres
        visible: Tensor,  # [B, N, C] bool: keys (visible, present tokens)
        wavelength_nm: Tensor | None = None,  # unused: one sequence mixes space and spectrum
    ) -> tuple[Tensor, Tensor, Tensor]:
        cfg = self.cfg
        b, n, c, d = x.shape
        h = x.reshape(b, n * c, d)  # [B, N*C, D]
        tok_coords = coords[:, :, None, :].expand(b, n, c, 2).reshape(b, n * c, 2)  # [B, N*C, 2]
        rope = ground_rope(tok_coords, d // cfg.num_heads, cfg.pos_min_period_m, cfg.pos_max_period_m)
        kv = drop_if_all(visible.reshape(b, n * c))  # [B, N*C] or None
        for blk in self.blocks:
            h = blk(h, kv, None, rope)
        band_tokens = self.norm(h).reshape(b, n, c, d)  # [B, N, C, D]
        pos_valid = visible.any(dim=-1)  # [B, N]
        return masked_mean(band_tokens, visible, dim=2), band_tokens, pos_valid


class FactorizedEncoder(nn.Module):
    """Band tokens stay explicit in a narrow stream (width d_s); attention is split.

    Per block i (``depth`` blocks of width D on N position tokens):
      if i % spectral_every == 0 (spectral layer j):
        band  += down_j(position)              broadcast position context to its band tokens
        band   = SpectralBlock_j(band)         attention over the C band tokens of each position
        pos   += pool_j(band)                  learned-query attention pooling over visible bands
      pos = SpatialBlock_i(pos)                attention over the N position tokens (2-D RoPE)
    Cost: spatial blocks as a plain ViT + (depth / k) * C * O(d_s^2) per position: linear in C.
    """

    def __init__(self, cfg: AOMConfig) -> None:
        super().__init__()
        self.cfg = cfg
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
        coords: Tensor,  # [B, N, 2] ground metres
        visible: Tensor,  # [B, N, C] bool
        wavelength_nm: Tensor | None = None,  # [B, C] or [B, N, C]: for the spectral distance bias
    ) -> tuple[Tensor, Tensor, Tensor]:
        cfg = self.cfg
        b, n, c, ds = x.shape
        pos_valid = visible.any(dim=-1)  # [B, N]
        vis = drop_if_all(visible.reshape(b * n, c))  # [B*N, C] or None (all visible)
        spatial_keys = drop_if_all(pos_valid) if vis is not None else None  # [B, N] or None
        rope = ground_rope(
            coords, cfg.embed_dim // cfg.num_heads, cfg.pos_min_period_m, cfg.pos_max_period_m
        )  # 2 x [B, 1, N, dh]
        p = self.empty.expand(b, n, -1).clone()  # [B, N, D] (a copy: blocks add to it)
        band = x
        j = 0
        for i, blk in enumerate(self.blocks):
            if j < len(self.spectral_at) and self.spectral_at[j] == i:
                band = band + self.down[j](p)[:, :, None, :]  # [B, N, C, d_s]
                bias = None
                if self.spectral_bias is not None:
                    if wavelength_nm is None:
                        raise ValueError("the spectral distance bias needs wavelength_nm")
                    bias = spectral_bias_for(self.spectral_bias[j], wavelength_nm, n)  # [B*N, h, C, C]
                band = self.spectral[j](band.reshape(b * n, c, ds), vis, bias)  # [B*N, C, d_s]
                p = p + self.pool[j](band, vis).reshape(b, n, -1)  # [B, N, D]
                band = band.reshape(b, n, c, ds)
                j += 1
            p = blk(p, spatial_keys, None, rope)  # [B, N, D]
        return self.norm(p), self.band_norm(band), pos_valid


def build_encoder(cfg: AOMConfig) -> JointEncoder | FactorizedEncoder:
    return JointEncoder(cfg) if cfg.layout == "joint" else FactorizedEncoder(cfg)
