"""Pretraining engine pieces that need no cube store: the token size of each step."""

from __future__ import annotations

import math

import numpy as np

from aom_model import AOMConfig
from aom_model.train.engine import token_m_for_step


def test_token_size_per_step_is_a_pure_function_covering_the_range() -> None:
    cfg = AOMConfig.named("tiny")  # 40-320 m
    sizes = np.array([token_m_for_step(7, s, cfg) for s in range(4000)])
    assert [token_m_for_step(7, s, cfg) for s in range(50)] == list(sizes[:50])  # same seed, same sizes
    assert sizes.tolist() != [token_m_for_step(8, s, cfg) for s in range(4000)]
    assert sizes.min() >= 40.0 and sizes.max() <= 320.0
    # log-uniform: each octave (40-80, 80-160, 160-320) gets about a third of the steps
    counts = np.histogram(
        np.log2(sizes), bins=[math.log2(40), math.log2(80), math.log2(160), math.log2(320)]
    )[0]
    assert (np.abs(counts / len(sizes) - 1 / 3) < 0.03).all(), counts
    assert sizes.min() < 41.0 and sizes.max() > 310.0  # both ends are in distribution


def test_a_fixed_size_config_trains_its_one_size() -> None:
    cfg = AOMConfig(token_ground_m=120.0)
    assert {token_m_for_step(0, s, cfg) for s in range(20)} == {120.0}


def test_token_sizes_cover_at_least_two_pixels_of_the_finest_gsd() -> None:
    """60 m data never draws one-pixel tokens (their normalised target is 0); 10 m data is unchanged."""
    cfg = AOMConfig.named("tiny")  # 40-320 m
    fine = [token_m_for_step(3, s, cfg, finest_gsd_m=10.0) for s in range(2000)]
    assert fine == [token_m_for_step(3, s, cfg) for s in range(2000)]  # 2 px of 10 m = 20 m < 40 m
    coarse = np.array([token_m_for_step(3, s, cfg, finest_gsd_m=60.0) for s in range(2000)])
    assert coarse.min() >= 120.0 and coarse.max() <= 320.0 and coarse.min() < 122.0  # 2 px of 60 m
    assert (np.argsort(coarse) == np.argsort(fine)).all()  # the same draw, mapped onto 120-320 m
    assert [token_m_for_step(3, s, cfg, finest_gsd_m=60.0) for s in range(50)] == coarse[:50].tolist()
    assert token_m_for_step(0, 0, cfg, finest_gsd_m=500.0) == 320.0  # coarser than the range: its top
