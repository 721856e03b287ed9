"""Positions in ground metres: rotary positions enter attention as ground offsets only, so a
ground location's embedding does not depend on where its chip starts (translation equivariance)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aom_model import AOM, AOMConfig, BandBatch
from aom_model.pos_embed import apply_rope, ground_rope, ground_sincos, token_centres_m
from aom_model.testing import smooth_field

torch.set_num_threads(1)
WL = [490.0, 560.0, 665.0, 842.0]
FWHM = [65.0, 35.0, 30.0, 115.0]
W, K, P = 8, 2, 8  # chip of W x W tokens, shift of K tokens, 8 px tokens (80 m at 10 m)


def test_rope_logits_depend_on_ground_offsets_only() -> None:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 5, 32, generator=g), torch.randn(1, 2, 5, 32, generator=g)
    coords = torch.rand(1, 5, 2, generator=g, dtype=torch.float64) * 5000
    shifted = coords + torch.tensor([123_456.0, -98_765.0], dtype=torch.float64)  # far from the origin

    def logits(c: torch.Tensor) -> torch.Tensor:
        rope = ground_rope(c, 32, 20.0, 1.0e5)
        return apply_rope(q, rope) @ apply_rope(k, rope).transpose(-1, -2)

    torch.testing.assert_close(logits(coords), logits(shifted), atol=1e-4, rtol=1e-5)
    assert not torch.allclose(logits(coords), logits(coords * 1.5), atol=1e-2)


def test_token_centres_in_metres() -> None:
    c = token_centres_m((2, 3), torch.tensor([[160.0, 80.0]]))  # [1, 6, 2]
    assert c.shape == (1, 6, 2)
    torch.testing.assert_close(c[0, 4], torch.tensor([240.0, 120.0], dtype=torch.float64))


def test_ground_sincos_same_distance_same_code() -> None:
    """The absolute code of the plain-ViT baseline: the same ground distance, the same code."""
    c = ground_sincos((3, 3), torch.tensor([[240.0, 240.0]]), 64).reshape(3, 3, 64)
    d = ground_sincos((9, 9), torch.tensor([[80.0, 80.0]]), 64).reshape(9, 9, 64)
    torch.testing.assert_close(c[1, 1], d[4, 4])  # both centred at 360 m


def _chips(nan_outside: bool) -> tuple[BandBatch, BandBatch]:
    """Two W x W-token chips of one raster, the second starting K tokens further east. With
    ``nan_outside`` each chip holds exactly the same ground tokens (the others are absent)."""
    full = smooth_field((1, 4, W * P, (W + K) * P), torch.Generator().manual_seed(1))
    a, b = full[..., : W * P].clone(), full[..., K * P :].clone()
    if nan_outside:
        a[..., : K * P] = float("nan")
        b[..., (W - K) * P :] = float("nan")
    return BandBatch.from_tensor(a, WL, FWHM, 10.0), BandBatch.from_tensor(b, WL, FWHM, 10.0)


@pytest.mark.parametrize("layout", ["factorized", "joint"])
def test_translation_equivariance_same_token_set(layout: str) -> None:
    """The same ground tokens in two chips that start K tokens apart get the same embeddings
    (random weights; float tolerance). With absolute positions this differed by O(1)."""
    torch.manual_seed(0)
    model = AOM(AOMConfig.named("tiny", layout=layout, token_ground_m=80.0)).eval()
    a, b = _chips(nan_outside=True)
    with torch.no_grad():
        ea = model.forward_features(a)
        eb = model.forward_features(b)
    ta = ea.tokens.reshape(W, W, -1)[:, K:]
    tb = eb.tokens.reshape(W, W, -1)[:, : W - K]
    assert bool(ea.token_valid.reshape(W, W)[:, K:].all()) and not bool(
        ea.token_valid.reshape(W, W)[:, :K].any()
    )
    torch.testing.assert_close(ta, tb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ea.pooled, eb.pooled, atol=1e-5, rtol=1e-5)


def test_translation_bounded_change_with_different_context() -> None:
    """Fully valid chips K tokens apart: the common ground tokens differ only through the K
    columns of context each chip has and the other lacks (global attention). Random weights:
    cosine >= 0.9 for every common token (it was 0.53 minimum, 0.64 mean with absolute positions),
    and unrelated tokens are far less similar."""
    torch.manual_seed(0)
    model = AOM(AOMConfig.named("tiny", token_ground_m=80.0)).eval()
    a, b = _chips(nan_outside=False)
    with torch.no_grad():
        ta = model.forward_features(a).tokens.reshape(W, W, -1)
        tb = model.forward_features(b).tokens.reshape(W, W, -1)
    cos = F.cosine_similarity(ta[:, K:], tb[:, : W - K], dim=-1)  # [W, W - K]
    assert float(cos.min()) >= 0.9, cos
    flat = ta.reshape(W * W, -1)
    unrelated = F.cosine_similarity(flat[:, None], flat[None], dim=-1)
    assert float(cos.mean()) > float(unrelated.mean()) + 0.3
