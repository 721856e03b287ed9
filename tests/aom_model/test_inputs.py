"""BandBatch construction and validation; config round-trip."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from aom_model import AOM, AOMConfig, BandBatch, BandGroup
from aom_model.testing import sensor_batch
from pipelines.registry import load_registry

torch.set_num_threads(1)
SENTINEL2 = load_registry().sensor("sentinel-2-msi").bands  # 10/20/60 m

WL = [490.0, 560.0, 665.0]
FW = [65.0, 35.0, 30.0]


def _batch(c: int = 3, h: int = 16, w: int = 16) -> BandBatch:
    return BandBatch.from_tensor(torch.randn(2, c, h, w), WL[:c], FW[:c], 10.0)


def test_from_tensor_shapes() -> None:
    b = _batch().validate()
    g = b.groups[0]
    assert g.wavelength_nm.shape == (2, 3) and g.gsd_m.shape == (2,)
    assert b.num_bands == 3 and b.batch_size == 2


def test_from_bands_groups_by_gsd() -> None:
    px = [torch.randn(2, 12, 12), torch.randn(2, 6, 6), torch.randn(2, 12, 12)]
    b = BandBatch.from_bands(px, [490.0, 1610.0, 665.0], [65.0, 90.0, 30.0], [10.0, 20.0, 10.0]).validate()
    assert [g.num_bands for g in b.groups] == [2, 1]
    assert b.groups[1].hw == (6, 6)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: BandBatch.from_tensor(torch.randn(2, 3, 8, 8), WL[:2], FW, 10.0), "3 bands"),
        (lambda: BandBatch.from_tensor(torch.randn(2, 3, 8, 8), WL, FW[:1], 10.0), "3 bands"),
        (lambda: BandBatch.from_tensor(torch.randn(2, 3, 8, 8), WL, FW, [10.0, 10.0, 10.0, 10.0]), "gsd_m"),
        (lambda: BandBatch.from_bands([torch.randn(2, 8, 8)], WL, FW[:1], [10.0]), "mismatched"),
        (
            lambda: BandBatch.from_tensor(torch.randn(2, 3, 8, 8), [490.0, float("nan"), 665.0], FW, 10.0),
            "NaN",
        ),
        (lambda: BandBatch.from_tensor(torch.randn(2, 3, 8, 8), WL, FW, 0.0), "gsd_m must be finite and > 0"),
        (lambda: BandBatch.from_tensor(torch.randn(2, 3, 8, 8), WL, FW, -5.0), "gsd_m"),
        (lambda: BandBatch.from_tensor(torch.randn(2, 3, 8, 8), WL, [65.0, 0.0, 30.0], 10.0), "fwhm_nm"),
        (lambda: BandBatch(()), "empty band set"),
        (lambda: BandBatch.from_bands([], [], [], []), "empty band set"),
        (lambda: BandBatch.from_tensor(torch.randn(2, 0, 8, 8), [], [], 10.0), "empty band set"),
        (
            lambda: BandBatch.from_tensor(
                torch.randn(2, 3, 8, 8), WL, FW, 10.0, band_valid=torch.zeros(2, 3, dtype=torch.bool)
            ),
            "empty band set",
        ),
    ],
)
def test_clear_errors(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make().validate()


def test_group_level_length_mismatch_and_extent() -> None:
    g = _batch().groups[0]
    bad = dataclasses.replace(g, wavelength_nm=g.wavelength_nm[:, :2])
    with pytest.raises(ValueError, match="one entry per band"):
        BandBatch((bad,)).validate()
    # 20 m group of 16 px covers 320 m, the 10 m group 160 m
    coarse = BandGroup(
        torch.randn(2, 1, 16, 16),
        torch.full((2, 1), 1610.0),
        torch.full((2, 1), 90.0),
        torch.full((2,), 20.0),
    )
    with pytest.raises(ValueError, match="extent mismatch"):
        BandBatch((g, coarse)).validate()
    ok = BandGroup(
        torch.randn(2, 1, 8, 8), torch.full((2, 1), 1610.0), torch.full((2, 1), 90.0), torch.full((2,), 20.0)
    )
    BandBatch((g, ok)).validate()


def test_per_band_gsd_must_agree_within_group() -> None:
    b = BandBatch.from_tensor(torch.randn(1, 3, 8, 8), WL, FW, [10.0, 20.0, 10.0])
    with pytest.raises(ValueError, match="share one pixel size"):
        b.validate()


def test_model_validates_inputs() -> None:
    model = AOM(AOMConfig.named("tiny"))
    b = BandBatch.from_tensor(torch.randn(1, 3, 16, 16), WL, FW, 0.0)
    with pytest.raises(ValueError, match="gsd_m"):
        model.forward_features(b)


def test_coarsen_keeps_extent() -> None:
    b = sensor_batch(SENTINEL2, 2, 480.0, torch.Generator().manual_seed(0))
    c = b.coarsen(2).validate()
    for gb, gc in zip(b.groups, c.groups):
        assert gc.hw == (gb.hw[0] // 2, gb.hw[1] // 2)
        assert torch.allclose(gc.gsd_m, gb.gsd_m * 2)


def test_config_named_and_roundtrip() -> None:
    base = AOMConfig.named("base")
    assert (base.embed_dim, base.depth, base.num_heads) == (768, 12, 12)
    assert AOMConfig.named("tiny").mask_ratio == 0.75
    for name in ("tiny", "small", "base"):
        cfg = AOMConfig.named(name)
        assert AOMConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown AOMConfig keys"):
        AOMConfig.from_dict({**AOMConfig().to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="layout"):
        AOMConfig(layout="diagonal")
    with pytest.raises(ValueError, match="unknown config name"):
        AOMConfig.named("huge")
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.depth = 3  # type: ignore[misc]  # frozen: the refused assignment is the point
