"""Chip layout and seam blending (``pipelines.embed.layout`` + ``embed_region``): the sin^2 weights
are a partition of unity, blending 0 tokens is the core-only path exactly, blending lowers the seam
contrast of a random-weight encoder, and tiles cut from one area agree at their edges."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.embed import (
    EmbedConfigError,
    GroupPixels,
    Normaliser,
    choose_layout,
    embed_region,
    resolve_normaliser,
)
from pipelines.embed.chips import _chip_arrays, chip_plan, make_batch, run_encoder
from pipelines.embed.layout import ChipLayout, blend_offset
from pipelines.evaluation.product import seam_contrast
from pipelines.registry import BandSpec

GSD, TOKEN_M, PX = 20.0, 160.0, 8  # 8 px a token
BANDS = tuple(
    BandSpec(name=f"B{i}", sensor="synthetic", center_wavelength_nm=wl, fwhm_nm=30.0, gsd_m=GSD)
    for i, wl in enumerate((490.0, 560.0, 665.0, 842.0))
)


@pytest.fixture(scope="module")
def model():
    import torch

    from aom_model import AOM, AOMConfig

    torch.manual_seed(0)
    torch.set_num_threads(1)
    return AOM(AOMConfig.named("tiny")).eval()


def _area(tokens: int, seed: int = 0) -> np.ndarray:
    """Synthetic reflectance of ``tokens`` x ``tokens`` tokens, ``[4, px, px]`` float32: a smooth
    field plus a random texture of half-token blocks (a random-weight encoder gives adjacent tokens
    of such ground a cosine near 0.6, so chip seams show)."""
    rng = np.random.default_rng(seed)
    n = tokens * PX
    yy, xx = np.mgrid[0:n, 0:n] / PX
    out = []
    for _ in BANDS:
        f = rng.uniform(0.1, 0.6, 4)
        out.append(0.2 + 0.05 * np.sin(yy * f[0] + 3 * f[1]) + 0.05 * np.cos(xx * f[2] + 3 * f[3]))
    texture = np.kron(
        rng.normal(0, 0.05, (len(BANDS), 2 * tokens, 2 * tokens)), np.ones((1, PX // 2, PX // 2))
    )
    return (np.stack(out) + texture).astype(np.float32)


def _region(
    area: np.ndarray, layout: ChipLayout, r0: int, c0: int, rows: int, cols: int
) -> list[GroupPixels]:
    """The padded region of token rows/cols [r0, r0 + rows) x [c0, c0 + cols) of ``area`` (the area's
    first ``pad_tokens`` are its own padding), as ``embed_region`` takes it."""
    p = layout.pad_tokens
    px = area[:, r0 * PX : (r0 + rows + 2 * p) * PX, c0 * PX : (c0 + cols + 2 * p) * PX]
    return [GroupPixels("synthetic", GSD, BANDS, px)]


def _norm() -> Normaliser:
    """Fixed statistics (mean 0.2, std 0.05 for every band): the same for every region."""
    return resolve_normaliser(None, BANDS, fallback={b.key: (0.2, 0.05) for b in BANDS})


def _layout(tile: int, core: int, margin: int, blend: int) -> ChipLayout:
    return ChipLayout(tile, core, margin, TOKEN_M, blend, blend_offset(core, blend))


def test_weights_are_a_partition_of_unity_and_layouts_are_checked() -> None:
    lay = _layout(24, 6, 3, 3)
    w = lay.weights()  # [core + 2b]
    assert w.shape == (12,) and np.all((w > 0) & (w <= 1)) and np.all(w[6:] == w[::-1][6:])
    # a chip's falling ramp and the next chip's rising ramp cover the same 2b tokens and sum to 1
    np.testing.assert_allclose(w[-6:] + w[:6], 1.0, atol=1e-12)
    assert lay.offset_tokens == 3 and lay.pad_tokens == 6 and lay.chips_per_side == 5
    assert np.all(_layout(24, 6, 3, 0).weights() == 1.0) and _layout(24, 6, 3, 0).pad_tokens == 3
    with pytest.raises(EmbedConfigError, match="blend_tokens"):
        _layout(24, 6, 2, 3)  # wider than the margin
    with pytest.raises(EmbedConfigError, match="blend_tokens"):
        _layout(24, 4, 3, 3)  # wider than half a core
    with pytest.raises(EmbedConfigError, match="offset"):
        blend_offset(6, 3, align=6)  # no aligned offset keeps the tile edge off a seam
    tile = choose_layout(48, 160.0, [10.0, 20.0, 60.0, 30.0])  # the default for aom embed
    assert (tile.core_tokens, tile.margin_tokens, tile.blend_tokens, tile.offset_tokens) == (24, 3, 3, 12)
    assert tile.pad_tokens == 15 and tile.chips_per_side == 3 and tile.to_dict()["blend_window"] == "sin2"
    assert choose_layout(48, 160.0, [10.0, 60.0], blend_tokens=0).to_dict()["pad_tokens"] == 3


def test_blend_zero_is_the_core_only_path(model) -> None:
    """``blend_tokens`` 0: every token is its one chip's core token, bit for bit."""
    lay = _layout(12, 6, 3, 0)
    groups = _region(_area(18), lay, 0, 0, 12, 12)
    norm = _norm()
    got = embed_region(model, groups, lay, norm, batch_size=1).embeddings  # [12, 12, D]
    plan = chip_plan(model.config, [GSD], lay.chip_tokens, TOKEN_M)
    normed = [norm.with_input(groups).apply(g) for g in groups]
    for i in range(2):
        for j in range(2):
            tok, _val = run_encoder(model, make_batch([_chip_arrays(normed, lay, [GSD], i, j)], groups), plan)
            core = tok[0, 3:9, 3:9]
            assert np.array_equal(got[i * 6 : (i + 1) * 6, j * 6 : (j + 1) * 6], core)


