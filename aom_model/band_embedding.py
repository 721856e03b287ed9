"""Band embedding from a band's physical identity: Fourier features of (centre wavelength, FWHM)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class BandEmbedding(nn.Module):
    """(wavelength_nm, fwhm_nm) [B, C] -> [B, C, dim].

    Wavelength and FWHM in micrometres go through log-spaced sin/cos features plus their logs, then a
    two-layer MLP, so any sensor (seen or not) gets an embedding. ``num_band_ids > 0`` adds a
    zero-initialised learned vector for registry band ids >= 0 (id -1 = unknown, nothing added).
    """

    def __init__(
        self,
        dim: int,
        num_freqs: int = 16,
        min_freq_per_um: float = 0.1,
        max_freq_per_um: float = 200.0,
        num_band_ids: int = 0,
    ) -> None:
        super().__init__()
        freqs = torch.logspace(math.log10(min_freq_per_um), math.log10(max_freq_per_um), num_freqs)
        self.register_buffer("freqs", 2 * math.pi * freqs, persistent=False)  # [F] rad / um
        in_dim = 2 * 2 * num_freqs + 4
        self.mlp = nn.Sequential(nn.Linear(in_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.table: nn.Embedding | None = None
        if num_band_ids > 0:
            self.table = nn.Embedding(num_band_ids, dim)
            nn.init.zeros_(self.table.weight)

    def forward(
        self,
        wavelength_nm: Tensor,  # [B, C]
        fwhm_nm: Tensor,  # [B, C]
        band_valid: Tensor | None = None,  # [B, C] bool; invalid bands get finite dummy metadata
        band_id: Tensor | None = None,  # [B, C] long, -1 unknown
    ) -> Tensor:  # [B, C, dim]
        wl = wavelength_nm.float() / 1000.0  # [B, C] um
        fw = fwhm_nm.float() / 1000.0
        if band_valid is not None:
            wl = torch.where(band_valid, wl, torch.ones_like(wl))
            fw = torch.where(band_valid, fw, torch.full_like(fw, 0.05))
        freqs: Tensor = self.freqs  # type: ignore[assignment]
        feats = []
        for q in (wl, fw):
            ang = q[..., None] * freqs  # [B, C, F]
            feats += [ang.sin(), ang.cos()]
        feats += [wl[..., None], wl.clamp(min=1e-3).log()[..., None], fw[..., None] * 10.0]
        feats.append(fw.clamp(min=1e-4).log()[..., None])
        emb = self.mlp(torch.cat(feats, dim=-1))  # [B, C, dim]
        if self.table is not None and band_id is not None:
            known = (band_id >= 0) & (band_id < self.table.num_embeddings)
            idx = torch.where(known, band_id, torch.zeros_like(band_id))
            emb = emb + self.table(idx) * known[..., None].to(emb.dtype)
        return emb
