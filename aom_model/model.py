"""The AOM model: tokenize -> encode -> decode -> loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from aom_model.blocks import is_tracing, masked_mean
from aom_model.config import EMBEDDINGS, SPECTRAL_QUERIES, AOMConfig
from aom_model.decoder import Decoder
from aom_model.encoder import build_encoder
from aom_model.inputs import BandBatch
from aom_model.losses import (
    chip_stats,
    consistency_distance,
    info_nce,
    normalized_patch_mse,
    patch_stats_mse,
)
from aom_model.masking import channel_mask
from aom_model.patch_embed import GridPlan
from aom_model.pos_embed import token_centres_m
from aom_model.tokenizer import Tokenizer, Tokens, plan_for


@dataclass
class EncoderOutput:
    tokens: Tensor  # [B, N, D] per-position embeddings on the token grid (row-major Hp x Wp)
    pooled: Tensor  # [B, D] mean of valid position tokens
    token_valid: Tensor  # [B, N] bool: positions with at least one visible band token
    grid_hw: tuple[int, int]
    band_tokens: Tensor | None = None  # [B, N, C, d_band] (d_band = D joint, spectral_dim factorized)
    band_token_valid: Tensor | None = None  # [B, N, C] bool (visible band tokens)


@dataclass
class Reconstruction:
    pixels: list[Tensor]  # per group [B, N, C_g, ph*pw] patch-normalised pixels of every band token
    stats: Tensor  # [B, N, C, 2] (mean, std) of every band token's band-normalised pixels


class AOM(nn.Module):
    """Any-Optical-Model: spectrum-independent tokens, GSD-adaptive patches, joint/factorized encoder."""

    def __init__(self, config: AOMConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_encoder(config)
        self.token_dim = self.encoder.band_dim  # D (joint) or d_s (factorized)
        self.tokenizer = Tokenizer(config, self.token_dim)
        self.decoder = Decoder(config, self.token_dim)
        d = config.embed_dim
        self.align_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, config.align_dim))
        for part in (
            self.encoder,
            self.decoder.blocks,
            self.decoder.spatial,
            self.decoder.heads,
            self.decoder.stats_pos,
            self.decoder.stats_head,
            self.decoder.stats_fill,
            self.align_head,
        ):
            part.apply(_init_linear)
        if self.decoder.pool_stats is not None:  # last, from a forked RNG (see Decoder)
            with torch.random.fork_rng(devices=[]):
                self.decoder.pool_stats.apply(_init_linear)

    # -- stage 1 --------------------------------------------------------------------------------
    def tokenize(self, batch: BandBatch, plan: GridPlan | None = None) -> Tokens:
        """BandBatch -> Tokens (pixel patches, validity, band_embed [B, C, d_tok], plan); the
        patches are projected in ``encode`` (only the visible ones when a mask is given)."""
        return self.tokenizer(batch, plan)

    # -- stage 2 --------------------------------------------------------------------------------
    def encode(
        self, tokens: Tokens, masked: Tensor | None = None, keep_band_tokens: bool = True
    ) -> EncoderOutput:
        """Tokens (+ optional mask [B, N, C], True = hidden) -> EncoderOutput.

        Without a mask every present token is encoded (inference). With one, the encoder sees only
        positions with a visible band (MAE-style gather; see ``pack_visible``), visible band tokens
        as keys and, with ``config.encode_masked_bands``, the masked band tokens of those
        positions as queries (their band embedding only: nothing of their pixels); outputs are
        scattered back to the full grid with zeros where nothing was encoded (``token_valid`` /
        ``band_token_valid`` say where visible tokens are).
        """
        present = tokens.present  # [B, N, C]
        visible = present if masked is None else present & ~masked
        x = self.tokenizer.project(tokens, None if masked is None else visible)  # [B, N, C, d_tok]
        x = x + tokens.band_embed[:, None, :, :]  # masked tokens: their band embedding only
        coords = token_centres_m(tokens.grid_hw, tokens.token_m)  # [B, N, 2] metres
        if masked is None:
            pos_tokens, band_tokens, pos_valid = self.encoder(x, coords, visible, tokens.wavelength_nm)
        else:
            # positions with a visible band; their visible bands, and their masked ones as
            # queries (never keys) when encode_masked_bands is set
            pk = pack_visible(visible, present if self.config.encode_masked_bands else None)
            b, n, c, _ = x.shape
            xp = pk.gather(x)  # [B, Nv, Cv, d_tok]
            keys = pk.gather(visible[..., None].to(x.dtype))[..., 0] > 0  # [B, Nv, Cv] visible only
            cp = torch.gather(coords, 1, pk.pos_index[..., None].expand(-1, -1, 2))  # [B, Nv, 2]
            wl = pk.gather(tokens.wavelength_nm[:, None, :, None].expand(b, n, c, 1))[..., 0]  # [B, Nv, Cv]
            pos_p, band_p, _ = self.encoder(xp, cp, keys & pk.band_keep, wl)
            pos_tokens, band_tokens = pk.scatter(pos_p, band_p, n, c)
            pos_valid = visible.any(dim=-1)  # [B, N]
        pooled = masked_mean(pos_tokens, pos_valid, dim=1)  # [B, D]
        return EncoderOutput(
            tokens=pos_tokens,
            pooled=pooled,
            token_valid=pos_valid,
            grid_hw=tokens.grid_hw,
            band_tokens=band_tokens if keep_band_tokens else None,
            band_token_valid=visible if keep_band_tokens else None,
        )

    def encode_with_queries(
        self,
        tokens: Tokens,
        query_wavelength_nm: Tensor,
        query_fwhm_nm: Tensor,
        keys: Tensor | None = None,
    ) -> tuple[EncoderOutput, Tensor]:
        """Inference encode plus S *spectral queries*: band tokens the encoder infers at given
        (wavelength, FWHM) from the present bands, at every position, whichever bands are there.

        A query enters the encoder as its band embedding only, exactly as a masked band does in
        pretraining (``encode_masked_bands``): a query of the spectral layers, never a key, so the
        position tokens and the present bands' tokens are the same as ``encode`` gives (tested).
        ``query_wavelength_nm`` / ``query_fwhm_nm`` [S] -> (EncoderOutput, queries [B, N, S, d_band]).
        ``keys`` [B, N, C] (a subset of ``tokens.present``; default all of it): the band tokens the
        encoder sees, as if the others were not there (they become queries too, which changes nothing).
        """
        present = tokens.present if keys is None else keys  # [B, N, C]
        b, n, c = present.shape
        s = int(query_wavelength_nm.shape[0])
        x = self.tokenizer.project(tokens, keys) + tokens.band_embed[:, None, :, :]  # [B, N, C, d_tok]
        qwl = query_wavelength_nm.to(tokens.wavelength_nm)[None].expand(b, s)  # [B, S]
        qfw = query_fwhm_nm.to(tokens.fwhm_nm)[None].expand(b, s)
        q = self.tokenizer.band_embedding(qwl, qfw)  # [B, S, d_tok]
        x = torch.cat([x, q[:, None].expand(b, n, s, q.shape[-1]).to(x.dtype)], dim=2)  # [B, N, C+S, d_tok]
        kv = torch.cat([present, present.new_zeros(b, n, s)], dim=2)  # [B, N, C+S]: queries never keys
        wl = torch.cat([tokens.wavelength_nm, qwl], dim=1)  # [B, C+S]
        coords = token_centres_m(tokens.grid_hw, tokens.token_m)  # [B, N, 2] metres
        pos_tokens, band_tokens, pos_valid = self.encoder(x, coords, kv, wl)
        out = EncoderOutput(
            tokens=pos_tokens,
            pooled=masked_mean(pos_tokens, pos_valid, dim=1),
            token_valid=pos_valid,
            grid_hw=tokens.grid_hw,
            band_tokens=band_tokens[:, :, :c],
            band_token_valid=present,
        )
        return out, band_tokens[:, :, c:]  # [B, N, S, d_band]

    # -- stage 3 --------------------------------------------------------------------------------
    def decode(self, enc: EncoderOutput, tokens: Tokens, masked: Tensor) -> Reconstruction:
        """-> per group [B, N, C_g, ph*pw] predicted (patch-normalised) pixels of every band token,
        and [B, N, C, 2] predicted (mean, std) of every band token."""
        if enc.band_tokens is None:
            raise ValueError("decode needs band tokens: call encode(..., keep_band_tokens=True)")
        coords = token_centres_m(tokens.grid_hw, tokens.token_m)  # [B, N, 2] metres
        hidden, pos_ctx = self.decoder(
            enc.band_tokens,
            enc.tokens,
            enc.token_valid,
            coords,
            masked,
            tokens.present,
            tokens.wavelength_nm,
            tokens.fwhm_nm,
            tokens.band_valid,
            tokens.band_id,
        )  # [B, N, C, d_dec]
        preds = []
        for (s, e), gp in zip(tokens.group_slices, tokens.plan.groups):
            preds.append(self.decoder.predict(hidden[:, :, s:e], gp.kernel_size, gp.patch_hw))
        stats = self.decoder.predict_stats(
            enc.tokens,
            enc.token_valid,
            pos_ctx,
            tokens.wavelength_nm,
            tokens.fwhm_nm,
            tokens.band_valid,
            tokens.band_id,
        )  # [B, N, C, 2]
        return Reconstruction(pixels=preds, stats=stats)

    # -- stage 4 --------------------------------------------------------------------------------
    def loss(
        self,
        rec: Reconstruction,
        tokens: Tokens,
        masked: Tensor,
        pooled_native: Tensor | None = None,
        pooled_coarse: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Masked reconstruction (per-patch-normalised MSE on masked present tokens) + the (mean, std)
        MSE of the masked tokens (``stats_tokens="present"``: of every present token) + InfoNCE."""
        cfg = self.config
        total = rec.stats.new_zeros(())
        stats_total = rec.stats.new_zeros(())
        count = rec.stats.new_zeros(())
        stats_count = rec.stats.new_zeros(())
        weight = masked & tokens.present  # [B, N, C]
        stats_weight = tokens.present if cfg.stats_tokens == "present" else weight  # [B, N, C]
        for (s, e), pred, target, pv in zip(
            tokens.group_slices, rec.pixels, tokens.pixel_patches, tokens.pixel_patch_valid
        ):
            l_sum, n = normalized_patch_mse(pred, target, pv, weight[:, :, s:e], cfg.norm_pix_eps)
            s_sum, s_n = patch_stats_mse(rec.stats[:, :, s:e], target, pv, stats_weight[:, :, s:e])
            total = total + l_sum
            stats_total = stats_total + s_sum
            count = count + n
            stats_count = stats_count + s_n
        recon = total / count.clamp(min=1.0)
        stats = stats_total / stats_count.clamp(min=1.0)
        out = {"recon": recon, "stats": stats}
        loss = cfg.recon_weight * recon + cfg.stats_weight * stats
        if pooled_native is not None and pooled_coarse is not None:
            align = info_nce(self.align_head(pooled_native), self.align_head(pooled_coarse), cfg.temperature)
            out["align"] = align
            loss = loss + cfg.align_weight * align
        out["loss"] = loss
        return out

    # -- entry points -----------------------------------------------------------------------------
    def forward_features(
        self, batch: BandBatch, plan: GridPlan | None = None, return_band_tokens: bool = False
    ) -> EncoderOutput:
        """Inference: BandBatch -> EncoderOutput(tokens [B, N, D], pooled [B, D], token_valid [B, N])."""
        if not is_tracing():
            batch.validate()
        return self.encode(self.tokenize(batch, plan), keep_band_tokens=return_band_tokens)

    def embedding_dim(self, embedding: str = "position") -> int:
        """Values per product token vector for ``embedding`` (one of ``EMBEDDINGS``)."""
        check_embedding(embedding)
        return int(
            self.config.embed_dim if embedding == "position" else len(SPECTRAL_QUERIES) * self.token_dim
        )

    def embed_tokens(
        self, batch: BandBatch, plan: GridPlan | None = None, embedding: str = "position"
    ) -> tuple[Tensor, Tensor]:
        """Inference: the product's token vectors [B, N, E] (E = ``embedding_dim(embedding)``) and
        their validity [B, N]. ``position``: the position tokens (``forward_features``); ``spectral``:
        per position the band tokens inferred at ``SPECTRAL_QUERIES``, concatenated query-major."""
        if embedding == "position":
            out = self.forward_features(batch, plan)
            return out.tokens, out.token_valid
        check_embedding(embedding)
        if not is_tracing():
            batch.validate()
        tokens = self.tokenize(batch, plan)
        q = torch.tensor(SPECTRAL_QUERIES, dtype=torch.float32, device=tokens.wavelength_nm.device)  # [S, 2]
        out, queries = self.encode_with_queries(tokens, q[:, 0], q[:, 1])  # queries [B, N, S, d_band]
        return queries.flatten(2), out.token_valid  # [B, N, S * d_band], [B, N]

    def forward(self, batch: BandBatch) -> EncoderOutput:
        return self.forward_features(batch)

    def pretrain_step(
        self,
        view_native: BandBatch,
        view_coarse: BandBatch | None,
        generator: torch.Generator,
        token_m: float | None = None,
    ) -> dict[str, Tensor]:
        """One pretraining forward: masked reconstruction of the native view, plus InfoNCE between
        the pooled embedding of the (masked) native view and of the coarse view when given.
        Both views are planned with ``token_m`` metres per token (None: ``config.token_ground_m``).
        Returns {"loss", "recon", "stats"[, "align"]} (``loss`` is differentiable)."""
        view_native.validate()
        tokens = self.tokenize(view_native, plan_for(view_native, self.config, token_m))
        masked = channel_mask(tokens.present, self.config.mask_ratio, self.config.band_mask_share, generator)
        enc = self.encode(tokens, masked)
        rec = self.decode(enc, tokens, masked)
        pooled_coarse = None
        if view_coarse is not None:
            if view_coarse.batch_size != view_native.batch_size:
                raise ValueError("view_native and view_coarse must have the same batch size")
            pooled_coarse = self.forward_features(
                view_coarse, plan_for(view_coarse, self.config, token_m)
            ).pooled
        out = self.loss(rec, tokens, masked, enc.pooled, pooled_coarse)
        if self.config.pooled_stats_weight > 0:
            pooled = [enc.pooled] if pooled_coarse is None else [enc.pooled, pooled_coarse]
            out["pool_stats"] = self.pooled_stats_loss(tokens, pooled)
            out["loss"] = out["loss"] + self.config.pooled_stats_weight * out["pool_stats"]
        if self.config.spectral_consistency_weight > 0:
            out["spectral"] = self.spectral_consistency(tokens, generator)
            out["loss"] = out["loss"] + self.config.spectral_consistency_weight * out["spectral"]
        return out

    def pooled_stats_loss(self, tokens: Tokens, pooled: list[Tensor]) -> Tensor:
        """Mean over ``pooled`` ([B, D] each: embeddings of views of the chips in ``tokens``) of the
        MSE between the chip statistics each predicts (``Decoder.predict_pooled_stats``) and the
        (mean, std) of every present band's valid native pixels over the whole chip."""
        per_group = [chip_stats(t, v) for t, v in zip(tokens.pixel_patches, tokens.pixel_patch_valid)]
        target = torch.cat([g[0] for g in per_group], dim=1)  # [B, C, 2]: groups in band order
        # [B, C] bands with a valid pixel (pixel validity already excludes invalid bands: Tokenizer)
        w = torch.cat([g[1] for g in per_group], dim=1).to(target.dtype)[..., None]  # [B, C, 1]
        total = target.new_zeros(())
        for p in pooled:
            pred = self.decoder.predict_pooled_stats(
                p, tokens.wavelength_nm, tokens.fwhm_nm, tokens.band_valid, tokens.band_id
            )  # [B, C, 2]
            total = total + (((pred - target) ** 2) * w).sum() / (2.0 * w.sum()).clamp(min=1.0)
        return total / len(pooled)

    def spectral_consistency(self, tokens: Tokens, generator: torch.Generator) -> Tensor:
        """Distance (``config.spectral_consistency_loss``, ``losses.consistency_distance``: 1 - cosine,
        standardized or whitened squared difference) between the spectral-query tokens of a random
        subset of each sample's bands and those of all its bands (teacher: the same weights, no
        gradient), mean over the positions the subset has a band at and the queries. The subset
        keeps a share drawn uniformly in ``config.spectral_consistency_keep`` of the sample's bands
        (at least one)."""
        present = tokens.present  # [B, N, C]
        b, _, c = present.shape
        dev = present.device
        lo, hi = self.config.spectral_consistency_keep
        has = present.any(dim=1)  # [B, C] bands the sample has somewhere
        r = torch.rand((b, c), generator=generator, device=generator.device).to(dev)
        r = torch.where(has, r, torch.full_like(r, 2.0))  # absent bands rank last
        share = lo + (hi - lo) * torch.rand((b,), generator=generator, device=generator.device).to(dev)
        k = (share * has.sum(dim=1)).round().clamp(min=1)  # [B]
        keep = (r.argsort(dim=1).argsort(dim=1) < k[:, None]) & has  # [B, C]
        keys = present & keep[:, None, :]  # [B, N, C]
        q = torch.tensor(SPECTRAL_QUERIES, dtype=torch.float32, device=dev)  # [S, 2]
        with torch.no_grad():
            _, teacher = self.encode_with_queries(tokens, q[:, 0], q[:, 1])  # [B, N, S, d]
        _, student = self.encode_with_queries(tokens, q[:, 0], q[:, 1], keys)  # [B, N, S, d]
        seen = keys.any(dim=-1)  # [B, N] positions the subset has a band at
        dist = consistency_distance(
            student, teacher, seen, self.config.spectral_consistency_loss
        )  # [B, N, S]
        w = seen.to(student.dtype)[..., None]  # [B, N, 1]
        return (dist * w).sum() / (w.sum() * dist.shape[-1]).clamp(min=1.0)


