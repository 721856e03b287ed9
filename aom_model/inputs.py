"""Input containers: a batch of bands grouped by pixel grid, with physical band metadata.

A sample is a set of bands. Bands sharing one pixel grid (same GSD, same height/width) form a
``BandGroup``; a ``BandBatch`` is a list of groups that all cover the same ground extent, so
Sentinel-2's 10/20/60 m bands are three groups and nothing is resampled. Sensors with different
band sets are mixed in one batch by padding a group's channel axis with ``band_valid=False``:
absent bands become absent tokens (excluded from attention and pooling), never zero-filled data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class BandGroup:
    """Bands of one pixel grid.

    pixels:       [B, C_g, H_g, W_g] float
    wavelength_nm:[B, C_g] centre wavelength (nm)
    fwhm_nm:      [B, C_g] full width at half maximum (nm)
    gsd_m:        [B] or [B, C_g] ground sample distance (m); bands of a group share a pixel size
    band_valid:   [B, C_g] bool or None (all valid); False = padded / absent band -> no token
    pixel_valid:  [B, C_g, H_g, W_g] bool or None; non-finite pixels are always invalid
    band_id:      [B, C_g] long or None; registry band id for the optional learned table, -1 unknown
    """

    pixels: Tensor
    wavelength_nm: Tensor
    fwhm_nm: Tensor
    gsd_m: Tensor
    band_valid: Tensor | None = None
    pixel_valid: Tensor | None = None
    band_id: Tensor | None = None

    @property
    def num_bands(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.pixels.shape[-2]), int(self.pixels.shape[-1])

    def valid_bands(self) -> Tensor:  # [B, C_g] bool
        if self.band_valid is None:
            return torch.ones(self.pixels.shape[:2], dtype=torch.bool, device=self.pixels.device)
        return self.band_valid

    def gsd_per_band(self) -> Tensor:  # [B, C_g]
        if self.gsd_m.dim() == 1:
            return self.gsd_m[:, None].expand(-1, self.num_bands)
        return self.gsd_m

    def gsd_per_sample(self) -> Tensor:  # [B] mean GSD over valid bands (1.0 where none valid)
        valid = self.valid_bands()
        gsd = torch.where(valid, self.gsd_per_band(), torch.zeros_like(self.gsd_per_band()))
        count = valid.sum(dim=1)
        return torch.where(
            count > 0, gsd.sum(dim=1) / count.clamp(min=1), torch.ones_like(count, dtype=gsd.dtype)
        )

    def to(self, device: torch.device | str) -> BandGroup:
        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return BandGroup(
            self.pixels.to(device),
            self.wavelength_nm.to(device),
            self.fwhm_nm.to(device),
            self.gsd_m.to(device),
            mv(self.band_valid),
            mv(self.pixel_valid),
            mv(self.band_id),
        )


@dataclass(frozen=True)
class BandBatch:
    """A batch of samples, each a set of bands in one or more pixel-grid groups."""

    groups: tuple[BandGroup, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", tuple(self.groups))

    @property
    def batch_size(self) -> int:
        return int(self.groups[0].pixels.shape[0]) if self.groups else 0

    @property
    def num_bands(self) -> int:
        return sum(g.num_bands for g in self.groups)

    def to(self, device: torch.device | str) -> BandBatch:
        return BandBatch(tuple(g.to(device) for g in self.groups))

    # ------------------------------------------------------------------------------------------
    def validate(self, extent_rtol: float = 0.02) -> BandBatch:
        """Check shapes and physical metadata once; raise ``ValueError`` with a clear message."""
        if len(self.groups) == 0:
            raise ValueError("empty band set: BandBatch has no band groups")
        batch = self.batch_size
        total_valid: Tensor | None = None
        for gi, g in enumerate(self.groups):
            name = f"group {gi}"
            if g.pixels.dim() != 4:
                raise ValueError(f"{name}: pixels must be [B, C, H, W], got shape {tuple(g.pixels.shape)}")
            if not g.pixels.is_floating_point():
                raise ValueError(f"{name}: pixels must be a floating tensor, got {g.pixels.dtype}")
            b, c, h, w = g.pixels.shape
            if b != batch:
                raise ValueError(f"{name}: batch size {b} != {batch} of group 0")
            if h < 1 or w < 1:
                raise ValueError(f"{name}: empty pixel grid {h}x{w}")
            for field in ("wavelength_nm", "fwhm_nm", "band_valid", "band_id"):
                t = getattr(g, field)
                if t is not None and tuple(t.shape) != (b, c):
                    raise ValueError(
                        f"{name}: {field} has shape {tuple(t.shape)} but pixels have {c} bands for {b} "
                        f"samples (expected ({b}, {c})); pixels, wavelengths, FWHMs and GSDs must have "
                        "one entry per band"
                    )
            if tuple(g.gsd_m.shape) not in ((b,), (b, c)):
                raise ValueError(
                    f"{name}: gsd_m has shape {tuple(g.gsd_m.shape)}; expected ({b},) or ({b}, {c}) "
                    "(one GSD per sample or per band)"
                )
            if g.pixel_valid is not None and tuple(g.pixel_valid.shape) != tuple(g.pixels.shape):
                raise ValueError(
                    f"{name}: pixel_valid shape {tuple(g.pixel_valid.shape)} != pixels {tuple(g.pixels.shape)}"
                )
            if g.band_valid is not None and g.band_valid.dtype != torch.bool:
                raise ValueError(f"{name}: band_valid must be bool")
            if g.pixel_valid is not None and g.pixel_valid.dtype != torch.bool:
                raise ValueError(f"{name}: pixel_valid must be bool")
            valid = g.valid_bands()
            wl, fw, gsd = g.wavelength_nm, g.fwhm_nm, g.gsd_per_band()
            if bool((valid & ~torch.isfinite(wl)).any()):
                raise ValueError(f"{name}: wavelength_nm contains NaN/inf for a valid band")
            if bool((valid & (wl <= 0)).any()):
                raise ValueError(f"{name}: wavelength_nm must be > 0")
            if bool((valid & ~(torch.isfinite(fw) & (fw > 0))).any()):
                raise ValueError(f"{name}: fwhm_nm must be finite and > 0 for valid bands")
            if bool((valid & ~(torch.isfinite(gsd) & (gsd > 0))).any()):
                raise ValueError(
                    f"{name}: gsd_m must be finite and > 0 for valid bands (got a GSD <= 0 or NaN)"
                )
            ref = g.gsd_per_sample()[:, None].expand_as(gsd)
            if bool((valid & ((gsd - ref).abs() > 1e-3 * ref)).any()):
                raise ValueError(
                    f"{name}: bands of one group must share one pixel size (GSD); put bands of another "
                    "GSD in their own group"
                )
            count = valid.sum(dim=1)
            total_valid = count if total_valid is None else total_valid + count
        assert total_valid is not None
        if bool((total_valid == 0).any()):
            bad = torch.nonzero(total_valid == 0).flatten().tolist()
            raise ValueError(f"empty band set: samples {bad} have no valid band")
        # every group with a valid band must cover the sample's common ground extent
        extents = []  # per group: [B, 2] metres, NaN where the group has no valid band for a sample
        for g in self.groups:
            h, w = g.hw
            gsd = g.gsd_per_sample()
            has = g.valid_bands().any(dim=1)
            ext = torch.stack([gsd * h, gsd * w], dim=1)
            extents.append(torch.where(has[:, None], ext, torch.full_like(ext, float("nan"))))
        ext_all = torch.stack(extents, dim=0)  # [G, B, 2]
        ref_ext = torch.nanmedian(ext_all, dim=0).values  # [B, 2]
        tol = torch.stack([g.gsd_per_sample() for g in self.groups]).max(dim=0).values[:, None]  # [B, 1]
        tol = torch.maximum(tol, extent_rtol * ref_ext)
        bad_ext = (ext_all - ref_ext[None]).abs() > tol[None]
        if bool(bad_ext.any()):
            gi, bi, _ = (int(v) for v in torch.nonzero(bad_ext)[0])
            raise ValueError(
                f"extent mismatch: group {gi} of sample {bi} covers "
                f"{ext_all[gi, bi].tolist()} m but the sample's other groups cover {ref_ext[bi].tolist()} m; "
                "all groups of a sample must cover the same ground extent"
            )
        return self

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_tensor(
        cls,
        pixels: Tensor,
        wavelength_nm: Sequence[float] | Tensor,
        fwhm_nm: Sequence[float] | Tensor,
        gsd_m: float | Sequence[float] | Tensor,
        band_valid: Tensor | None = None,
        pixel_valid: Tensor | None = None,
        band_id: Sequence[int] | Tensor | None = None,
    ) -> BandBatch:
        """One pixel grid: ``pixels [B, C, H, W]`` plus per-band lists (or ``[B, C]`` tensors).

        ``gsd_m``: a float, one value per sample, or one value per band (all equal within the grid).
        """
        if pixels.dim() != 4:
            raise ValueError(f"pixels must be [B, C, H, W], got shape {tuple(pixels.shape)}")
        b, c = int(pixels.shape[0]), int(pixels.shape[1])
        dev = pixels.device

        def per_band(x: Sequence[float] | Tensor, name: str, dtype: torch.dtype) -> Tensor:
            t = torch.as_tensor(x, dtype=dtype, device=dev)
            if t.dim() == 1:
                if t.shape[0] != c:
                    raise ValueError(f"{name} has {t.shape[0]} entries but pixels have {c} bands")
                t = t[None].expand(b, c)
            return t

        if isinstance(gsd_m, int | float):
            gsd = torch.full((b,), float(gsd_m), device=dev)
        else:
            gsd = torch.as_tensor(gsd_m, dtype=torch.float32, device=dev)
            if gsd.dim() == 1 and gsd.shape[0] == c and c != b:
                gsd = gsd[None].expand(b, c)
            elif gsd.dim() == 1 and gsd.shape[0] != b:
                raise ValueError(
                    f"gsd_m has {gsd.shape[0]} entries; expected 1, {b} (samples) or {c} (bands)"
                )
        group = BandGroup(
            pixels=pixels.float(),
            wavelength_nm=per_band(wavelength_nm, "wavelength_nm", torch.float32),
            fwhm_nm=per_band(fwhm_nm, "fwhm_nm", torch.float32),
            gsd_m=gsd,
            band_valid=band_valid,
            pixel_valid=pixel_valid,
            band_id=None if band_id is None else per_band(band_id, "band_id", torch.long),
        )
        return cls((group,))

    @classmethod
    def from_bands(
        cls,
        pixels: Sequence[Tensor],
        wavelength_nm: Sequence[float],
        fwhm_nm: Sequence[float],
        gsd_m: Sequence[float],
        band_id: Sequence[int] | None = None,
    ) -> BandBatch:
        """One tensor ``[B, H_i, W_i]`` per band at its native GSD; bands are grouped by (GSD, H, W)."""
        n = len(pixels)
        lengths = {"wavelength_nm": len(wavelength_nm), "fwhm_nm": len(fwhm_nm), "gsd_m": len(gsd_m)}
        if band_id is not None:
            lengths["band_id"] = len(band_id)
        if n == 0:
            raise ValueError("empty band set: no band given")
        bad = {k: v for k, v in lengths.items() if v != n}
        if bad:
            raise ValueError(f"{n} pixel arrays but mismatched metadata lengths: {bad}")
        keys: dict[tuple[float, int, int], list[int]] = {}
        for i, p in enumerate(pixels):
            if p.dim() != 3:
                raise ValueError(f"band {i}: pixels must be [B, H, W], got shape {tuple(p.shape)}")
            keys.setdefault((float(gsd_m[i]), int(p.shape[-2]), int(p.shape[-1])), []).append(i)
        groups = []
        for (gsd, _, _), idx in keys.items():
            px = torch.stack([pixels[i].float() for i in idx], dim=1)  # [B, C_g, H, W]
            b = px.shape[0]
            dev = px.device
            groups.append(
                BandGroup(
                    pixels=px,
                    wavelength_nm=torch.tensor([wavelength_nm[i] for i in idx], device=dev)[None].expand(
                        b, -1
                    ),
                    fwhm_nm=torch.tensor([fwhm_nm[i] for i in idx], device=dev)[None].expand(b, -1),
                    gsd_m=torch.full((b,), gsd, device=dev),
                    band_id=None
                    if band_id is None
                    else torch.tensor([band_id[i] for i in idx], device=dev)[None].expand(b, -1),
                )
            )
        return cls(tuple(groups))

    def coarsen(self, factor: int) -> BandBatch:
        """The same area at ``factor`` x coarser GSD (area average; a coarse pixel is valid if any
        fine pixel under it is; the average is over valid fine pixels only)."""
        if factor < 1:
            raise ValueError(f"coarsening factor must be >= 1, got {factor}")
        out = []
        for g in self.groups:
            h, w = g.hw
            if h % factor or w % factor:
                raise ValueError(f"grid {h}x{w} is not divisible by coarsening factor {factor}")
            valid = torch.isfinite(g.pixels)
            if g.pixel_valid is not None:
                valid = valid & g.pixel_valid
            vf = valid.float()
            x = torch.where(valid, g.pixels, torch.zeros_like(g.pixels))
            s = F.avg_pool2d(x, factor)
            cnt = F.avg_pool2d(vf, factor)
            px = s / cnt.clamp(min=1e-6)
            pv = cnt > 0
            out.append(
                dataclasses.replace(
                    g,
                    pixels=px,
                    gsd_m=g.gsd_m * factor,
                    pixel_valid=None if g.pixel_valid is None and bool(pv.all()) else pv,
                )
            )
        return BandBatch(tuple(out))
