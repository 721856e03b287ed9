"""``pipelines.evaluation.probes``: the probe's C chosen on training patches alone (``c="auto"``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pipelines.evaluation.probes import C_GRID, choose_c, fit_predict, make_probe


def _blocks(seed: int, n_blocks: int = 9, per_block: int = 15, dims: int = 12) -> tuple[np.ndarray, ...]:
    """Patches in spatial blocks: a label from two informative columns plus noise columns, and a
    per-block offset (so neighbouring patches are alike, as on the ground)."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_blocks), per_block)
    x = rng.normal(size=(len(groups), dims)) + rng.normal(scale=0.5, size=(n_blocks, dims))[groups]
    score = x[:, 0] - 0.7 * x[:, 1] + rng.normal(scale=0.8, size=len(groups))
    y = np.digitize(score, np.quantile(score, [1 / 3, 2 / 3]))
    return x, y, groups


def test_choose_c_is_grouped_grid_search() -> None:
    """Oracle: scikit-learn's GridSearchCV over the same grid, grouped folds and metric picks the
    same C (ties to the smaller C, as GridSearchCV's first best)."""
    from sklearn.model_selection import GridSearchCV, GroupKFold

    x, y, groups = _blocks(1)
    search = GridSearchCV(
        make_probe("linear", False, len(x), seed=0),
        {"logisticregression__C": sorted(C_GRID)},
        cv=GroupKFold(n_splits=3),
        scoring="accuracy",
    )
    search.fit(x, y, groups=groups)
    assert choose_c(x, y, groups) == search.best_params_["logisticregression__C"]


def test_choose_c_never_splits_a_block(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.evaluation.probes as probes

    x, y, groups = _blocks(3)
    seen: list[tuple[set[int], set[int]]] = []
    real = probes.fit_predict

    def spy(
        kind: str, x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, *a: Any, **kw: Any
    ) -> np.ndarray:
        rows_tr = {int(np.flatnonzero((x == r).all(axis=1))[0]) for r in x_tr}
        rows_te = {int(np.flatnonzero((x == r).all(axis=1))[0]) for r in x_te}
        seen.append(({int(groups[i]) for i in rows_tr}, {int(groups[i]) for i in rows_te}))
        return real(kind, x_tr, y_tr, x_te, *a, **kw)

    monkeypatch.setattr(probes, "fit_predict", spy)
    choose_c(x, y, groups)
    assert len(seen) == 3 * len(C_GRID)
    assert all(not (tr & te) for tr, te in seen)


def test_auto_c_uses_training_patches_only() -> None:
    """``c="auto"`` predicts as a probe at the C that ``choose_c`` picks from the training fold alone."""
    x, y, groups = _blocks(4)
    tr, te = np.flatnonzero(groups < 8), np.flatnonzero(groups >= 8)
    c = choose_c(x[tr], y[tr], groups[tr])
    auto = fit_predict("linear", x[tr], y[tr], x[te], c="auto", groups=groups[tr])
    np.testing.assert_array_equal(auto, fit_predict("linear", x[tr], y[tr], x[te], c=c))


def test_auto_c_needs_groups_and_falls_back_with_one_block() -> None:
    x, y, groups = _blocks(5)
    with pytest.raises(ValueError, match="groups"):
        fit_predict("linear", x, y, x, c="auto")
    assert choose_c(x, y, np.zeros(len(x), dtype=int)) == 1.0
    # kNN has no C: "auto" is the plain kNN probe
    knn = fit_predict("knn", x, y, x[:10], c="auto", groups=groups)
    np.testing.assert_array_equal(knn, fit_predict("knn", x, y, x[:10]))


def test_choose_c_prefers_weak_regularisation_when_the_signal_needs_it() -> None:
    """Many classes told apart by small differences: heavy L2 (C = 0.01) shrinks the probe towards
    the prior, so the inner folds pick a larger C than the smallest."""
    x, y, groups = _blocks(6, dims=8)
    assert choose_c(x, y, groups) > min(C_GRID)
