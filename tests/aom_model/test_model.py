"""Channel-wise masking, the pretraining losses and a one-batch overfit of ``tiny``."""

from __future__ import annotations

import pytest
import torch

from aom_model import AOM, AOMConfig, BandBatch, channel_mask
from aom_model.losses import chip_stats, info_nce, normalized_patch_mse, patch_stats, patch_stats_mse
from aom_model.masking import mask_stats
from aom_model.model import pack_visible
from aom_model.testing import smooth_field

torch.set_num_threads(1)


def _present(b: int = 3, n: int = 16, c: int = 5) -> torch.Tensor:
    present = torch.ones(b, n, c, dtype=torch.bool)
    present[1, :, 4] = False  # absent band
    present[2, :3] = False  # invalid positions
    return present


def test_mask_deterministic_under_generator() -> None:
    present = _present()
    m1 = channel_mask(present, 0.75, 0.25, torch.Generator().manual_seed(7))
    m2 = channel_mask(present, 0.75, 0.25, torch.Generator().manual_seed(7))
    m3 = channel_mask(present, 0.75, 0.25, torch.Generator().manual_seed(8))
    assert torch.equal(m1, m2)
    assert not torch.equal(m1, m3)


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.75, 0.95])
@pytest.mark.parametrize("band_share", [0.0, 0.5, 1.0])
def test_mask_respects_ratio(ratio: float, band_share: float) -> None:
    present = _present()
    masked = channel_mask(present, ratio, band_share, torch.Generator().manual_seed(0))
    assert not bool((masked & ~present).any())  # only present tokens are masked
    n_present = present.sum(dim=(1, 2))
    expected = torch.minimum(torch.round(n_present * ratio), n_present - 1)
    assert torch.equal(masked.sum(dim=(1, 2)), expected.long())
    assert bool(((present & ~masked).sum(dim=(1, 2)) >= 1).all())  # at least one visible token


def test_mask_whole_bands() -> None:
    present = torch.ones(4, 16, 8, dtype=torch.bool)
    masked = channel_mask(present, 0.75, 1.0, torch.Generator().manual_seed(0))
    whole = masked.all(dim=1)  # [B, C] bands masked at every position
    assert bool((whole.sum(dim=1) == 6).all())  # 6 of 8 bands make the 96-token budget


@pytest.mark.parametrize(
    ("c", "share"), [(3, 0.5), (4, 0.5), (4, 0.7), (11, 0.5), (12, 0.5), (12, 0.7), (12, 0.9), (6, 0.0)]
)
def test_mask_shares_follow_the_config(c: int, share: float) -> None:
    """The whole-band share of masked tokens is at least the configured one and at most one band
    above it; the rest are whole positions (the share of positions left without a visible band is
    (1 - s) r / (1 - s r) in expectation); at the default share at least every other masked token
    comes from whole bands and, with 12 bands, over half of the positions are hidden."""
    n, b = 64, 32
    present = torch.ones(b, n, c, dtype=torch.bool)
    masked = channel_mask(present, 0.75, share, torch.Generator().manual_seed(1))
    st = mask_stats(present, masked)
    target = round(0.75 * n * c)
    assert st.mask_ratio == pytest.approx(target / (n * c))
    assert share - 1e-6 <= st.band_share <= share + n / target + 1e-6  # one band of granularity
    expected_empty = (1 - st.band_share) * 0.75 / (1 - st.band_share * 0.75)
    assert st.empty_position_share == pytest.approx(expected_empty, abs=1.5 / n)
    if share == AOMConfig().band_mask_share:
        assert st.band_share >= 0.5
        if c == 12:
            assert st.band_share == pytest.approx(5 / 9) and st.empty_position_share > 0.5


def test_default_mask_share_is_at_least_half() -> None:
    assert AOMConfig().band_mask_share >= 0.5
    with pytest.raises(ValueError, match="band_mask_share"):
        AOMConfig(band_mask_share=1.5)


def test_mask_single_token_sample_keeps_it() -> None:
    present = torch.zeros(1, 4, 2, dtype=torch.bool)
    present[0, 0, 0] = True
    assert not bool(channel_mask(present, 0.75, 0.5, torch.Generator().manual_seed(0)).any())


