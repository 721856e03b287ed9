"""The one normalisation-statistics resolver (embedding and evaluation): a band's own statistics
(its key, else the same spectral band under another key), else the input's own, identity without
any statistics; never another band's."""

from __future__ import annotations

import numpy as np

from pipelines.embed import GroupPixels, input_stats, resolve_normaliser
from pipelines.registry import BandSpec


def _band(name: str, sensor: str, wl: float, fwhm: float = 20.0) -> BandSpec:
    return BandSpec(name=name, sensor=sensor, center_wavelength_nm=wl, fwhm_nm=fwhm, gsd_m=10.0)


STATS = {
    "kind": "per-band-key",
    "bands": {
        "s2/B04": {"mean": 0.1, "std": 0.05, "wavelength_nm": 664.6},
        "s2/B08": {"mean": 0.3, "std": 0.1, "wavelength_nm": 832.8},
        "s2/B8A": {"mean": 0.32, "std": 0.11, "wavelength_nm": 864.7},
        "s2/B11": {"mean": 0.2, "std": 0.08, "wavelength_nm": 1613.7},
    },
}


def test_own_key_then_the_same_spectral_band_never_a_neighbour() -> None:
    bands = [
        _band("B04", "s2", 664.6),
        _band("B4", "landsat", 654.6, 37.0),  # red: centre 10 nm from S2 B04, within half its FWHM
        _band("B5", "landsat", 864.6, 28.0),  # NIR narrow: S2 B8A's band
        _band("B9", "landsat", 1373.5, 21.0),  # cirrus: nearest key is B11, 240 nm away -> its own
    ]
    norm = resolve_normaliser(STATS, bands)
    assert norm.describe() == {
        "landsat/B4": "same-band:s2/B04",
        "landsat/B5": "same-band:s2/B8A",
        "landsat/B9": "input",
        "s2/B04": "exact",
    }
    assert (norm.means["landsat/B4"], norm.stds["landsat/B4"]) == (0.1, 0.05)
    assert "landsat/B9" not in norm.means  # filled from the pixels it normalises
    px = np.stack(
        [np.full((4, 4), 0.2), np.full((4, 4), 0.2), np.full((4, 4), 0.2), np.arange(16.0).reshape(4, 4)]
    )
    out = norm.apply(GroupPixels("c", 10.0, tuple(bands), px.astype(np.float32)))  # [4, 4, 4]
    np.testing.assert_allclose(
        out[:3, 0, 0], [(0.2 - 0.1) / 0.05, (0.2 - 0.1) / 0.05, (0.2 - 0.32) / 0.11], rtol=1e-6
    )
    np.testing.assert_allclose([out[3].mean(), out[3].std()], [0.0, 1.0], atol=1e-6)  # its own statistics


def test_adding_a_band_without_statistics_changes_no_other_band() -> None:
    """Sentinel-2 B10 (cirrus, 1373.5 nm) has no statistics: it used to borrow B11's and sat at a
    normalised mean of -1.8; now it gets the input's own and the other bands are untouched."""
    known = [_band("B04", "s2", 664.6), _band("B08", "s2", 832.8), _band("B11", "s2", 1613.7, 91.0)]
    b10 = _band("B10", "s2", 1373.5, 31.0)
    rng = np.random.default_rng(0)
    px = rng.normal(0.2, 0.05, (4, 32, 32)).astype(np.float32)
    px[3] = rng.normal(0.004, 0.002, (32, 32))  # cirrus reflectance: near 0
    without = resolve_normaliser(STATS, known)
    with_b10 = resolve_normaliser(STATS, [*known, b10])
    for band in known:
        assert (with_b10.means[band.key], with_b10.stds[band.key], with_b10.sources[band.key]) == (
            without.means[band.key],
            without.stds[band.key],
            without.sources[band.key],
        )
    assert with_b10.sources["s2/B10"] == "input"
    a = without.apply(GroupPixels("c", 10.0, tuple(known), px[:3]))
    b = with_b10.apply(GroupPixels("c", 10.0, (*known, b10), px))
    np.testing.assert_array_equal(a, b[:3])
    assert abs(float(b[3].mean())) < 1e-5 and abs(float(b[3].std()) - 1.0) < 1e-4
    # the caller's statistics of the whole input (a raster, a patch set) take precedence
    whole = resolve_normaliser(STATS, [*known, b10], fallback={"s2/B10": (0.005, 0.002)})
    assert whole.sources["s2/B10"] == "input" and whole.means["s2/B10"] == 0.005


def test_without_statistics_identity_or_the_inputs_own() -> None:
    bands = [_band("B1", "x", 500.0)]
    ident = resolve_normaliser(None, bands)
    assert (ident.means, ident.stds, ident.sources) == ({"x/B1": 0.0}, {"x/B1": 1.0}, {"x/B1": "identity"})
    data = resolve_normaliser({"bands": {}}, bands, fallback={"x/B1": (0.2, 0.05)})
    assert (data.means, data.stds, data.sources) == ({"x/B1": 0.2}, {"x/B1": 0.05}, {"x/B1": "input"})
    # unusable statistics of the band's own key count as none
    bad = {"bands": {"x/B1": {"mean": 0.1, "std": 0.0, "wavelength_nm": 500.0}}}
    assert resolve_normaliser(bad, bands).sources == {"x/B1": "input"}
    assert input_stats(np.array([np.nan, 1.0, 3.0])) == (2.0, 1.0)
    assert input_stats(np.full(3, np.nan)) == (0.0, 1.0) and input_stats(np.ones(3)) == (1.0, 1.0)
