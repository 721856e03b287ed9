"""Multi-scale adaptive patch embedding: a kernel bank, FlexiViT pseudo-inverse resize, grid planning.

Every band is patchified on its own (a shared 1-channel projection), with the bank kernel nearest
to the needed patch size resized by the FlexiViT PI-resize (Beyer et al. 2023): for a resize
``B`` (k x k -> ph x pw, bilinear, as a matrix) the resized kernel ``w' = pinv(B^T) w`` keeps
``<x, w> = <B x, w'>``. Resize matrices are computed once per (k, ph, pw) and cached.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_RESIZE_CACHE: dict[tuple[int, int, int, int, str], Tensor] = {}


def resize_matrix(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> Tensor:
    """Bilinear (antialiased when shrinking) resize as a matrix: [dst_h*dst_w, src_h*src_w], float64."""
    key = (*src_hw, *dst_hw, "resize")
    if key not in _RESIZE_CACHE:
        with torch.inference_mode(False):  # cached for training too: never an inference tensor
            _RESIZE_CACHE[key] = _resize_matrix(src_hw, dst_hw)
    return _RESIZE_CACHE[key]


def _resize_matrix(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> Tensor:
    n = src_hw[0] * src_hw[1]
    basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, *src_hw)
    shrink = dst_hw[0] < src_hw[0] or dst_hw[1] < src_hw[1]
    out = F.interpolate(basis, size=dst_hw, mode="bilinear", align_corners=False, antialias=shrink)
    return out.reshape(n, -1).T.contiguous()  # column j = resize(e_j)


def pi_resize_matrix(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> Tensor:
    """FlexiViT pseudo-inverse resize: [dst_h*dst_w, src_h*src_w] float32 so that w' = M @ w."""
    key = (*src_hw, *dst_hw, "pinv")
    if key not in _RESIZE_CACHE:
        with torch.inference_mode(False):  # cached for training too: never an inference tensor
            _RESIZE_CACHE[key] = _pi_resize_matrix(src_hw, dst_hw)
    return _RESIZE_CACHE[key]


