"""``benchmarks/similarity_centring.py``: token labels and precision@k on arrays with a known answer."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from similarity_centring import main, precision_at_k, token_labels


def test_token_labels_need_the_purity_share_of_a_tokens_pixels() -> None:
    labels = np.full((6, 6), 1)
    labels[:3, :3] = 0  # token (0, 0): all class 0
    labels[0, 3] = 2  # token (0, 1): 8 of 9 pixels class 1
    labels[3:5, 3:] = -1  # token (1, 1): 3 of 9 pixels class 1, the rest unlabelled
    out = token_labels(labels, 3, (2, 2), purity=0.8)
    np.testing.assert_array_equal(out, [[0, 1], [1, -1]])


def test_precision_is_one_for_separated_classes_and_chance_for_noise() -> None:
    rng = np.random.default_rng(0)
    lab = np.zeros((40, 40), dtype=np.int64)
    lab[:, 20:] = 1
    centres = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    emb = centres[lab] + 0.05 * rng.normal(size=(40, 40, 4))
    emb[0, 0] = np.nan  # a nodata token is never a query nor an answer
    exact = precision_at_k(emb, lab, k=10, exclude=3, queries=30)
    assert exact == {0: 1.0, 1: 1.0}
    noise = precision_at_k(rng.normal(size=(40, 40, 4)), lab, k=10, exclude=3, queries=30)
    assert all(0.3 < v < 0.7 for v in noise.values())


def test_a_shared_component_leaves_the_raw_ranking_to_the_rest() -> None:
    """Adding one constant vector to every token compresses raw cosines towards 1, but the
    nearest neighbours still follow the class directions (what the benchmark measures on T29UNU)."""
    rng = np.random.default_rng(1)
    lab = np.repeat(np.arange(2), 800).reshape(40, 40)
    centres = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    emb = centres[lab] + 0.2 * rng.normal(size=(40, 40, 3))
    shared = emb + np.array([0.0, 0.0, 20.0])
    assert precision_at_k(shared, lab, 10, 3, 30) == precision_at_k(emb, lab, 10, 3, 30)


def test_bad_embedding_exits_2_naming_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--embedding", "pooled"]) == 2
    assert "spectral and/or position" in capsys.readouterr().err
