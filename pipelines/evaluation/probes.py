"""Frozen-feature probes (logistic regression, kNN), metrics, the blocked train/test split and the
patches that may set input statistics (``stats_pools``)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

PROBES = ("linear", "knn")
#: logistic-regression C values that ``choose_c`` (``c="auto"``) picks from
C_GRID: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)


def parse_c(value: float | str, name: str = "probe_c") -> float | str:
    """A linear probe's C as given (text or number): ``"auto"`` (:func:`choose_c` per training fold)
    or a number > 0; ValueError naming ``name`` otherwise."""
    if isinstance(value, str) and value.strip() == "auto":
        return "auto"
    try:
        c = float(value)
    except ValueError:
        c = -1.0
    if not c > 0:  # NaN too
        raise ValueError(f"{name} needs a number > 0 or 'auto', got {value!r}")
    return c


def make_probe(
    kind: str, multilabel: bool, n_train: int, knn_k: int = 10, seed: int = 0, c: float = 1.0
) -> Any:
    """Imputer (training mean, for features a band set lacks) -> standardiser -> probe. ``c``: the
    logistic regression's inverse regularisation strength (the protocol uses 1)."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pre = [SimpleImputer(strategy="mean", keep_empty_features=True), StandardScaler()]
    if kind == "linear":
        lr = LogisticRegression(C=c, max_iter=3000, random_state=seed)
        return make_pipeline(*pre, OneVsRestClassifier(lr) if multilabel else lr)
    if kind == "knn":
        k = max(1, min(knn_k, n_train))
        return make_pipeline(*pre, KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="distance"))
    raise ValueError(f"unknown probe {kind!r}; choose from {PROBES}")


