"""Light decoder: reconstructs masked band patches in each group's own pixel space."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from aom_model.band_embedding import BandEmbedding
from aom_model.blocks import Block, Mlp, SpectralDistanceBias, drop_if_all, per_position
from aom_model.config import AOMConfig
from aom_model.patch_embed import resize_matrix
from aom_model.pos_embed import ground_rope


class Decoder(nn.Module):
    """Position context: proj(position token), or a learned mask vector at positions the encoder
    did not see, then ``decoder_spatial_depth`` blocks of spatial attention (2-D RoPE) over all
    positions. Per band-position query = proj(band token) + position context + [mask token]
    + decoder band embedding; ``decoder_depth`` blocks of spectral attention (over the C bands at
    each position); a linear head per kernel-bank size predicts a k x k patch, bilinearly resized
    to the group's patch size. A separate small head predicts each band token's (mean, std) from
    the encoder's position token (the decoder's context where the encoder saw no band) and the
    band's embedding only, so the position tokens (the embedding users get) must carry each
    location's spectrum, while the pixel pathway keeps its capacity."""

    def __init__(self, cfg: AOMConfig, band_dim: int) -> None:
        super().__init__()
        dd = cfg.decoder_dim
        self.in_band = nn.Linear(band_dim, dd)
        self.in_pos = nn.Linear(cfg.embed_dim, dd)
        self.cfg = cfg
        self.pos_mask_token = nn.Parameter(torch.zeros(dd))  # positions without a visible band
        nn.init.normal_(self.pos_mask_token, std=0.02)
        self.spatial = nn.ModuleList(
            Block(dd, cfg.decoder_heads, 2.0) for _ in range(cfg.decoder_spatial_depth)
        )
        self.mask_token = nn.Parameter(torch.zeros(dd))
        nn.init.normal_(self.mask_token, std=0.02)
        self.band_embedding = BandEmbedding(
            dd,
            cfg.band_fourier_features,
            cfg.band_min_freq_per_um,
            cfg.band_max_freq_per_um,
            cfg.num_band_ids,
        )
        self.blocks = nn.ModuleList(Block(dd, cfg.decoder_heads, 2.0) for _ in range(cfg.decoder_depth))
        self.spectral_bias = (
            nn.ModuleList(SpectralDistanceBias(cfg.decoder_heads) for _ in range(cfg.decoder_depth))
            if cfg.spectral_distance_bias
            else None
        )
        self.norm = nn.LayerNorm(dd, eps=1e-6)
        self.heads = nn.ModuleDict({str(k): nn.Linear(dd, k * k) for k in cfg.kernel_sizes})
        self.stats_readout = cfg.stats_readout
        self.stats_pos = nn.Sequential(nn.LayerNorm(cfg.embed_dim, eps=1e-6), nn.Linear(cfg.embed_dim, dd))
        self.stats_fill = nn.Linear(dd, cfg.embed_dim)  # position context -> D where nothing was encoded
        # linear: per band, 2 read-out vectors + 2 biases from its embedding; mlp: (mean, std) directly
        self.stats_head = Mlp(dd, 2 * dd, 2 * dd + 2 if cfg.stats_readout == "linear" else 2)
        # chip statistics (``pooled_stats_weight``): per band, 2 read-out vectors of the pooled
        # embedding + 2 biases from the band's embedding; only built when the term is on, from a
        # forked RNG: the other modules' seeded init (so a random-init baseline) is the same
        # with or without it
        self.pool_stats: Mlp | None = None
        if cfg.pooled_stats_weight > 0:
            with torch.random.fork_rng(devices=[]):
                self.pool_stats = Mlp(dd, 2 * dd, 2 * cfg.embed_dim + 2)

    def forward(
        self,
        band_tokens: Tensor,  # [B, N, C, d_band]
        pos_tokens: Tensor,  # [B, N, D]
        pos_valid: Tensor,  # [B, N] bool: the encoder saw a band at this position
        coords: Tensor,  # [B, N, 2] ground metres of token centres
        masked: Tensor,  # [B, N, C] bool
        present: Tensor,  # [B, N, C] bool
        wavelength_nm: Tensor,  # [B, C]
        fwhm_nm: Tensor,  # [B, C]
        band_valid: Tensor,  # [B, C]
        band_id: Tensor | None,  # [B, C]
    ) -> tuple[Tensor, Tensor]:  # hidden [B, N, C, d_dec], position context [B, N, d_dec]
        b, n, c, _ = band_tokens.shape
        cfg = self.cfg
        ctx = torch.where(pos_valid[..., None], self.in_pos(pos_tokens), self.pos_mask_token)  # [B, N, d_dec]
        if len(self.spatial):
            rope = ground_rope(
                coords, ctx.shape[-1] // cfg.decoder_heads, cfg.pos_min_period_m, cfg.pos_max_period_m
            )
            pos_keys = drop_if_all(present.any(dim=-1))  # [B, N]: positions with any present band
            for sblk in self.spatial:
                ctx = sblk(ctx, pos_keys, None, rope)  # [B, N, d_dec]
        x = self.in_band(band_tokens) + ctx[:, :, None, :]  # [B, N, C, d_dec]
        x = x + masked[..., None].to(x.dtype) * self.mask_token
        x = x + self.band_embedding(wavelength_nm, fwhm_nm, band_valid, band_id)[:, None]
        h = x.reshape(b * n, c, -1)  # [B*N, C, d_dec]
        keys = drop_if_all(present.reshape(b * n, c))
        for i, blk in enumerate(self.blocks):
            bias = (
                None if self.spectral_bias is None else per_position(self.spectral_bias[i](wavelength_nm), n)
            )
            h = blk(h, keys, bias)  # [B*N, C, d_dec]
        return self.norm(h).reshape(b, n, c, -1), ctx

    def predict(self, hidden: Tensor, kernel_size: int, patch_hw: tuple[int, int]) -> Tensor:
        """[B, N, C_g, d_dec] -> [B, N, C_g, ph*pw] normalised pixels of each token's patch."""
        out = self.heads[str(kernel_size)](hidden)  # [B, N, C_g, k*k]
        if patch_hw != (kernel_size, kernel_size):
            r = resize_matrix((kernel_size, kernel_size), patch_hw).to(out.device, out.dtype)  # [P, k*k]
            out = out @ r.T
        return out

    def predict_stats(
        self,
        pos_tokens: Tensor,  # [B, N, D]
        pos_valid: Tensor,  # [B, N] bool: the encoder saw a band at this position
        pos_ctx: Tensor,  # [B, N, d_dec] decoder position context (used where pos_valid is False)
        wavelength_nm: Tensor,  # [B, C]
        fwhm_nm: Tensor,  # [B, C]
        band_valid: Tensor,  # [B, C]
        band_id: Tensor | None,  # [B, C]
    ) -> Tensor:  # [B, N, C, 2] (mean, std) of each band token's band-normalised pixels
        band = self.band_embedding(wavelength_nm, fwhm_nm, band_valid, band_id)  # [B, C, d_dec]
        src = torch.where(pos_valid[..., None], pos_tokens, self.stats_fill(pos_ctx))  # [B, N, D]
        q = self.stats_pos(src)  # [B, N, d_dec]
        if self.stats_readout == "mlp":
            return self.stats_head(q[:, :, None, :] + band[:, None])
        b, c, dd = band.shape
        read = self.stats_head(band)  # [B, C, 2*d_dec + 2]
        w = read[..., : 2 * dd].reshape(b, c, 2, dd)  # [B, C, 2, d_dec]
        bias = read[..., 2 * dd :]  # [B, C, 2]
        return torch.einsum("bnd,bcjd->bncj", q, w) / dd**0.5 + bias[:, None]  # [B, N, C, 2]

    def predict_pooled_stats(
        self,
        pooled: Tensor,  # [B, D] pooled embedding of a chip
        wavelength_nm: Tensor,  # [B, C]
        fwhm_nm: Tensor,  # [B, C]
        band_valid: Tensor,  # [B, C]
        band_id: Tensor | None,  # [B, C]
    ) -> Tensor:  # [B, C, 2] (mean, std) of each band's band-normalised pixels over the chip
        """A linear function of ``pooled`` per band (so of the mean of the chip's position tokens)."""
        if self.pool_stats is None:
            raise ValueError("this model has no chip-statistics head (pooled_stats_weight is 0)")
        band = self.band_embedding(wavelength_nm, fwhm_nm, band_valid, band_id)  # [B, C, d_dec]
        b, c, _ = band.shape
        d = pooled.shape[-1]
        read = self.pool_stats(band)  # [B, C, 2*D + 2]
        w = read[..., : 2 * d].reshape(b, c, 2, d)  # [B, C, 2, D]
        return torch.einsum("bd,bcjd->bcj", pooled, w) / d**0.5 + read[..., 2 * d :]  # [B, C, 2]