def test_blending_lowers_the_seam_contrast_of_random_weights(model) -> None:
    """Random weights encode the chip position strongly (issue 14: 0.071 seam contrast on T29UNU):
    on the same ground, blending must lower the contrast at the seams of its own layout, and tokens
    of weight 1 (away from the 2b band of a seam) must stay their one chip's token."""
    area = _area(24 + 12, seed=3)
    norm = _norm()
    core_only = _layout(24, 6, 3, 0)  # pad 3
    blended = _layout(24, 6, 3, 2)  # chip grid 3 tokens early, pad 6
    b = embed_region(model, _region(area, blended, 0, 0, 24, 24), blended, norm).embeddings  # area 6..30
    a = embed_region(model, _region(area, core_only, 3, 3, 24, 24), core_only, norm).embeddings  # area 6..30
    sa, sb = seam_contrast(a, 6), seam_contrast(b, 6, blended.offset_tokens)
    assert sa["contrast"] > 0.02  # visible seams without blending
    assert abs(sb["contrast"]) < 0.5 * sa["contrast"], (sa, sb)
    # weight-1 tokens: places 2, 3 of a blended chip's core (region t with (t + 3) % 6 in (2, 3)); the
    # core-only region 3 tokens earlier (area 3..27) has the same chips, those tokens at t + 3
    same = embed_region(model, _region(area, core_only, 0, 0, 24, 24), core_only, norm).embeddings
    tb = [t for t in range(21) if (t + 3) % 6 in (2, 3)]
    ta = [t + 3 for t in tb]
    np.testing.assert_allclose(b[np.ix_(tb, tb)], same[np.ix_(ta, ta)], rtol=1e-5, atol=1e-5)


def test_tiles_agree_at_their_edges(model) -> None:
    """Four tiles of 12 tokens, each embedded from its own padded read, equal one 24-token region
    embedded at once: a token near a tile edge gets the same value whichever tile computes it."""
    lay = _layout(12, 6, 3, 3)
    assert lay.pad_tokens == 6
    area = _area(24 + 12, seed=7)
    norm = _norm()
    whole = embed_region(model, _region(area, lay, 0, 0, 24, 24), lay, norm, core_hw=(24, 24)).embeddings
    for ti in range(2):
        for tj in range(2):
            tile = embed_region(model, _region(area, lay, 12 * ti, 12 * tj, 12, 12), lay, norm).embeddings
            np.testing.assert_allclose(
                tile, whole[12 * ti : 12 * ti + 12, 12 * tj : 12 * tj + 12], rtol=1e-5, atol=1e-5
            )
    assert np.isfinite(whole).all()


def test_spectral_embedding_is_the_query_tokens_of_each_chip(model) -> None:
    """``embedding="spectral"``: every token is its chip's spectral-query band tokens, concatenated
    query-major (12 x band width values), with the same chips and validity as the position path."""
    import torch

    from aom_model import SPECTRAL_QUERIES

    lay = _layout(12, 6, 3, 0)
    groups = _region(_area(18), lay, 0, 0, 12, 12)
    norm = _norm()
    got = embed_region(model, groups, lay, norm, batch_size=2, embedding="spectral").embeddings
    assert (
        got.shape
        == (12, 12, len(SPECTRAL_QUERIES) * model.token_dim)
        == (12, 12, model.embedding_dim("spectral"))
    )
    normed = [norm.with_input(groups).apply(g) for g in groups]
    batch = make_batch([_chip_arrays(normed, lay, [GSD], 1, 0)], groups)
    plan = chip_plan(model.config, [GSD], lay.chip_tokens, TOKEN_M)
    q = torch.tensor(SPECTRAL_QUERIES)
    with torch.inference_mode():
        _out, qt = model.encode_with_queries(model.tokenize(batch, plan), q[:, 0], q[:, 1])  # [1, N, S, d]
    want = qt[0].reshape(12, 12, -1).numpy()[3:9, 3:9]
    np.testing.assert_allclose(got[6:12, 0:6], want, atol=1e-5, rtol=1e-5)
    pos = embed_region(model, groups, lay, norm, batch_size=2).embeddings
    assert np.array_equal(np.isfinite(got).all(-1), np.isfinite(pos).all(-1))
