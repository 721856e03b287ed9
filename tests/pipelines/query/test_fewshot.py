"""Few-shot cross-validation must never score a label against its own token or a neighbour of it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

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
def test_labels_sharing_a_token_do_not_leak_into_the_cv_score(
    synth: SyntheticStore, method: Literal["knn", "linear"]
) -> None:
    # Random labels carry no information: an honest CV is near chance (1/3). With the labels of one
    # token split over folds, kNN found each test label's own vector in training (accuracy 1.000).
    emb = open_embeddings(synth.root_url)
    res = classify(emb, _random_labels_on_shared_tokens(emb), method=method)
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


def _border_pairs(n: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs of lon/lat points 31 m either side of 6 degrees E (the border of UTM zones 31 and
    32), pairs about 2.8 tokens apart north-south: each pair's two tokens touch across the border."""
    lat = 44.98 + 0.002 * np.arange(n)
    lon = np.column_stack([np.full(n, 5.9996), np.full(n, 6.0004)]).reshape(-1)
    return lon, np.repeat(lat, 2)


def test_the_buffer_reaches_across_a_zone_border() -> None:
    # 30 pairs of tokens that touch across the border, one in each zone, with near-identical vectors
    # and one random label per pair: only a buffer that crosses the border keeps a pair's twin out of
    # its fold's training set (rows and columns of two zones' grids are not comparable).
    from pyproj import Transformer

    from pipelines.embeddings import ZoneGrid

    lon, lat = _border_pairs()
    grids = {z: ZoneGrid(z, 80.0, 7680.0) for z in (32631, 32632)}
    tokens = []
    for i, (x, y) in enumerate(zip(lon, lat)):
        z = 32631 if i % 2 == 0 else 32632
        g = grids[z]
        sx, sy = Transformer.from_crs(4326, z, always_xy=True).transform(x, y)
        tokens.append([z, int((g.y1 - sy) // g.token_ground_m), int((sx - g.x0) // g.token_ground_m)])
    tok = np.array(tokens)
    rng = np.random.default_rng(0)
    base = rng.standard_normal((30, 16)).astype(np.float32)
    X = np.repeat(base, 2, axis=0) + 1e-3 * rng.standard_normal((60, 16)).astype(np.float32)
    y = np.repeat(rng.integers(0, 3, 30), 2).astype(str)
    leaky = fit_fewshot(X, y, method="knn", tokens=tok, buffer_tokens=0)
    honest = fit_fewshot(X, y, method="knn", tokens=tok, grids=grids)
    assert leaky.cv_accuracy is not None and leaky.cv_accuracy >= 0.8  # what no buffer reports
    assert honest.cv_accuracy is not None and honest.cv_accuracy < 0.6, honest.summary()
    with pytest.raises(ValueError, match="several zones: pass grids"):
        fit_fewshot(X, y, method="knn", tokens=tok)  # the buffer could not cross the border


def test_classify_leaves_out_the_neighbour_across_the_zone_border(
    synth: SyntheticStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipelines.query.fewshot as fewshot
    from pipelines.embeddings import unit

    emb = open_embeddings(synth.root_url)
    lon, lat = _border_pairs()
    rng = np.random.default_rng(3)
    lab = Labels(
        lon, lat, CRS.from_epsg(4326), np.repeat(rng.integers(0, 3, 30), 2).astype(str).astype(object)
    )
    X, info = fewshot.vectors_at(emb, lon, lat, 4326)
    assert np.isfinite(X).all() and set(info["epsg"][0::2]) == {32631} and set(info["epsg"][1::2]) == {32632}
    Xn = unit(X)
    folds: list[tuple[np.ndarray, np.ndarray]] = []
    real = fewshot._fold_predict

    def spy(method, X_train, y_train, X_test, k, seed):
        def which(v: np.ndarray) -> set[int]:
            return {int(np.flatnonzero((Xn == row).all(axis=1))[0]) for row in v}

        folds.append((np.array(sorted(which(X_train))), np.array(sorted(which(X_test)))))
        return real(method, X_train, y_train, X_test, k, seed)

    monkeypatch.setattr(fewshot, "_fold_predict", spy)
    res = classify(emb, lab, method="knn")
    assert res.n_folds == 5 and len(folds) == 5
    for train, test in folds:
        twins = {i ^ 1 for i in test.tolist()}  # label 2k and 2k + 1 are a pair
        assert not twins & set(train.tolist())
