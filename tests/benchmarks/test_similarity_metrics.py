"""``benchmarks/similarity_metrics.py``: its raw-band baseline and its input checks (the retrieval
precision itself is ``pipelines.evaluation.product``'s, tested in tests/pipelines/evaluation)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from pipelines.evaluation.datasets import synthetic_scene
from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from similarity_metrics import band_means, main, raster_hw


def test_band_means_average_each_tokens_pixels_partial_tokens_included() -> None:
    scene = synthetic_scene(size_px=30, n_classes=2, cell_px=6, seed=0, nodata_frac=0.0)
    hw = raster_hw(scene)
    finest = [a for a, b in zip(scene.arrays, scene.bands) if b.gsd_m == min(x.gsd_m for x in scene.bands)]
    assert hw == finest[0].shape == (30, 30)
    means = band_means(scene, 4, (8, 8))  # 30 px in 4 px tokens: the last row/column has 2 px
    assert means.shape == (8, 8, len(finest))
    np.testing.assert_allclose(means[0, 0, 0], finest[0][:4, :4].mean(), rtol=1e-6)
    np.testing.assert_allclose(means[7, 7, 1], finest[1][28:, 28:].mean(), rtol=1e-6)


def test_bad_embedding_exits_2_naming_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--embedding", "pooled"]) == 2
    assert "spectral and/or position" in capsys.readouterr().err


def test_bad_window_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--window", "0,0,300"]) == 2
    assert "row,col,height,width" in capsys.readouterr().err
