"""Few-shot cross-validation must never score a label against its own token or a neighbour of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pyproj import CRS

from pipelines.query import Labels, classify, fit_fewshot, open_embeddings
from pipelines.testing import SyntheticStore, build_synthetic_store, synthetic_version


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStore:
    root = str(tmp_path_factory.mktemp("emb") / "store")
    return build_synthetic_store(root, version=synthetic_version(dim=32), stac=False, consolidate=False)


def _random_labels_on_shared_tokens(emb, seed: int = 1) -> Labels:
    """40 tokens of one tile, 4 label points inside each token, labels drawn at random (no signal)."""
    rng = np.random.default_rng(seed)
    g = emb.grid(32631)
    ref = next(r for r in emb.tiles(0)[32631] if r.tile_id == "32631_95_648")
    cells = rng.choice(80 * 80, 40, replace=False)
    rows, cols = ref.row0 + 8 + cells // 80, ref.col0 + 8 + cells % 80
    xs, ys, labels = [], [], []
    for r, c, lab in zip(rows, cols, rng.integers(0, 3, rows.size)):
        cx, cy = g.x0 + (c + 0.5) * g.token_ground_m, g.y1 - (r + 0.5) * g.token_ground_m
        for dx, dy in ((-20, -20), (20, -20), (-20, 20), (20, 20)):
            xs.append(cx + dx)
            ys.append(cy + dy)
            labels.append(f"c{lab}")
    return Labels(np.array(xs), np.array(ys), CRS.from_epsg(32631), np.array(labels, dtype=object))


@pytest.mark.parametrize("method", ["knn", "linear"])
def test_labels_sharing_a_token_do_not_leak_into_the_cv_score(synth: SyntheticStore, method: str) -> None:
    # Random labels carry no information: an honest CV is near chance (1/3). With the labels of one
    # token split over folds, kNN found each test label's own vector in training (accuracy 1.000).
    emb = open_embeddings(synth.root_url)
    res = classify(emb, _random_labels_on_shared_tokens(emb), method=method)  # type: ignore[arg-type]
    assert res.cv_accuracy is not None and res.n_folds == 5
    assert res.cv_accuracy < 0.6, res.summary()
    assert any("distinct tokens" in n for n in res.notes)


def test_neighbouring_tokens_are_left_out_of_training() -> None:
    # 30 pairs of adjacent tokens with near-identical vectors (as neighbours sharing context are) and
    # one random label per pair: only the buffer keeps a pair's twin out of its fold's training set.
    rng = np.random.default_rng(0)
    base = rng.standard_normal((30, 16)).astype(np.float32)
    X = np.repeat(base, 2, axis=0) + 1e-3 * rng.standard_normal((60, 16)).astype(np.float32)
    y = np.repeat(rng.integers(0, 3, 30), 2).astype(str)
    tokens = np.array([[32631, 10 * (i // 2), 10 * (i // 2) + i % 2] for i in range(60)])
    leaky = fit_fewshot(X, y, method="knn", tokens=tokens, buffer_tokens=0)
    honest = fit_fewshot(X, y, method="knn", tokens=tokens)
    assert leaky.cv_accuracy is not None and leaky.cv_accuracy >= 0.8  # what no buffer reports
    assert honest.cv_accuracy is not None and honest.cv_accuracy < 0.6


def test_identical_vectors_form_one_group_without_tokens(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    X = np.repeat(rng.standard_normal((30, 8)).astype(np.float32), 3, axis=0)
    y = np.repeat(rng.integers(0, 3, 30), 3).astype(str)
    res = fit_fewshot(X, y, method="knn")
    assert res.cv_accuracy is not None and res.cv_accuracy < 0.6
