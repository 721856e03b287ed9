"""Synthetic inputs for tests, benchmarks and smoke runs (no data download, explicit generators).

Band identities are arguments, never tables here: the project's band tables live only in the sensor
registry (``pipelines/data/sensors.yaml``), which ``aom_model`` does not import. Callers pass
registry bands (``load_registry().sensor("sentinel-2-msi").bands``) or any object with a centre
wavelength, FWHM and GSD (:class:`BandIdentity`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from aom_model.inputs import BandBatch, BandGroup


class BandIdentity(Protocol):
    """What the model needs of one band (the registry's ``BandSpec`` is one)."""

    @property
    def center_wavelength_nm(self) -> float: ...

    @property
    def fwhm_nm(self) -> float: ...

    @property
    def gsd_m(self) -> float: ...


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
    bands: Sequence[BandIdentity],
    batch: int,
    extent_m: float,
    generator: torch.Generator,
    aspect: float = 1.0,
) -> BandBatch:
    """One group per GSD (finest first) at native pixel size covering ``extent_m`` x ``extent_m * aspect``."""
    by_gsd: dict[float, list[BandIdentity]] = {}
    for band in bands:
        by_gsd.setdefault(float(band.gsd_m), []).append(band)
    groups = []
    for gsd, members in sorted(by_gsd.items()):
        h, w = round(extent_m / gsd), round(extent_m * aspect / gsd)
        c = len(members)
        groups.append(
            BandGroup(
                pixels=smooth_field((batch, c, h, w), generator),  # [B, C, H, W]
                wavelength_nm=torch.tensor([float(m.center_wavelength_nm) for m in members])[None].expand(
                    batch, c
                ),
                fwhm_nm=torch.tensor([float(m.fwhm_nm) for m in members])[None].expand(batch, c),
                gsd_m=torch.full((batch,), gsd),
            )
        )
    return BandBatch(tuple(groups))