def test_losses() -> None:
    target = torch.randn(2, 3, 16) * 5 + 3
    valid = torch.ones_like(target, dtype=torch.bool)
    norm = (target - target.mean(-1, keepdim=True)) / target.std(-1, unbiased=False, keepdim=True)
    s, n = normalized_patch_mse(norm, target, valid, torch.ones(2, 3, dtype=torch.bool))
    assert float(s) < 1e-6 and int(n) == 6
    s0, n0 = normalized_patch_mse(
        torch.zeros_like(target), target, valid, torch.zeros(2, 3, dtype=torch.bool)
    )
    assert float(s0) == 0.0 and int(n0) == 0
    a = torch.randn(4, 8)
    assert float(info_nce(a, a, 0.05)) < float(info_nce(a, torch.randn(4, 8), 0.05))


def _smooth_batch(seed: int = 0) -> BandBatch:
    x = smooth_field((2, 4, 32, 32), torch.Generator().manual_seed(seed))
    return BandBatch.from_tensor(x, [490.0, 560.0, 665.0, 842.0], [65.0, 35.0, 30.0, 115.0], 10.0)


@pytest.mark.parametrize("layout", ["factorized", "joint"])
def test_pretrain_step_losses_and_gradients(layout: str) -> None:
    torch.manual_seed(0)
    model = AOM(AOMConfig.named("tiny", layout=layout, token_ground_m=80.0))
    b = _smooth_batch()
    losses = model.pretrain_step(b, b.coarsen(2), torch.Generator().manual_seed(0))
    assert set(losses) == {"loss", "recon", "stats", "align"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > 0.8 * len(grads)
    only_recon = model.pretrain_step(b, None, torch.Generator().manual_seed(0))
    assert set(only_recon) == {"loss", "recon", "stats"}
    torch.testing.assert_close(only_recon["recon"], losses["recon"])
    torch.testing.assert_close(only_recon["stats"], losses["stats"])
    no_stats = AOM(model.config.replace(stats_weight=0.0))
    no_stats.load_state_dict(model.state_dict())
    l0 = no_stats.pretrain_step(b, None, torch.Generator().manual_seed(0))
    torch.testing.assert_close(l0["loss"], l0["recon"])


def test_patch_stats_mse_scores_level_and_contrast() -> None:
    """The stats target is each token's (mean, std) over valid pixels; invalid pixels are ignored."""
    target = torch.tensor([[[1.0, 3.0, 100.0], [2.0, 2.0, 2.0]]])  # [1, 2, P=3]
    valid = torch.tensor([[[True, True, False], [True, True, True]]])
    torch.testing.assert_close(patch_stats(target, valid), torch.tensor([[[2.0, 1.0], [2.0, 0.0]]]))
    pred = torch.tensor([[[2.0, 1.0], [0.0, 0.0]]])
    s, n = patch_stats_mse(pred, target, valid, torch.tensor([[True, True]]))
    assert float(n) == 2.0 and float(s) == pytest.approx(2.0)  # second token: (2^2 + 0) / 2
    s, n = patch_stats_mse(pred, target, valid, torch.tensor([[True, False]]))
    assert float(s) == 0.0 and float(n) == 1.0


def test_no_leak_masked_tokens_do_not_change_visible_encoding() -> None:
    """Changing the pixels of masked tokens leaves the encoder output unchanged."""
    torch.manual_seed(0)
    model = AOM(AOMConfig.named("tiny", token_ground_m=80.0)).eval()
    b = _smooth_batch()
    tok = model.tokenize(b)
    masked = channel_mask(tok.present, 0.75, 0.25, torch.Generator().manual_seed(3))
    e1 = model.encode(tok, masked)
    noisy = []
    for (s, e), px in zip(tok.group_slices, tok.pixel_patches):
        noise = torch.randn_like(px) * 100
        noisy.append(torch.where(masked[:, :, s:e, None], noise, px))
    tok.pixel_patches = tuple(noisy)
    e2 = model.encode(tok, masked)
    torch.testing.assert_close(e1.tokens, e2.tokens)
    assert e1.band_tokens is not None and e2.band_tokens is not None
    torch.testing.assert_close(e1.band_tokens, e2.band_tokens)


def test_masked_tokens_are_not_projected() -> None:
    """The pretraining path projects only visible band patches: the tokenizer's FLOPs follow
    the visible tokens (MAE-style), and its output is the inference projection where visible."""
    from torch.utils.flop_counter import FlopCounterMode

    model = AOM(AOMConfig.named("tiny", token_ground_m=80.0)).eval()
    tok = model.tokenize(_smooth_batch())
    masked = channel_mask(tok.present, 0.75, 0.7, torch.Generator().manual_seed(0))
    visible = tok.present & ~masked

    def flops(vis: torch.Tensor | None) -> tuple[int, torch.Tensor]:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            out = model.tokenizer.project(tok, vis)
        return fc.get_total_flops(), out

    f_all, full = flops(None)
    f_vis, part = flops(visible)
    share = float(visible.sum()) / float(tok.present.sum())
    assert f_vis == pytest.approx(share * f_all, rel=1e-6)
    torch.testing.assert_close(part, full * visible[..., None].float(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("layout", ["factorized", pytest.param("joint", marks=pytest.mark.slow)])
def test_tiny_overfits_one_batch(layout: str) -> None:
    """Loss falls by > 10x on one fixed batch and mask (~8 s of CPU per layout)."""
    torch.manual_seed(0)
    model = AOM(AOMConfig.named("tiny", layout=layout, token_ground_m=80.0))
    b = _smooth_batch()
    coarse = b.coarsen(2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    first = last = 0.0
    for step in range(160):
        losses = model.pretrain_step(b, coarse, torch.Generator().manual_seed(1))  # fixed mask
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        if step == 0:
            first = float(losses["loss"].detach())
        last = float(losses["loss"].detach())
    assert last < first / 10, (first, last)


@pytest.mark.parametrize("readout", ["linear", "mlp"])
def test_stats_head_reads_the_position_token_only(readout: str) -> None:
    """The (mean, std) head sees the position token and the band's embedding, never the band token:
    changing a band token's content (not its position token) leaves the statistics unchanged."""
    torch.manual_seed(0)
    model = AOM(AOMConfig.named("tiny", token_ground_m=80.0, stats_readout=readout)).eval()
    b = _smooth_batch()
    tok = model.tokenize(b)
    masked = channel_mask(tok.present, 0.5, 0.0, torch.Generator().manual_seed(2))
    enc = model.encode(tok, masked)
    rec = model.decode(enc, tok, masked)
    assert rec.stats.shape == (*tok.present.shape, 2)
    assert enc.band_tokens is not None
    enc.band_tokens = enc.band_tokens + torch.randn_like(enc.band_tokens)
    torch.testing.assert_close(model.decode(enc, tok, masked).stats, rec.stats)
    with pytest.raises(ValueError, match="stats_readout"):
        AOMConfig.named("tiny", stats_readout="cubic")


@pytest.mark.parametrize("layout", ["factorized", "joint"])
def test_masked_path_equals_full_path_when_nothing_is_masked(layout: str) -> None:
    """The MAE-style gather path (pretraining) with an all-False mask is the inference path."""
    torch.manual_seed(0)
    model = AOM(AOMConfig.named("tiny", layout=layout, token_ground_m=80.0)).eval()
    b = _smooth_batch()
    tok = model.tokenize(b)
    with torch.no_grad():
        full = model.encode(tok)
        packed = model.encode(tok, torch.zeros_like(tok.present))
    torch.testing.assert_close(packed.tokens, full.tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed.pooled, full.pooled, atol=1e-5, rtol=1e-5)
    assert packed.band_tokens is not None and full.band_tokens is not None
    torch.testing.assert_close(packed.band_tokens, full.band_tokens, atol=1e-5, rtol=1e-5)


def test_packing_keeps_only_visible_tokens() -> None:
    """The encoder gets only positions with a visible band and only visible band tokens."""
    present = torch.ones(2, 16, 5, dtype=torch.bool)
    masked = channel_mask(present, 0.75, 0.7, torch.Generator().manual_seed(0))
    visible = present & ~masked
    pk = pack_visible(visible)
    assert pk.pos_keep.shape[1] == int(visible.any(-1).sum(-1).max())
    assert pk.band_keep.shape[2] == int(visible.sum(-1).max())
    assert int(pk.band_keep.sum()) == int(visible.sum())  # every visible token exactly once
    got = torch.zeros_like(visible)
    for s in range(2):
        for i in range(pk.pos_index.shape[1]):
            for j in range(pk.band_index.shape[2]):
                if pk.band_keep[s, i, j]:
                    got[s, pk.pos_index[s, i], pk.band_index[s, i, j]] = True
    assert torch.equal(got, visible)
    # masked bands as queries: every present band of a position with a visible band, none elsewhere
    pq = pack_visible(visible, present)
    assert pq.pos_index.shape == pk.pos_index.shape and pq.band_keep.shape[2] == 5
    assert int(pq.band_keep.sum()) == 5 * int(visible.any(-1).sum())


@pytest.mark.parametrize("layout", ["factorized", "joint"])
def test_spectral_queries_are_masked_bands_and_change_nothing_else(layout: str) -> None:
    """A spectral query is what pretraining trains a masked band to be: querying band 4's
    (wavelength, FWHM) from bands 1-3 gives the band token of band 4 hidden everywhere (masked-band
    path); and queries change neither the position tokens nor the present bands' tokens."""
    torch.manual_seed(0)
    model = AOM(AOMConfig.named("tiny", layout=layout, token_ground_m=80.0)).eval()
    b = _smooth_batch()
    x = torch.cat([g.pixels for g in b.groups], dim=1)  # [2, 4, 32, 32]
    wl, fw = [490.0, 560.0, 665.0, 842.0], [65.0, 35.0, 30.0, 115.0]
    three = BandBatch.from_tensor(x[:, :3], wl[:3], fw[:3], 10.0)
    with torch.no_grad():
        tok3 = model.tokenize(three)
        plain = model.encode(tok3)
        out, q = model.encode_with_queries(tok3, torch.tensor([wl[3], 1000.0]), torch.tensor([fw[3], 50.0]))
        tok4 = model.tokenize(b)
        hide4 = torch.zeros_like(tok4.present)
        hide4[:, :, 3] = True
        masked = model.encode(tok4, hide4)
    assert q.shape == (2, 16, 2, model.token_dim)  # [B, N, S, d_band]
    torch.testing.assert_close(out.tokens, plain.tokens)
    assert out.band_tokens is not None and plain.band_tokens is not None
    torch.testing.assert_close(out.band_tokens, plain.band_tokens)
    assert masked.band_tokens is not None
    torch.testing.assert_close(q[:, :, 0], masked.band_tokens[:, :, 3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masked.tokens, out.tokens, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(q[:, :, 0], q[:, :, 1])


def test_spectral_consistency_term_is_optional_bounded_and_trains_the_subset_view() -> None:
    """spectral_consistency_weight > 0 adds the "spectral" term (1 - cosine, in [0, 2]) with
    gradients into the encoder; 0 (default) adds nothing. The teacher view has no gradient: a
    model whose student view equals the teacher's scores 0."""
    torch.manual_seed(0)
    cfg = AOMConfig.named("tiny", token_ground_m=80.0)
    assert cfg.spectral_consistency_weight == 0.0
    b = _smooth_batch()
    model = AOM(cfg.replace(spectral_consistency_weight=0.5))
    assert model.config.spectral_consistency_keep == (0.25, 0.75)
    out = model.pretrain_step(b, None, torch.Generator().manual_seed(0))
    assert "spectral" in out and 0.0 < float(out["spectral"].detach()) <= 2.0
    base = AOM(cfg)
    base.load_state_dict(model.state_dict())
    plain = base.pretrain_step(b, None, torch.Generator().manual_seed(0))
    assert "spectral" not in plain
    torch.testing.assert_close(out["loss"], plain["loss"] + 0.5 * out["spectral"])
    model.zero_grad()
    model.spectral_consistency(model.tokenize(b), torch.Generator().manual_seed(1)).backward()
    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert grads and any(bool(x.abs().sum() > 0) for x in grads)
    with pytest.raises(ValueError, match="spectral_consistency_keep"):
        AOMConfig.named("tiny", spectral_consistency_keep=(0.5, 1.0))


def test_spectral_consistency_standardized_distance_trains_and_differs_from_cosine() -> None:
    """``spectral_consistency_loss="standardized"`` gives a finite non-negative term with gradients
    into the encoder, from the same band subset (same generator) as the cosine distance."""
    torch.manual_seed(0)
    cfg = AOMConfig.named("tiny", token_ground_m=80.0, spectral_consistency_weight=1.0)
    b = _smooth_batch()
    std = AOM(cfg.replace(spectral_consistency_loss="standardized"))
    cos = AOM(cfg)
    cos.load_state_dict(std.state_dict())
    tokens = std.tokenize(b)
    d_std = std.spectral_consistency(tokens, torch.Generator().manual_seed(1))
    d_cos = cos.spectral_consistency(tokens, torch.Generator().manual_seed(1))
    assert torch.isfinite(d_std) and float(d_std.detach()) > 0.0
    assert not torch.allclose(d_std, d_cos)
    std.zero_grad()
    d_std.backward()
    assert any(bool(p.grad.abs().sum() > 0) for p in std.encoder.parameters() if p.grad is not None)


def test_stats_tokens_present_scores_every_present_token_and_masked_is_the_default() -> None:
    """``stats_tokens="present"``: the statistics loss is the mean over every present token (visible
    ones too), checked against ``patch_stats_mse`` on ``rec.stats``; the pixel loss is unchanged."""
    torch.manual_seed(0)
    cfg = AOMConfig.named("tiny", token_ground_m=80.0)
    assert cfg.stats_tokens == "masked"
    b = _smooth_batch()
    model = AOM(cfg)
    present_cfg = AOM(cfg.replace(stats_tokens="present"))
    present_cfg.load_state_dict(model.state_dict())
    tokens = model.tokenize(b)
    masked = channel_mask(
        tokens.present, cfg.mask_ratio, cfg.band_mask_share, torch.Generator().manual_seed(0)
    )
    enc = model.encode(tokens, masked)
    rec = model.decode(enc, tokens, masked)
    a = model.loss(rec, tokens, masked)
    p = present_cfg.loss(rec, tokens, masked)
    torch.testing.assert_close(a["recon"], p["recon"])
    s_sum, s_n = torch.zeros(()), torch.zeros(())
    for (s, e), target, pv in zip(tokens.group_slices, tokens.pixel_patches, tokens.pixel_patch_valid):
        got = patch_stats_mse(rec.stats[:, :, s:e], target, pv, tokens.present[:, :, s:e])
        s_sum, s_n = s_sum + got[0], s_n + got[1]
    torch.testing.assert_close(p["stats"], s_sum / s_n)
    assert not torch.allclose(a["stats"], p["stats"])
    with pytest.raises(ValueError, match="masked, present"):
        AOMConfig.named("tiny", stats_tokens="visible")


def test_pooled_stats_term_reads_chip_statistics_linearly_from_the_pooled_embedding() -> None:
    """``pooled_stats_weight`` > 0 builds the chip-statistics head and adds the ``pool_stats`` term
    (from the masked native view and the coarse view), with gradients into the encoder; the
    prediction is a linear function of the pooled vector (so of the mean of position tokens), and
    its target is each band's (mean, std) over the whole chip; 0 (default) builds no head."""
    torch.manual_seed(0)
    cfg = AOMConfig.named("tiny", token_ground_m=80.0)
    assert cfg.pooled_stats_weight == 0.0 and AOM(cfg).decoder.pool_stats is None
    torch.manual_seed(5)
    without = AOM(cfg).state_dict()
    torch.manual_seed(5)
    with_head = AOM(cfg.replace(pooled_stats_weight=1.0)).state_dict()
    assert {k for k in with_head if k not in without} == {k for k in with_head if "pool_stats" in k}
    for k, v in without.items():  # the head takes nothing from the other modules' seeded init
        torch.testing.assert_close(with_head[k], v, rtol=0, atol=0)
    b = _smooth_batch()
    model = AOM(cfg.replace(pooled_stats_weight=2.0))
    out = model.pretrain_step(b, b.coarsen(2), torch.Generator().manual_seed(0))
    assert "pool_stats" in out and float(out["pool_stats"].detach()) > 0.0
    base = AOM(cfg)
    base.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("decoder.pool_stats.")}
    )
    plain = base.pretrain_step(b, b.coarsen(2), torch.Generator().manual_seed(0))
    assert "pool_stats" not in plain
    torch.testing.assert_close(out["loss"], plain["loss"] + 2.0 * out["pool_stats"])
    model.zero_grad()
    out["pool_stats"].backward()
    assert any(bool(p.grad.abs().sum() > 0) for p in model.encoder.parameters() if p.grad is not None)
    # linear in the pooled vector
    tok = model.tokenize(b)
    args = (tok.wavelength_nm, tok.fwhm_nm, tok.band_valid, tok.band_id)
    p1, p2 = torch.randn(2, 64), torch.randn(2, 64)
    with torch.no_grad():
        f = [model.decoder.predict_pooled_stats(p, *args) for p in (p1, p2, 0.3 * p1 + 0.7 * p2)]
    torch.testing.assert_close(f[2], 0.3 * f[0] + 0.7 * f[1], atol=1e-5, rtol=1e-5)
    # a head whose prediction is the target scores 0
    target = torch.cat([chip_stats(t, v)[0] for t, v in zip(tok.pixel_patches, tok.pixel_patch_valid)], dim=1)
    model.decoder.predict_pooled_stats = lambda *a: target  # type: ignore[method-assign]  # a stub head on this test's own model
    assert float(model.pooled_stats_loss(tok, [torch.zeros(2, 64)])) == 0.0
    with pytest.raises(ValueError, match="pooled_stats_weight"):
        AOM(cfg).decoder.predict_pooled_stats(p1, *args)
    with pytest.raises(ValueError, match="loss weights"):
        AOMConfig.named("tiny", pooled_stats_weight=-1.0)
