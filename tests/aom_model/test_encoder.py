"""Encoder behaviour: band-order invariance, band counts, mixed GSDs, unseen sensors, padding."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from aom_model import AOM, AOMConfig, BandBatch, BandGroup
from aom_model.testing import sensor_batch
from pipelines.registry import load_registry

torch.set_num_threads(1)
LAYOUTS = ("factorized", "joint")
REGISTRY = load_registry()
SENTINEL2 = REGISTRY.sensor("sentinel-2-msi").bands  # 12 bands at 10/20/60 m
SENTINEL2_13 = REGISTRY.sensor("hls-s30").bands  # the same 12 wavelengths and the B10 cirrus band
MODIS = REGISTRY.sensor("modis-mcd43a4").bands  # 7 bands at 463.3 m: a sensor the model never saw


def _model(layout: str, **kw: object) -> AOM:
    torch.manual_seed(0)
    return AOM(AOMConfig.named("tiny", layout=layout, **kw)).eval()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_band_order_invariance(layout: str) -> None:
    model = _model(layout, num_band_ids=32)
    b = sensor_batch(SENTINEL2, 2, 480.0, torch.Generator().manual_seed(0))
    b = BandBatch(
        tuple(
            dataclasses.replace(g, band_id=torch.arange(g.num_bands)[None].expand(2, -1) + 3 * i)
            for i, g in enumerate(b.groups)
        )
    )
    g = torch.Generator().manual_seed(1)
    permuted = []
    for grp in reversed(b.groups):  # permute group order too
        p = torch.randperm(grp.num_bands, generator=g)
        assert grp.band_id is not None  # set above
        permuted.append(
            BandGroup(
                grp.pixels[:, p],
                grp.wavelength_nm[:, p],
                grp.fwhm_nm[:, p],
                grp.gsd_m,
                band_id=grp.band_id[:, p],
            )
        )
    with torch.no_grad():
        a = model.forward_features(b)
        c = model.forward_features(BandBatch(tuple(permuted)))
    torch.testing.assert_close(a.tokens, c.tokens, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.pooled, c.pooled, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_to_thirteen_bands_non_square(layout: str) -> None:
    model = _model(layout)
    wl = [b.center_wavelength_nm for b in SENTINEL2_13]
    fw = [b.fwhm_nm for b in SENTINEL2_13]
    with torch.no_grad():
        for c in range(1, 14):
            b = BandBatch.from_tensor(torch.randn(2, c, 32, 48), wl[:c], fw[:c], 10.0)
            out = model.forward_features(b, return_band_tokens=True)
            assert out.tokens.shape == (2, 6, 64) and out.grid_hw == (2, 3)
            assert out.pooled.shape == (2, 64)
            assert out.band_tokens is not None and out.band_tokens.shape[:3] == (2, 6, c)
            assert torch.isfinite(out.tokens).all()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_mixed_gsd_sentinel2_and_unseen_modis(layout: str) -> None:
    model = _model(layout)
    gen = torch.Generator().manual_seed(0)
    s2 = sensor_batch(SENTINEL2, 2, 960.0, gen, aspect=1.5)  # 10/20/60 m groups, non-square
    modis = sensor_batch(MODIS, 2, 8 * MODIS[0].gsd_m, gen)  # never seen, just wavelengths; 8 x 8 px
    with torch.no_grad():
        o1 = model.forward_features(s2)
        o2 = model.forward_features(modis)
    assert [g.hw for g in s2.groups] == [(96, 144), (48, 72), (16, 24)]
    assert o1.grid_hw[1] / o1.grid_hw[0] == 1.5
    assert torch.isfinite(o1.pooled).all() and torch.isfinite(o2.pooled).all()
    assert len(modis.groups) == 1 and o2.grid_hw == (8, 8)  # pixels coarser than 160 m: 1 px per token


@pytest.mark.parametrize("layout", LAYOUTS)
def test_absent_band_equals_missing_band(layout: str) -> None:
    """Padding a sample's band set with an absent band (band_valid False) changes nothing, whatever
    the padded pixels hold: absent bands are absent tokens, not zero-filled data."""
    model = _model(layout)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 32, 32, generator=gen)
    wl, fw = [490.0, 560.0, 665.0, 842.0], [65.0, 35.0, 30.0, 115.0]
    valid = torch.tensor([[True, True, True, True], [True, False, True, True]])
    x[1, 1] = float("nan")  # garbage in the padded slot
    padded = BandBatch.from_tensor(x, wl, fw, 10.0, band_valid=valid)
    keep = [0, 2, 3]
    alone = BandBatch.from_tensor(x[1:2, keep], [wl[i] for i in keep], [fw[i] for i in keep], 10.0)
    with torch.no_grad():
        a = model.forward_features(padded)
        b = model.forward_features(alone)
    torch.testing.assert_close(a.tokens[1:2], b.tokens, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.pooled[1:2], b.pooled, atol=1e-5, rtol=1e-4)


def test_mixed_sensors_in_one_batch() -> None:
    """Sample 0: 3 bands; sample 1: 2 other bands; one GSD (same pixel grid via padding)."""
    model = _model("factorized", token_ground_m=80.0)
    px = torch.randn(2, 5, 16, 16)
    wl = torch.tensor([[490.0, 560.0, 665.0, 0.0, 0.0], [0.0, 0.0, 0.0, 865.0, 1610.0]])
    fw = torch.tensor([[65.0, 35.0, 30.0, 1.0, 1.0], [1.0, 1.0, 1.0, 30.0, 85.0]])
    valid = wl > 0
    g = BandGroup(px, wl, fw, torch.tensor([10.0, 10.0]), band_valid=valid)
    with torch.no_grad():
        out = model.forward_features(BandBatch((g,)))
    assert torch.isfinite(out.pooled).all()
    assert not torch.allclose(out.pooled[0], out.pooled[1])


def test_a_batch_mixing_gsds_is_refused() -> None:
    """The issue's case: two 60 m chips batched with two 20 m-labelled samples of the same pixel
    grid. One grid cannot follow both GSDs, so the batch is refused, naming the GSDs and the fix."""
    from aom_model import MixedGSDBatchError, plan_for
    from pipelines.errors import InputError

    model = _model("factorized")
    g = BandGroup(
        torch.randn(4, 2, 16, 16),
        torch.tensor([[665.0, 865.0]]).expand(4, 2),
        torch.tensor([[30.0, 30.0]]).expand(4, 2),
        torch.tensor([60.0, 60.0, 20.0, 20.0]),
    )
    for call in (lambda: plan_for(BandBatch((g,)), model.config), lambda: model(BandBatch((g,)))):
        with pytest.raises(MixedGSDBatchError, match=r"mixes GSDs \[20.0, 60.0\] m") as err:
            call()
        assert isinstance(err.value, InputError) and "one GSD per group" in str(err.value)
    # a sample without a valid band in the group does not count (its GSD is never used)
    g1 = dataclasses.replace(g, band_valid=torch.tensor([[True] * 2] * 2 + [[False] * 2] * 2))
    other = BandGroup(
        torch.randn(4, 1, 16, 16),
        torch.full((4, 1), 490.0),
        torch.full((4, 1), 60.0),
        torch.full((4,), 60.0),
    )
    assert plan_for(BandBatch((g1, other)), model.config).grid_hw == (6, 6)  # 960 m / 160 m


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("token_m", [80.0, 240.0])
def test_a_samples_embedding_does_not_depend_on_its_batchmates(layout: str, token_m: float) -> None:
    """The same Sentinel-2 chip (10/20/60 m groups) embedded alone and beside three other chips (other
    content, other band sets by padding, missing pixels) gives the same tokens."""
    model = _model(layout)
    gen = torch.Generator().manual_seed(5)
    mates = sensor_batch(SENTINEL2, 4, 960.0, gen)
    groups = []
    for gi, g in enumerate(mates.groups):
        valid = torch.ones(4, g.num_bands, dtype=torch.bool)
        valid[1, : g.num_bands // 2] = False  # sample 1 lacks some bands
        if gi == 0:
            valid[2, :] = False  # sample 2 has no 10 m band at all
        pv = torch.ones_like(g.pixels, dtype=torch.bool)
        pv[3, :, : g.hw[0] // 2] = False  # sample 3: top half missing
        groups.append(dataclasses.replace(g, band_valid=valid, pixel_valid=pv))
    batch = BandBatch(tuple(groups))
    alone = BandBatch(
        tuple(
            dataclasses.replace(
                g,
                pixels=g.pixels[:1],
                wavelength_nm=g.wavelength_nm[:1],
                fwhm_nm=g.fwhm_nm[:1],
                gsd_m=g.gsd_m[:1],
                band_valid=None,
                pixel_valid=None,
            )
            for g in mates.groups
        )
    )
    from aom_model import plan_for

    with torch.no_grad():
        together = model.forward_features(batch, plan_for(batch, model.config, token_m))
        single = model.forward_features(alone, plan_for(alone, model.config, token_m))
    assert together.grid_hw == single.grid_hw == (round(960 / token_m),) * 2
    torch.testing.assert_close(together.tokens[:1], single.tokens, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(together.pooled[:1], single.pooled, atol=2e-5, rtol=1e-4)


def test_spectral_distance_bias_follows_wavelength_not_order() -> None:
    """ALiBi over the spectrum: 0 on the diagonal, more negative with wavelength distance, one reach
    per head, and the same pairwise bias whatever the band order."""
    from aom_model.blocks import SpectralDistanceBias, per_position

    bias_mod = SpectralDistanceBias(num_heads=2)
    wl = torch.tensor([[490.0, 560.0, 665.0, 1610.0]])
    bias = bias_mod(wl)  # [1, 2, 4, 4]
    assert bias.shape == (1, 2, 4, 4)
    torch.testing.assert_close(torch.diagonal(bias, dim1=-2, dim2=-1), torch.zeros(1, 2, 4))
    assert bool((bias[0, :, 0, 1] > bias[0, :, 0, 2]).all() and (bias[0, :, 0, 2] > bias[0, :, 0, 3]).all())
    head0, head1 = bias.detach()[0, :, 0, 3].tolist()
    assert head0 < head1  # head 0 looks nearer than head 1
    perm = torch.tensor([3, 0, 2, 1])
    torch.testing.assert_close(bias_mod(wl[:, perm]), bias[:, :, perm][:, :, :, perm])
    assert per_position(bias, 3).shape == (3, 2, 4, 4)
    model = AOM(AOMConfig.named("tiny", spectral_distance_bias=False))
    assert model.encoder.spectral_bias is None and model.decoder.spectral_bias is None
