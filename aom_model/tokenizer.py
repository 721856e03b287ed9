"""Spectrum-independent tokenizer: every band -> its own tokens on one common ground grid."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aom_model.band_embedding import BandEmbedding
from aom_model.blocks import is_tracing
from aom_model.config import AOMConfig
from aom_model.inputs import BandBatch, BandGroup
from aom_model.patch_embed import GridPlan, KernelBank, patchify, plan_grid
from pipelines.errors import InputError


@dataclass
class Tokens:
    """Output of ``AOM.tokenize``. Layout is position-major: [B, N, C, .] with C = all bands.

    Band patches are not projected here: ``Tokenizer.project`` projects the ones the encoder will
    see (every present token at inference, only visible ones in pretraining)."""

    band_embed: Tensor  # [B, C, d_tok]
    present: Tensor  # [B, N, C] bool: band valid and >= min_valid_pixel_frac valid pixels
    wavelength_nm: Tensor  # [B, C]
    fwhm_nm: Tensor  # [B, C]
    band_valid: Tensor  # [B, C] bool
    band_id: Tensor | None  # [B, C] long
    token_m: Tensor  # [B, 2] ground size of one token (y, x) in metres
    plan: GridPlan
    group_slices: tuple[tuple[int, int], ...]  # channel range of each group in C
    pixel_patches: tuple[Tensor, ...]  # per group [B, N, C_g, ph*pw] (finite; reconstruction target)
    pixel_patch_valid: tuple[Tensor, ...]  # per group [B, N, C_g, ph*pw] bool

    @property
    def grid_hw(self) -> tuple[int, int]:
        return self.plan.grid_hw


class MixedGSDBatchError(InputError):
    """A batch whose samples have different GSDs in one band group: one token grid cannot serve
    them all, and a plan from some batch statistic would make a sample depend on its batchmates."""


def group_gsd(group: BandGroup, index: int = 0) -> float:
    """The one GSD (m) every sample of a band group shares (samples without a valid band in the
    group are ignored); MixedGSDBatchError when the samples differ."""
    gsd = group.gsd_per_sample()  # [B]
    has = group.valid_bands().any(dim=1)  # [B]
    vals = gsd[has] if bool(has.any()) else gsd
    lo, hi = float(vals.min()), float(vals.max())
    if hi - lo > 1e-3 * lo:
        raise MixedGSDBatchError(
            f"band group {index} mixes GSDs {sorted({round(float(v), 3) for v in vals})} m in one batch: "
            "batch samples of one GSD per group together (each sample's token plan follows its own GSD)"
        )
    return float(vals[0])


def finest_gsd(batch: BandBatch) -> float:
    """The finest GSD (m) among a batch's band groups (:func:`group_gsd` of each)."""
    return min(group_gsd(g, i) for i, g in enumerate(batch.groups))


def plan_for(batch: BandBatch, config: AOMConfig, token_m: float | None = None) -> GridPlan:
    """The token plan of a batch: ``plan_grid`` with each group's own GSD (shared by all samples,
    else MixedGSDBatchError) and ``token_m`` metres per token (None: ``config.token_ground_m``).
    A Python-level decision from shapes and GSDs; no sample's plan depends on its batchmates."""
    gsds = [group_gsd(g, i) for i, g in enumerate(batch.groups)]
    return plan_grid(
        [g.hw for g in batch.groups],
        gsds,
        config.token_ground_m if token_m is None else float(token_m),
        config.kernel_sizes,
        config.patch_size_min,
        config.patch_size_max,
    )