def _pi_resize_matrix(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> Tensor:
    b = resize_matrix(src_hw, dst_hw)  # [P', P]
    # closed-form pinv(B^T) on the small Gram matrix (much faster than an SVD of B^T)
    try:
        if b.shape[0] >= b.shape[1]:  # upsampling: B^T full row rank -> B (B^T B)^-1
            m = torch.linalg.solve(b.T @ b, b.T).T
        else:  # shrinking: B^T full column rank -> (B B^T)^-1 B
            m = torch.linalg.solve(b @ b.T, b)
    except RuntimeError:  # singular Gram matrix: fall back to the SVD route
        m = torch.linalg.pinv(b.T)
    return m.float().contiguous()  # [P', P]


def _on(t: Tensor, like: Tensor) -> Tensor:
    return t if (t.device == like.device and t.dtype == like.dtype) else t.to(like.device, like.dtype)


def nearest_kernel(kernel_sizes: Sequence[int], patch_hw: tuple[int, int]) -> int:
    """Bank entry nearest (in log scale) to the patch's geometric-mean side."""
    side = math.sqrt(patch_hw[0] * patch_hw[1])
    return min(kernel_sizes, key=lambda k: (abs(math.log(k / side)), k))


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupPlan:
    kernel_size: int  # bank entry used
    patch_hw: tuple[int, int]  # pixels per token in this group
    resample_hw: tuple[int, int] | None  # pixels are resized to this first (only if not divisible)


@dataclass(frozen=True)
class GridPlan:
    """How every group of a batch lands on one common token grid."""

    grid_hw: tuple[int, int]
    groups: tuple[GroupPlan, ...]
    ref_group: int  # finest group; its GSD and patch size define the token's ground size

    @property
    def num_tokens(self) -> int:
        return self.grid_hw[0] * self.grid_hw[1]


def plan_grid(
    shapes: Sequence[tuple[int, int]],  # per group (H_g, W_g)
    gsds: Sequence[float],  # per group GSD (m), one value shared by every sample of the batch
    token_ground_m: float,
    kernel_sizes: Sequence[int],
    patch_size_min: int = 1,
    patch_size_max: int = 32,
    grid_hw: tuple[int, int] | None = None,
) -> GridPlan:
    """The one token plan (pretraining, evaluation, tile and raster embedding all call it).

    A token is ``token_ground_m`` metres of ground: the finest group gets ``token_ground_m / GSD``
    pixels per token (clamped to [patch_size_min, patch_size_max]; a clamp changes the token's
    ground size, which ``Tokens.token_m`` records) and the grid is the extent in tokens, rounded
    (at least 1). Every group's patch is its size / grid, so all groups share the grid; a group
    whose size is not a whole number of patches is resampled to the nearest that is (the only
    resampling). No other grid is searched: the same request gives the same token size whatever
    the extent or the band set.

    ``grid_hw`` fixes the grid instead (embedding chips are exactly their token count)."""
    if not shapes:
        raise ValueError("empty band set: no group to plan")
    ref = min(range(len(shapes)), key=lambda i: (gsds[i], -shapes[i][0] * shapes[i][1]))
    if grid_hw is not None:
        hp, wp = grid_hw
    else:
        gsd_ref = gsds[ref]
        patch = min(max(token_ground_m / gsd_ref, float(patch_size_min)), float(patch_size_max))
        ground = patch * gsd_ref  # achieved ground footprint of one token (m)
        hp = max(1, round(shapes[ref][0] * gsd_ref / ground))
        wp = max(1, round(shapes[ref][1] * gsd_ref / ground))
    plans = []
    for h, w in shapes:
        ph, pw = max(1, round(h / hp)), max(1, round(w / wp))
        resample = None if (ph * hp, pw * wp) == (h, w) else (ph * hp, pw * wp)
        plans.append(GroupPlan(nearest_kernel(kernel_sizes, (ph, pw)), (ph, pw), resample))
    return GridPlan((hp, wp), tuple(plans), ref)


def patchify(x: Tensor, grid_hw: tuple[int, int], patch_hw: tuple[int, int]) -> Tensor:
    """[B, C, Hp*ph, Wp*pw] -> [B, N, C, ph*pw] (N = Hp*Wp, row-major)."""
    b, c = x.shape[0], x.shape[1]
    (hp, wp), (ph, pw) = grid_hw, patch_hw
    x = x.reshape(b, c, hp, ph, wp, pw).permute(0, 2, 4, 1, 3, 5)  # [B, Hp, Wp, C, ph, pw]
    return x.reshape(b, hp * wp, c, ph * pw)


# ---------------------------------------------------------------------------------------------
class KernelBank(nn.Module):
    """Shared single-band patch projections for several kernel sizes, resized on demand.

    Bank entries are initialised consistently (all PI-resized from one random kernel of the
    middle size) so that at init every patch size gives the same response to smooth inputs.
    """

    def __init__(self, kernel_sizes: Sequence[int], dim: int) -> None:
        super().__init__()
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        mid = sorted(self.kernel_sizes)[len(self.kernel_sizes) // 2]
        base = torch.empty(mid * mid, dim)
        nn.init.trunc_normal_(base, std=1.0 / mid)
        self.weights = nn.ParameterDict()
        for k in self.kernel_sizes:
            w = base if k == mid else pi_resize_matrix((mid, mid), (k, k)) @ base
            self.weights[str(k)] = nn.Parameter(w.clone())  # [k*k, dim]
        self.bias = nn.Parameter(torch.zeros(dim))

    def weight_for(self, kernel_size: int, patch_hw: tuple[int, int]) -> Tensor:  # [ph*pw, dim]
        w = self.weights[str(kernel_size)]
        if patch_hw == (kernel_size, kernel_size):
            return w
        return _on(pi_resize_matrix((kernel_size, kernel_size), patch_hw), w) @ w

    def forward(self, patches: Tensor, kernel_size: int, patch_hw: tuple[int, int]) -> Tensor:
        """[B, N, C, ph*pw] -> [B, N, C, dim]."""
        return patches @ self.weight_for(kernel_size, patch_hw) + self.bias
