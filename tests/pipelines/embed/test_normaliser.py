"""The one normalisation-statistics resolver (embedding and evaluation): exact key, nearest wavelength,
identity without statistics, the caller's fallback, and a clear error otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.embed import EmbedConfigError, GroupPixels, resolve_normaliser
from pipelines.registry import BandSpec


def _band(name: str, sensor: str, wl: float) -> BandSpec:
    return BandSpec(name=name, sensor=sensor, center_wavelength_nm=wl, fwhm_nm=20.0, gsd_m=10.0)


STATS = {
    "kind": "per-band-key",
    "bands": {
        "s2/B04": {"mean": 0.1, "std": 0.05, "wavelength_nm": 664.6},
        "s2/B08": {"mean": 0.3, "std": 0.1, "wavelength_nm": 832.8},
        "s2/B8A": {"mean": 0.32, "std": 0.11, "wavelength_nm": 864.7},
    },
}


def test_exact_key_then_nearest_wavelength() -> None:
    bands = [_band("B04", "s2", 664.6), _band("B4", "landsat", 654.6), _band("B5", "landsat", 864.6)]
    norm = resolve_normaliser(STATS, bands)
    assert norm.describe() == {
        "landsat/B4": "nearest:s2/B04",
        "landsat/B5": "nearest:s2/B8A",
        "s2/B04": "exact",
    }
    assert (norm.means["landsat/B4"], norm.stds["landsat/B4"]) == (0.1, 0.05)
    group = GroupPixels("c", 10.0, tuple(bands), np.full((3, 2, 2), 0.2, dtype=np.float32))
    out = norm.apply(group)  # [3, 2, 2]
    np.testing.assert_allclose(
        out[:, 0, 0], [(0.2 - 0.1) / 0.05, (0.2 - 0.1) / 0.05, (0.2 - 0.32) / 0.11], rtol=1e-6
    )
    # equally near two keys: the smaller key wins (a stable choice)
    tie = resolve_normaliser(STATS, [_band("X", "other", (832.8 + 864.7) / 2)])
    assert tie.sources == {"other/X": "nearest:s2/B08"}


def test_without_statistics_identity_or_the_callers_fallback() -> None:
    bands = [_band("B1", "x", 500.0)]
    ident = resolve_normaliser(None, bands)
    assert (ident.means, ident.stds, ident.sources) == ({"x/B1": 0.0}, {"x/B1": 1.0}, {"x/B1": "identity"})
    data = resolve_normaliser({"bands": {}}, bands, fallback={"x/B1": (0.2, 0.05)})
    assert (data.means, data.stds, data.sources) == ({"x/B1": 0.2}, {"x/B1": 0.05}, {"x/B1": "data"})


def test_unusable_statistics_error_without_fallback() -> None:
    no_wl = {"bands": {"other/B1": {"mean": 0.1, "std": 0.1}}}
    with pytest.raises(EmbedConfigError, match=r"no normalisation statistics for bands \['x/B1'\]"):
        resolve_normaliser(no_wl, [_band("B1", "x", 500.0)])
    bad = {"bands": {"x/B1": {"mean": 0.1, "std": 0.0, "wavelength_nm": 500.0}}}
    with pytest.raises(EmbedConfigError, match="invalid statistics"):
        resolve_normaliser(bad, [_band("B1", "x", 500.0)])
    norm = resolve_normaliser(bad, [_band("B1", "x", 500.0)], fallback={"x/B1": (0.2, 0.05)})
    assert norm.sources == {"x/B1": "data"}