class Tokenizer(nn.Module):
    def __init__(self, config: AOMConfig, token_dim: int) -> None:
        super().__init__()
        self.config = config
        self.token_dim = token_dim
        self.kernels = KernelBank(config.kernel_sizes, token_dim)
        self.band_embedding = BandEmbedding(
            token_dim,
            config.band_fourier_features,
            config.band_min_freq_per_um,
            config.band_max_freq_per_um,
            config.num_band_ids,
        )

    def forward(self, batch: BandBatch, plan: GridPlan | None = None) -> Tokens:
        cfg = self.config
        if plan is None:
            plan = plan_for(batch, cfg)
        present, px_list, pv_list, slices = [], [], [], []
        wl, fw, bv, bid = [], [], [], []
        start = 0
        has_ids = any(g.band_id is not None for g in batch.groups)
        for g, gp in zip(batch.groups, plan.groups):
            x = g.pixels  # [B, C_g, H_g, W_g]
            band_valid = g.valid_bands()  # [B, C_g]
            valid_px = torch.isfinite(x)
            if g.pixel_valid is not None:
                valid_px = valid_px & g.pixel_valid
            valid_px = valid_px & band_valid[:, :, None, None]
            all_valid = not is_tracing() and gp.resample_hw is None and bool(valid_px.all())
            if all_valid:  # fast path: nothing to impute
                p = patchify(x, plan.grid_hw, gp.patch_hw)  # [B, N, C_g, P]
                m = torch.ones((), dtype=torch.bool, device=x.device).expand(p.shape)
                frac = torch.ones(p.shape[:3], device=x.device)
            else:
                x = torch.where(valid_px, x, torch.zeros_like(x))
                if gp.resample_hw is not None:  # only when the grid does not divide this group
                    w = F.interpolate(valid_px.float(), size=gp.resample_hw, mode="bilinear", antialias=True)
                    x = F.interpolate(x, size=gp.resample_hw, mode="bilinear", antialias=True)
                    x = x / w.clamp(min=1e-6)
                    valid_px = w > 0.5
                    x = torch.where(valid_px, x, torch.zeros_like(x))
                p = patchify(x, plan.grid_hw, gp.patch_hw)  # [B, N, C_g, P]
                m = patchify(valid_px, plan.grid_hw, gp.patch_hw)  # [B, N, C_g, P] bool
                frac = m.float().mean(dim=-1)  # [B, N, C_g]
                # partially valid patch: invalid pixels take the patch's valid mean (inside a valid token)
                cnt = m.sum(dim=-1, keepdim=True).clamp(min=1)
                mean = p.sum(dim=-1, keepdim=True) / cnt
                p = torch.where(m, p, mean.expand_as(p))
            tok_present = (frac >= cfg.min_valid_pixel_frac) & band_valid[:, None, :]  # [B, N, C_g]
            present.append(tok_present)
            px_list.append(p)
            pv_list.append(m)
            slices.append((start, start + g.num_bands))
            start += g.num_bands
            wl.append(g.wavelength_nm.float())
            fw.append(g.fwhm_nm.float())
            bv.append(band_valid)
            if has_ids:
                ids = (
                    g.band_id if g.band_id is not None else torch.full_like(band_valid, -1, dtype=torch.long)
                )
                bid.append(ids)
        wavelength = torch.cat(wl, dim=1)  # [B, C]
        fwhm = torch.cat(fw, dim=1)
        band_valid_all = torch.cat(bv, dim=1)
        band_id = torch.cat(bid, dim=1) if has_ids else None
        ref = batch.groups[plan.ref_group]
        ph, pw = plan.groups[plan.ref_group].patch_hw
        gsd_ref = ref.gsd_per_sample()  # [B]
        if plan.groups[plan.ref_group].resample_hw is not None:
            rh, rw = plan.groups[plan.ref_group].resample_hw  # type: ignore[misc]
            ref_h, ref_w = ref.hw
            token_m = torch.stack([gsd_ref * ref_h / rh * ph, gsd_ref * ref_w / rw * pw], dim=1)
        else:
            token_m = torch.stack([gsd_ref * ph, gsd_ref * pw], dim=1)  # [B, 2]
        return Tokens(
            band_embed=self.band_embedding(wavelength, fwhm, band_valid_all, band_id),
            present=torch.cat(present, dim=2),
            wavelength_nm=wavelength,
            fwhm_nm=fwhm,
            band_valid=band_valid_all,
            band_id=band_id,
            token_m=token_m,
            plan=plan,
            group_slices=tuple(slices),
            pixel_patches=tuple(px_list),
            pixel_patch_valid=tuple(pv_list),
        )

    def project(self, tokens: Tokens, visible: Tensor | None = None) -> Tensor:
        """Projected band patches [B, N, C, d_tok] of the tokens the encoder sees, 0 elsewhere.

        ``visible=None`` (inference): every present token (absent ones carry no data).
        ``visible`` [B, N, C] bool (pretraining, ``present & ~masked``): only those patches are
        projected (selected per group; one host sync each, eager only), so masked pixels cost no
        FLOPs and cannot leak."""
        out = []
        for (s, e), gp, p in zip(tokens.group_slices, tokens.plan.groups, tokens.pixel_patches):
            if visible is None:
                emb = self.kernels(p, gp.kernel_size, gp.patch_hw)  # [B, N, C_g, d_tok]
                out.append(emb * tokens.present[:, :, s:e, None].to(emb.dtype))
                continue
            k = visible[:, :, s:e]  # [B, N, C_g]
            sel = self.kernels(p[k], gp.kernel_size, gp.patch_hw)  # [M, d_tok] visible tokens only
            emb = sel.new_zeros(*k.shape, sel.shape[-1])  # [B, N, C_g, d_tok]
            emb[k] = sel
            out.append(emb)
        return torch.cat(out, dim=2)  # [B, N, C, d_tok]
