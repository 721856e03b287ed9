"""Plain ViT built from the project's own blocks: the fused-token baseline for benchmarks."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from aom_model.blocks import Block
from aom_model.config import AOMConfig
from aom_model.pos_embed import ground_sincos


class PlainViT(nn.Module):
    """All bands stacked as input channels of one patch projection (what peer models do)."""

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        patch_size: int = 16,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    @classmethod
    def from_config(cls, cfg: AOMConfig, in_chans: int, patch_size: int = 16) -> PlainViT:
        return cls(in_chans, cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, patch_size)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # x [B, C, H, W]
        b = x.shape[0]
        h = self.patch_embed(x)  # [B, D, Hp, Wp]
        grid = (h.shape[-2], h.shape[-1])
        h = h.flatten(2).transpose(1, 2)  # [B, N, D]
        token_m = torch.full((b, 2), float(self.patch_size), device=x.device)
        h = h + ground_sincos(grid, token_m, self.embed_dim)
        for blk in self.blocks:
            h = blk(h)
        h = self.norm(h)
        return h, h.mean(dim=1)  # [B, N, D], [B, D]