@dataclass
class PackedVisible:
    """Index of part of a [B, N, C] token set: positions with a visible band first (in grid order),
    then per position its kept bands first (in band order): the visible ones, or every present one
    when masked bands are encoded as queries."""

    pos_index: Tensor  # [B, Nv] long: grid position of each packed position
    pos_keep: Tensor  # [B, Nv] bool: packed position has a visible band (else padding)
    band_index: Tensor  # [B, Nv, Cv] long: band of each packed band token
    band_keep: Tensor  # [B, Nv, Cv] bool: packed band token is kept (else padding)

    def gather(self, x: Tensor) -> Tensor:  # [B, N, C, d] -> [B, Nv, Cv, d]
        _, _, c, d = x.shape
        xp = torch.gather(x, 1, self.pos_index[:, :, None, None].expand(-1, -1, c, d))  # [B, Nv, C, d]
        return torch.gather(xp, 2, self.band_index[..., None].expand(-1, -1, -1, d))

    def scatter(self, pos: Tensor, band: Tensor, n: int, c: int) -> tuple[Tensor, Tensor]:
        """[B, Nv, D], [B, Nv, Cv, d] -> [B, N, D], [B, N, C, d] with zeros where nothing was encoded."""
        b, nv, _, d = band.shape
        band = band * self.band_keep[..., None].to(band.dtype)
        full_c = band.new_zeros(b, nv, c, d).scatter(
            2, self.band_index[..., None].expand(-1, -1, -1, d), band
        )
        full_c = full_c * self.pos_keep[:, :, None, None].to(band.dtype)
        band_out = band.new_zeros(b, n, c, d).scatter(
            1, self.pos_index[:, :, None, None].expand(-1, -1, c, d), full_c
        )  # [B, N, C, d]
        pos = pos * self.pos_keep[..., None].to(pos.dtype)
        pos_out = pos.new_zeros(b, n, pos.shape[-1]).scatter(
            1, self.pos_index[..., None].expand(-1, -1, pos.shape[-1]), pos
        )  # [B, N, D]
        return pos_out, band_out


