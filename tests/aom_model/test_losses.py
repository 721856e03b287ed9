"""Spectral-consistency distances (``aom_model.losses.consistency_distance``) against numpy oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aom_model import AOMConfig
from aom_model.losses import chip_stats, consistency_distance


def _pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(3, 5, 4, 8, generator=g) * torch.linspace(0.1, 3.0, 8) + 2.0  # [B, N, S, d]
    student = teacher + 0.3 * torch.randn(3, 5, 4, 8, generator=g)
    weight = torch.rand(3, 5, generator=g) > 0.3  # [B, N]
    return student, teacher, weight


def test_standardized_distance_matches_a_numpy_oracle() -> None:
    s, t, w = _pair()
    got = consistency_distance(s, t, w, "standardized").numpy()  # [B, N, S]
    tn, sn, wn = t.numpy().astype(np.float64), s.numpy().astype(np.float64), w.numpy()
    sel = tn[wn]  # [M, S, d]: the weighted positions
    sd = np.maximum(sel.std(axis=0), 1e-3)  # [S, d] population std
    want = (((sn - tn) / sd) ** 2).mean(axis=-1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_standardized_distance_ignores_per_dimension_affine_changes_and_cosine_does_not() -> None:
    s, t, w = _pair(1)
    scale = torch.linspace(0.2, 5.0, 8)
    shift = torch.linspace(-3.0, 3.0, 8)
    base = consistency_distance(s, t, w, "standardized")
    moved = consistency_distance(s * scale + shift, t * scale + shift, w, "standardized")
    torch.testing.assert_close(moved, base, rtol=1e-4, atol=1e-5)
    cos = consistency_distance(s, t, w, "cosine")
    assert not torch.allclose(consistency_distance(s * scale + shift, t * scale + shift, w, "cosine"), cos)


def test_whitened_distance_matches_a_numpy_oracle_and_ignores_rotations() -> None:
    s, t, w = _pair(3)
    got = consistency_distance(s, t, w, "whitened").numpy()  # [B, N, S]
    tn, sn, wn = t.numpy().astype(np.float64), s.numpy().astype(np.float64), w.numpy()
    want = np.empty(got.shape)
    for q in range(tn.shape[2]):
        sel = tn[wn][:, q]  # [M, d]
        lam, vec = np.linalg.eigh(np.cov(sel, rowvar=False, bias=True))
        lam = np.maximum(np.maximum(lam, 1e-2 * lam.mean()), 1e-8)
        diff = (sn[:, :, q] - tn[:, :, q]) @ (vec / np.sqrt(lam))
        want[:, :, q] = (diff**2).mean(axis=-1)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)
    rot, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(4)))
    turned = consistency_distance(s @ rot, t @ rot, w, "whitened")
    torch.testing.assert_close(turned, torch.from_numpy(got), rtol=1e-3, atol=1e-5)


def test_distances_are_zero_for_equal_tokens_and_cosine_is_one_minus_cosine() -> None:
    s, t, w = _pair(2)
    for kind in ("cosine", "standardized", "whitened"):
        assert float(consistency_distance(t, t, w, kind).abs().max()) < 1e-5
    torch.testing.assert_close(
        consistency_distance(s, t, w, "cosine"), 1.0 - torch.nn.functional.cosine_similarity(s, t, dim=-1)
    )


def test_unknown_distance_is_refused_by_the_function_and_the_config() -> None:
    s, t, w = _pair()
    with pytest.raises(ValueError, match="cosine"):
        consistency_distance(s, t, w, "l1")
    with pytest.raises(ValueError, match="cosine, standardized, whitened"):
        AOMConfig.named("tiny", spectral_consistency_loss="l1")


def test_chip_stats_match_a_numpy_oracle_over_every_valid_pixel_of_the_chip() -> None:
    """``chip_stats``: per band, the mean and population std of the valid pixels of all the chip's
    tokens together (not a mean of per-token statistics); a band without a valid pixel is flagged."""
    g = torch.Generator().manual_seed(3)
    target = torch.randn(2, 6, 3, 9, generator=g) * 2.0 + 1.0  # [B, N, C_g, P]
    valid = torch.rand(2, 6, 3, 9, generator=g) > 0.3
    valid[1, :, 2] = False  # no valid pixel of band 2 in chip 1
    stats, has = chip_stats(target, valid)
    t, v = target.numpy().astype(np.float64), valid.numpy()
    for b in range(2):
        for c in range(3):
            px = t[b, :, c][v[b, :, c]]
            assert bool(has[b, c]) == (px.size > 0)
            if px.size:
                np.testing.assert_allclose(stats[b, c].numpy(), [px.mean(), px.std()], rtol=1e-4, atol=1e-5)
    assert not bool(has[1, 2])
