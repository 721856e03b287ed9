"""Transformer building blocks on torch SDPA (fused kernels on GPU, flash-for-CPU on CPU)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aom_model.pos_embed import apply_rope


def is_tracing() -> bool:
    """True under torch.compile / torch.export / jit tracing (no data-dependent Python branches)."""
    return bool(torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing())


def drop_if_all(valid: Tensor) -> Tensor | None:
    """``None`` when every entry is True (eager only: one host sync per call), else ``valid``.

    Callers do this once per forward so attention runs mask-free (fastest SDPA kernel) on
    fully valid batches."""
    if not is_tracing() and bool(valid.all()):
        return None
    return valid


def key_padding_mask(key_valid: Tensor | None) -> Tensor | None:
    """[B, L] bool (True = attend) -> SDPA mask [B, 1, 1, L] (None stays None).

    Rows whose keys are all invalid would give NaN; they attend to everything instead (their
    outputs belong to absent tokens and are never used).
    """
    if key_valid is None:
        return None
    any_valid = key_valid.any(dim=-1, keepdim=True)
    return (key_valid | ~any_valid)[:, None, None, :]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: Tensor,
        key_valid: Tensor | None = None,
        bias: Tensor | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        b, n, d = x.shape  # [B, L, D]
        h = self.num_heads
        qkv = self.qkv(x).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)  # [3, B, h, L, dh]
        q, k, v = qkv[0], qkv[1], qkv[2]
        if rope is not None:  # 2-D rotary positions: logits depend on ground offsets only
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        mask: Tensor | None = key_padding_mask(key_valid)  # [B, 1, 1, L] bool or None
        if bias is not None:  # [B, h, L, L] additive logits
            bias = bias.to(qkv.dtype)
            mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))  # [B, L, D]


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)); x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(
        self,
        x: Tensor,
        key_valid: Tensor | None = None,
        bias: Tensor | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:  # [B, L, D]
        x = x + self.attn(self.norm1(x), key_valid, bias, rope)
        return x + self.mlp(self.norm2(x))


class SpectralDistanceBias(nn.Module):
    """Additive attention logits ``-slope_h * |wavelength_q - wavelength_k|`` (in micrometres) between
    band tokens: ALiBi over the spectrum. Reflectance correlates most with nearby wavelengths, so
    each head starts with a different reach (slopes spread geometrically from ``max_slope`` to
    ``min_slope`` per um) and learns it. Bands stay a set: only wavelength distances enter."""

    def __init__(self, num_heads: int, min_slope: float = 1.0, max_slope: float = 20.0) -> None:
        super().__init__()
        self.log_slope = nn.Parameter(
            torch.linspace(math.log(max_slope), math.log(min_slope), num_heads)
            if num_heads > 1
            else torch.tensor([math.log(max_slope)])
        )

    def forward(self, wavelength_nm: Tensor) -> Tensor:  # [B, C] -> [B, h, C, C]
        wl = torch.nan_to_num(wavelength_nm.float(), nan=0.0) / 1000.0  # um
        dist = (wl[:, :, None] - wl[:, None, :]).abs()  # [B, C, C]
        return -self.log_slope.exp()[None, :, None, None] * dist[:, None]


def per_position(bias: Tensor, n: int) -> Tensor:
    """[B, h, C, C] -> [B*N, h, C, C]: the same per-sample bias for each of its N positions."""
    b, h, c, _ = bias.shape
    return bias[:, None].expand(b, n, h, c, c).reshape(b * n, h, c, c)


class AttentionPool(nn.Module):
    """Learned-query multi-head attention pooling over a set: [M, C, d_in] -> [M, d_out].

    Permutation invariant over C; invalid members are excluded; an all-invalid set pools to 0.
    """

    def __init__(self, dim: int, num_heads: int, out_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.query = nn.Parameter(torch.randn(num_heads, 1, dim // num_heads) * 0.02)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, out_dim)

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        m, c, d = x.shape  # [M, C, d]
        h = self.num_heads
        kv = self.kv(self.norm(x)).reshape(m, c, 2, h, d // h).permute(2, 0, 3, 1, 4)  # [2, M, h, C, dh]
        q = self.query[None].expand(m, -1, -1, -1)  # [M, h, 1, dh]
        pooled = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=key_padding_mask(valid))
        out = self.out(pooled.reshape(m, d))  # [M, d_out]
        if valid is not None:  # an all-invalid set pools to 0
            out = out * valid.any(dim=-1, keepdim=True).to(out.dtype)
        return out


def masked_mean(x: Tensor, valid: Tensor, dim: int) -> Tensor:
    """Mean of ``x`` over ``dim`` where ``valid`` (x: [..., L, D] along dim, valid: [..., L]); 0 if none."""
    w = valid.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(dim=dim) / w.sum(dim=dim).clamp(min=1.0)
