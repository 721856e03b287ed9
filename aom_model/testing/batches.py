"""Synthetic inputs for tests, benchmarks and smoke runs (no data download, explicit generators)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from aom_model.inputs import BandBatch, BandGroup

# (name, centre wavelength nm, FWHM nm, GSD m)
SENTINEL2: tuple[tuple[str, float, float, float], ...] = (
    ("B01", 443.0, 20.0, 60.0),
    ("B02", 490.0, 65.0, 10.0),
    ("B03", 560.0, 35.0, 10.0),
    ("B04", 665.0, 30.0, 10.0),
    ("B05", 705.0, 15.0, 20.0),
    ("B06", 740.0, 15.0, 20.0),
    ("B07", 783.0, 20.0, 20.0),
    ("B08", 842.0, 115.0, 10.0),
    ("B8A", 865.0, 20.0, 20.0),
    ("B09", 945.0, 20.0, 60.0),
    ("B10", 1375.0, 30.0, 60.0),
    ("B11", 1610.0, 90.0, 20.0),
    ("B12", 2190.0, 180.0, 20.0),
)
# MODIS land bands 1-7 (never used to build the model: an "unseen sensor")
MODIS: tuple[tuple[str, float, float, float], ...] = (
    ("B1", 645.0, 50.0, 250.0),
    ("B2", 858.5, 35.0, 250.0),
    ("B3", 469.0, 20.0, 500.0),
    ("B4", 555.0, 20.0, 500.0),
    ("B5", 1240.0, 20.0, 500.0),
    ("B6", 1640.0, 24.0, 500.0),
    ("B7", 2130.0, 50.0, 500.0),
)


def smooth_field(shape: Sequence[int], generator: torch.Generator, waves: int = 3) -> Tensor:
    """[B, C, H, W] sum of random plane waves (image-like, spatially smooth)."""
    b, c, h, w = shape
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    out = torch.zeros(b, c, h, w)
    for _ in range(waves):
        f = torch.rand(b, c, 2, generator=generator) * 4
        ph = torch.rand(b, c, generator=generator) * 2 * math.pi
        out += torch.sin(
            2 * math.pi * (f[..., 0, None, None] * yy + f[..., 1, None, None] * xx) + ph[..., None, None]
        )
    return out


def sensor_batch(
    bands: Sequence[tuple[str, float, float, float]],
    batch: int,
    extent_m: float,
    generator: torch.Generator,
    aspect: float = 1.0,
) -> BandBatch:
    """One group per GSD at native pixel size covering ``extent_m`` x ``extent_m * aspect``."""
    by_gsd: dict[float, list[tuple[str, float, float, float]]] = {}
    for band in bands:
        by_gsd.setdefault(band[3], []).append(band)
    groups = []
    for gsd, members in sorted(by_gsd.items()):
        h, w = round(extent_m / gsd), round(extent_m * aspect / gsd)
        c = len(members)
        groups.append(
            BandGroup(
                pixels=smooth_field((batch, c, h, w), generator),
                wavelength_nm=torch.tensor([m[1] for m in members])[None].expand(batch, c),
                fwhm_nm=torch.tensor([m[2] for m in members])[None].expand(batch, c),
                gsd_m=torch.full((batch,), gsd),
            )
        )
    return BandBatch(tuple(groups))