def pack_visible(visible: Tensor, bands: Tensor | None = None) -> PackedVisible:
    """Indices that keep only positions with a visible band and, at those, only the band tokens
    of ``bands`` ([B, N, C] bool, a superset of ``visible``; None: the visible ones), padded to the
    batch's largest counts; one host sync each, so eager only."""
    pos_valid = visible.any(dim=-1)  # [B, N]
    nv = max(1, int(pos_valid.sum(dim=1).max()))
    pos_index = torch.argsort((~pos_valid).to(torch.int8), dim=1, stable=True)[:, :nv]  # [B, Nv]
    pos_keep = torch.gather(pos_valid, 1, pos_index)
    sel = visible if bands is None else bands
    kept = torch.gather(sel, 1, pos_index[..., None].expand(-1, -1, sel.shape[-1]))  # [B, Nv, C]
    kept = kept & pos_keep[..., None]
    cv = max(1, int(kept.sum(dim=-1).max()))
    band_index = torch.argsort((~kept).to(torch.int8), dim=2, stable=True)[..., :cv]  # [B, Nv, Cv]
    band_keep = torch.gather(kept, 2, band_index)
    return PackedVisible(pos_index, pos_keep, band_index, band_keep)


def check_embedding(embedding: str) -> None:
    if embedding not in EMBEDDINGS:
        raise ValueError(f"embedding must be one of {', '.join(EMBEDDINGS)}; got {embedding!r}")


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
