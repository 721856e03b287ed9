"""Grid planning, FlexiViT PI-resize, GSD-aware positional embedding, token validity."""

from __future__ import annotations

import pytest
import torch

from aom_model import AOM, AOMConfig, BandBatch, plan_for, plan_grid
from aom_model.patch_embed import KernelBank, pi_resize_matrix, resize_matrix

torch.set_num_threads(1)
KS = (8, 16, 32)


def test_plan_sentinel2_three_gsds_share_grid() -> None:
    # 480 m extent: 10 m -> 48 px, 20 m -> 24 px, 60 m -> 8 px; 160 m tokens -> a 3 x 3 grid
    plan = plan_grid([(48, 48), (24, 24), (8, 8)], [10.0, 20.0, 60.0], 160.0, KS)
    assert plan.grid_hw == (3, 3)
    assert [g.patch_hw for g in plan.groups] == [(16, 16), (8, 8), (3, 3)]
    # 8 px of 60 m is not whole 3-px patches: that group alone is resampled (9 px)
    assert [g.resample_hw for g in plan.groups] == [None, None, (9, 9)]
    assert plan.ref_group == 0


def test_plan_with_a_fixed_grid_is_the_same_plan() -> None:
    # a 30-token chip of 160 m at 10/20/30/60 m: the plan is the extent in tokens, fixed or not
    shapes, gsds = [(480, 480), (240, 240), (160, 160), (80, 80)], [10.0, 20.0, 30.0, 60.0]
    plan = plan_grid(shapes, gsds, 160.0, KS, grid_hw=(30, 30))
    assert plan_grid(shapes, gsds, 160.0, KS) == plan
    assert plan.grid_hw == (30, 30) and plan.ref_group == 0
    assert [g.patch_hw for g in plan.groups] == [(16, 16), (8, 8), (5, 5), (3, 3)]
    assert [g.resample_hw for g in plan.groups] == [None, None, (150, 150), (90, 90)]
    assert [g.kernel_size for g in plan.groups] == [16, 8, 8, 8]


def test_plan_patch_from_gsd_sub_metre_to_coarse() -> None:
    vhr = plan_grid([(256, 256)], [0.5], 160.0, KS, 1, 32)  # clamp: 32 px patches (16 m tokens)
    assert vhr.groups[0].patch_hw == (32, 32) and vhr.groups[0].kernel_size == 32
    s2 = plan_grid([(224, 224)], [10.0], 160.0, KS)
    assert s2.grid_hw == (14, 14) and s2.groups[0].kernel_size == 16
    modis = plan_grid([(64, 64)], [250.0], 160.0, KS)  # 1 px per token
    assert modis.groups[0].patch_hw == (1, 1) and modis.grid_hw == (64, 64)
    # 250 m and 500 m groups over 4 km, both coarser than the token target: the finest group sets
    # the grid (1 px per token) and the 500 m group is resampled onto it
    mixed = plan_grid([(16, 16), (8, 8)], [250.0, 500.0], 160.0, KS)
    assert mixed.grid_hw == (16, 16) and [g.patch_hw for g in mixed.groups] == [(1, 1), (1, 1)]
    assert [g.resample_hw for g in mixed.groups] == [None, (16, 16)]


def test_plan_non_square_and_non_divisible() -> None:
    plan = plan_grid([(32, 48)], [10.0], 160.0, KS)
    assert plan.grid_hw == (2, 3) and plan.groups[0].patch_hw == (16, 16)
    odd = plan_grid([(97, 97), (7, 7)], [10.0, 138.6], 160.0, KS)
    hp = odd.grid_hw[0]
    for (h, _), g in zip([(97, 97), (7, 7)], odd.groups):
        size = g.resample_hw or (h, h)
        assert size[0] == hp * g.patch_hw[0]


