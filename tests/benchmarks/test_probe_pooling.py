"""``benchmarks/probe_pooling.py``'s two baselines: the PCA basis and the ridge-imputed half-band probe."""

from __future__ import annotations

import sys

import numpy as np

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from probe_pooling import pca_basis, probe, probe_imputed


def test_pca_basis_is_orthonormal_ordered_by_variance_and_skips_nan_rows() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    x[3] = np.nan
    mu, axes = pca_basis(x, 4)
    ok = np.isfinite(x).all(axis=1)
    np.testing.assert_allclose(mu, x[ok].mean(axis=0))
    np.testing.assert_allclose(axes.T @ axes, np.eye(4), atol=1e-10)
    var = ((x[ok] - mu) @ axes).var(axis=0)
    assert np.all(np.diff(var) < 0)
    np.testing.assert_allclose(np.abs(axes[:, 0]), [1, 0, 0, 0, 0, 0], atol=0.05)


def test_imputed_probe_equals_the_all_band_probe_when_the_missing_columns_are_linear_in_the_kept() -> None:
    """Missing columns that are exact linear functions of the kept ones are predicted (almost) exactly,
    so the transfer score is the all-band score."""
    rng = np.random.default_rng(1)
    n = 300
    a = rng.normal(size=(n, 3))
    y = (a[:, 0] + 0.5 * a[:, 1] > 0).astype(int)
    x = np.concatenate([a, a @ rng.normal(size=(3, 3))], axis=1)  # columns 3-5 = linear in 0-2
    idx = np.arange(n)
    splits = [([(idx[:200], idx[200:]), (idx[100:], idx[:100])], "test split")]
    g = idx // 10  # blocks of ten patches
    full = probe(splits, y, x, x, 1.0, False, g)
    assert full > 0.9
    assert abs(probe_imputed(splits, y, x, np.array([0, 1, 2]), 1.0, False, g) - full) < 0.02
    # C chosen per training fold (grouped inner CV): the same near-exact transfer
    auto = probe(splits, y, x, x, "auto", False, g)
    assert auto > 0.9
    assert abs(probe_imputed(splits, y, x, np.array([0, 1, 2]), "auto", False, g) - auto) < 0.02