def fit_predict(
    kind: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    multilabel: bool = False,
    knn_k: int = 10,
    seed: int = 0,
    c: float | str = 1.0,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Fit ``kind`` on the training features and predict the test features. ``c="auto"`` (linear
    only): C is chosen by :func:`choose_c` on the training patches alone, grouped by ``groups``
    (their spatial blocks), so the test patches never inform it."""
    from threadpoolctl import threadpool_limits

    if c == "auto":
        if groups is None:
            raise ValueError('c="auto" needs the training patches\' groups (spatial blocks)')
        c = choose_c(x_train, y_train, groups, multilabel, seed) if kind == "linear" else 1.0
    probe = make_probe(kind, multilabel, len(x_train), knn_k, seed, float(c))
    # one BLAS thread: these problems are tiny and oversubscribed threads make them 10x slower
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence / constant-label warnings on tiny folds
        probe.fit(x_train, y_train)
        pred: np.ndarray = probe.predict(x_test)
    return pred


def choose_c(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    multilabel: bool = False,
    seed: int = 0,
    grid: Sequence[float] = C_GRID,
    folds: int = 3,
) -> float:
    """The linear probe's C from ``grid`` with the best score (the protocol's metric, averaged over
    ``folds`` inner folds of these training patches, as scikit-learn's ``GridSearchCV`` does) with
    whole groups per fold (``GroupKFold``: a spatial block is never on both sides, as in the outer
    split); ties go to the smaller C. With fewer than two groups there is nothing to hold out: the
    protocol's C = 1."""
    from sklearn.model_selection import GroupKFold

    n_groups = len(np.unique(groups))
    if n_groups < 2:
        return 1.0
    inner = list(GroupKFold(n_splits=min(folds, n_groups)).split(x, groups=groups))
    best_c, best = 1.0, -np.inf
    for c in sorted(grid):
        fold_scores = [
            score(y[te], fit_predict("linear", x[tr], y[tr], x[te], multilabel, seed=seed, c=c), multilabel)
            for tr, te in inner
        ]
        s = float(np.mean([f["score"] for f in fold_scores]))
        if s > best:
            best_c, best = c, s
    return best_c


def score(y_true: np.ndarray, y_pred: np.ndarray, multilabel: bool = False) -> dict[str, float]:
    """Single-label: accuracy and macro-F1. Multi-label: micro-F1 (reported as the score) and the
    exact-match ratio."""
    from sklearn.metrics import accuracy_score, f1_score

    if multilabel:
        return {
            "score": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
            "exact_match": float(accuracy_score(y_true, y_pred)),
        }
    return {
        "score": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


def metric_name(multilabel: bool) -> str:
    return "micro-F1" if multilabel else "accuracy"


def split_folds(
    groups: np.ndarray,
    labels: np.ndarray,
    seed: int = 0,
    test_fraction: float = 0.3,
    multilabel: bool = False,
    min_groups: int = 8,
    tries: int = 200,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """Blocked split: whole groups (spatial blocks / source images) go to train or test.

    With at least ``min_groups`` groups: one seeded split holding out ``test_fraction`` of the groups,
    the first of ``tries`` seeded draws in which every class appears in both train and test (else the
    draw covering most classes). With fewer groups: leave-one-group-out folds. -> (folds, description).
    """
    uniq = np.unique(groups)
    if len(uniq) < 2:
        raise ValueError("the patches form a single spatial block: no train/test split possible")
    y = labels if multilabel else np.eye(int(labels.max()) + 1, dtype=bool)[labels]
    present = y.any(axis=0)
    if len(uniq) < min_groups:
        folds = [(np.flatnonzero(groups != g), np.flatnonzero(groups == g)) for g in uniq]
        return folds, f"leave-one-group-out over {len(uniq)} groups"
    n_test = min(len(uniq) - 1, max(1, round(test_fraction * len(uniq))))
    best: tuple[int, np.ndarray, np.ndarray] | None = None
    for t in range(tries):
        rng = np.random.default_rng([seed, 11, t])
        test_groups = rng.permutation(uniq)[:n_test]
        is_test = np.isin(groups, test_groups)
        cover = int((y[~is_test].any(axis=0) & y[is_test].any(axis=0) & present).sum())
        if best is None or cover > best[0]:
            best = (cover, np.flatnonzero(~is_test), np.flatnonzero(is_test))
        if cover == int(present.sum()):
            break
    assert best is not None
    desc = f"blocked hold-out: {n_test} of {len(uniq)} spatial blocks for test"
    if best[0] < int(present.sum()):
        desc += f" ({int(present.sum()) - best[0]} class(es) not in both train and test)"
    return [(best[1], best[2])], desc


def stats_pools(
    splits: Sequence[tuple[Sequence[tuple[np.ndarray, np.ndarray]], str]], n: int
) -> tuple[list[np.ndarray], list[list[int]], str]:
    """The patches whose pixels may set the input statistics (bands the checkpoint has none for):
    only patches the probes train on, never one they are tested on. -> (pools as patch indices, per
    split and fold the index of its pool, a description).

    One pool, the patches in the training set of every fold of every split, whenever there are any
    (features are then computed once); otherwise (leave-one-group-out, or hold-out splits that test
    every block between them) each fold's own training patches, which means encoding once per fold."""
    trained = np.ones(n, dtype=bool)
    for folds, _ in splits:
        for tr, te in folds:
            in_tr = np.zeros(n, dtype=bool)
            in_tr[tr] = True
            in_tr[te] = False
            trained &= in_tr
    if trained.any():
        pool = np.flatnonzero(trained)
        return (
            [pool],
            [[0] * len(folds) for folds, _ in splits],
            f"the {len(pool)} of {n} patches in every fold's training set",
        )
    pools: list[np.ndarray] = []
    pool_of: list[list[int]] = []
    for folds, _ in splits:
        at = []
        for tr, te in folds:
            tr = np.setdiff1d(np.asarray(tr, dtype=np.int64), te)
            same = [i for i, p in enumerate(pools) if np.array_equal(p, tr)]
            if not same:
                pools.append(tr)
            at.append(same[0] if same else len(pools) - 1)
        pool_of.append(at)
    return pools, pool_of, f"each fold's own training patches ({len(pools)} folds; no patch is in every one)"


def band_subsets(n_bands: int, fraction: float, draws: int, seed: int = 0) -> list[list[int]]:
    """Seeded random band subsets keeping ``round(fraction * n_bands)`` (>= 1) bands: ``draws``
    distinct subsets where possible (fewer when fewer exist); a fraction of 1 gives the full set once.
    The same (n_bands, fraction, draws, seed) always gives the same subsets."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    k = max(1, min(n_bands, round(fraction * n_bands)))
    if k == n_bands:
        return [list(range(n_bands))]
    from math import comb

    want = min(draws, comb(n_bands, k))
    rng = np.random.default_rng([seed, round(fraction * 10_000), n_bands])
    out: list[list[int]] = []
    seen: set[tuple[int, ...]] = set()
    while len(out) < want:
        s = tuple(sorted(int(i) for i in rng.choice(n_bands, size=k, replace=False)))
        if s not in seen:
            seen.add(s)
            out.append(list(s))
    return out