@pytest.mark.parametrize("token_m", [40.0, 80.0, 120.0, 160.0, 240.0, 320.0])
def test_one_plan_serves_every_token_size(token_m: float) -> None:
    """A 1920 m Sentinel-2 chip (10/20/60 m groups): the grid is 1920 / token_m tokens and every
    token is token_m metres of ground, through plan_for as through the model's tokenizer."""
    cfg = AOMConfig.named("tiny")
    assert cfg.token_m_range == (40.0, 320.0)
    model = AOM(cfg)
    gen = torch.Generator().manual_seed(0)
    batch = BandBatch(
        tuple(
            BandBatch.from_tensor(torch.randn(2, c, n, n, generator=gen), wl, [20.0] * c, gsd).groups[0]
            for c, n, gsd, wl in (
                (2, 192, 10.0, [490.0, 665.0]),
                (1, 96, 20.0, [1610.0]),
                (1, 32, 60.0, [945.0]),
            )
        )
    )
    plan = plan_for(batch, cfg, token_m)
    side = round(1920 / token_m)
    assert plan.grid_hw == (side, side)
    with torch.no_grad():
        tok = model.tokenize(batch.validate(), plan)
        out = model.forward_features(batch, plan)
    torch.testing.assert_close(tok.token_m, torch.full((2, 2), token_m))
    assert out.tokens.shape == (2, side * side, cfg.embed_dim) and torch.isfinite(out.tokens).all()


def test_token_size_range_is_checked_with_one_line_naming_it() -> None:
    cfg = AOMConfig.named("tiny")
    assert cfg.check_token_m(None) == 160.0 and cfg.check_token_m(40) == 40.0
    with pytest.raises(ValueError, match=r"supported range: 40 to 320 m"):
        cfg.check_token_m(20.0)
    fixed = AOMConfig()  # a checkpoint from before token sizes were sampled: its own size only
    assert fixed.token_m_range == (160.0, 160.0)
    with pytest.raises(ValueError, match=r"160 m only"):
        fixed.check_token_m(80.0)
    with pytest.raises(ValueError, match="token_m_min <= token_ground_m"):
        AOMConfig(token_m_min=200.0, token_m_max=320.0)
    assert AOMConfig.from_dict(cfg.to_dict()) == cfg


def test_pi_resize_preserves_inner_products_when_upsampling() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8 * 8, 5, generator=g)
    x = torch.randn(3, 8 * 8, generator=g)
    for dst in ((16, 16), (12, 20)):
        up = resize_matrix((8, 8), dst).float()  # [P', 64]
        w2 = pi_resize_matrix((8, 8), dst) @ w  # [P', 5]
        torch.testing.assert_close((up @ x.T).T @ w2, x @ w, atol=1e-4, rtol=1e-4)


def test_kernel_bank_consistent_across_patch_sizes() -> None:
    """Bank entries start as PI-resizes of one kernel: a 16 px patch and its bilinear upsampling
    to 32 px (bank entry 32) or 24 px (entry 16 PI-resized) give the same token."""
    bank = KernelBank(KS, 4)
    x16 = torch.randn(3, 16 * 16, generator=torch.Generator().manual_seed(1))
    ref = bank(x16[None, None], 16, (16, 16))
    with torch.no_grad():
        for kernel, p in ((32, 32), (16, 24)):
            xp = x16 @ resize_matrix((16, 16), (p, p)).float().T  # [3, p*p]
            torch.testing.assert_close(bank(xp[None, None], kernel, (p, p)), ref, atol=1e-4, rtol=1e-4)


def test_pixel_validity_to_token_validity() -> None:
    cfg = AOMConfig.named("tiny", token_ground_m=80.0)  # 8 px tokens at 10 m
    model = AOM(cfg)
    x = torch.randn(1, 2, 16, 16)
    pv = torch.ones_like(x, dtype=torch.bool)
    pv[0, 0, :8, :8] = False  # token (0, 0) of band 0 fully invalid
    pv[0, 1, :8, 8:12] = False  # token (0, 1) of band 1 half invalid -> still valid at 0.5
    x[0, 0, :8, :8] = float("nan")  # invalid pixels may hold NaN
    b = BandBatch.from_tensor(x, [490.0, 665.0], [65.0, 30.0], 10.0, pixel_valid=pv)
    tok = model.tokenize(b.validate())
    assert tok.present.shape == (1, 4, 2)
    assert not bool(tok.present[0, 0, 0]) and bool(tok.present[0, 1, 1])
    assert int(tok.present.sum()) == 7
    proj = model.tokenizer.project(tok)  # [1, 4, 2, d_tok]
    assert torch.isfinite(proj).all() and not bool(proj[0, 0, 0].any())  # absent token: no data
    out = model.forward_features(b)
    assert torch.isfinite(out.tokens).all() and bool(out.token_valid.all())


def test_plan_for_uses_batch_shapes() -> None:
    b = BandBatch.from_tensor(torch.randn(1, 1, 64, 32), [490.0], [65.0], 10.0)
    assert plan_for(b, AOMConfig.named("tiny")).grid_hw == (4, 2)
