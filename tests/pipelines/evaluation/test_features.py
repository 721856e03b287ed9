"""Per-band features laid out on a reference band set: raw statistics and band-token means."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.evaluation import load_encoder, scene_patches, synthetic_scene
from pipelines.evaluation.features import (
    band_token_features,
    encoder_features,
    encoder_outputs,
    layout_on_reference,
    spectral_features,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def patches():
    ps = scene_patches(synthetic_scene(size_px=72, n_classes=2, seed=3), patch_px=12, block_patches=2)
    return ps.take(np.arange(min(12, len(ps))))


@pytest.fixture(scope="module")
def encoder():
    return load_encoder("random:tiny", seed=0, threads=1)


def test_layout_of_a_subset_is_the_full_layout_with_nan_for_missing_bands(patches) -> None:
    ref = patches.bands
    rng = np.random.default_rng(0)
    per_band = [rng.normal(size=(5, 3)).astype(np.float32) for _ in ref]  # [N, K] per band
    full = layout_on_reference(ref, per_band, ref)
    assert full.shape == (5, 3 * len(ref)) and np.isfinite(full).all()
    keep = [len(ref) - 1, 0, 2]  # another order than the reference's
    sub = layout_on_reference([ref[i] for i in keep], [per_band[i] for i in keep], ref)
    want = full.copy()
    for r in range(len(ref)):
        if r not in keep:
            want[:, 3 * r : 3 * (r + 1)] = np.nan
    np.testing.assert_array_equal(sub, want)


def test_band_token_features_shapes_nan_blocks_and_band_order(patches, encoder) -> None:
    ref = patches.bands
    d = encoder.model.config.embed_dim
    gsds = {b.gsd_m for b in ref}
    assert len(gsds) > 1  # several band groups: the channel order differs from the band order
    full = band_token_features(encoder, patches, ref)  # [N, D * C_ref]
    assert full.shape == (len(patches), d * len(ref)) and np.isfinite(full).all()
    # the bands in reverse order regroup the channels: each band's features must follow its band
    rev = patches.subset(list(range(len(ref)))[::-1])
    np.testing.assert_allclose(band_token_features(encoder, rev, ref), full, atol=1e-4)
    keep = [0, 2, len(ref) - 1]
    sub = band_token_features(encoder, patches.subset(keep), ref)
    assert sub.shape == full.shape
    for r in range(len(ref)):
        block = sub[:, d * r : d * (r + 1)]
        assert np.isfinite(block).all() if r in keep else np.isnan(block).all()


def test_encoder_outputs_pooled_is_the_product_embedding(patches, encoder) -> None:
    from aom_model import BandBatch, plan_for
    from pipelines.embed import resolve_normaliser
    from pipelines.evaluation.features import band_stats

    o = encoder_outputs(encoder, patches, batch_size=5, band_tokens=True)
    n, d = len(patches), encoder.model.config.embed_dim
    assert o["pooled"].shape == (n, d) and o["pos_std"].shape == (n, d)
    assert o["band_tokens"].shape == (n, len(patches.bands), d)
    assert (o["pos_std"] >= 0).all()
    np.testing.assert_array_equal(encoder_features(encoder, patches, batch_size=5), o["pooled"])
    norm = resolve_normaliser(None, patches.bands, fallback=band_stats(patches))
    px = [
        torch.from_numpy(((p - norm.means[b.key]) / norm.stds[b.key]).astype(np.float32))
        for b, p in zip(patches.bands, patches.pixels)
    ]
    batch = BandBatch.from_bands(
        px,
        [b.center_wavelength_nm for b in patches.bands],
        [b.fwhm_nm for b in patches.bands],
        [b.gsd_m for b in patches.bands],
    )
    m = encoder.model
    with torch.inference_mode():
        ref = m.forward_features(batch, plan_for(batch, m.config, m.config.token_ground_m)).pooled
    np.testing.assert_allclose(o["pooled"], ref.numpy(), atol=1e-5)


def test_spectral_features_one_layout_for_any_band_set(patches, encoder) -> None:
    """Spectral features: S queries x D for every band set and band order; the pooled embedding is
    unchanged by the queries; fewer bands give other (finite) values in the same layout."""
    from aom_model import SPECTRAL_QUERIES

    d = encoder.model.config.embed_dim
    full = spectral_features(encoder, patches, batch_size=5)  # [N, S * D]
    assert full.shape == (len(patches), len(SPECTRAL_QUERIES) * d) and np.isfinite(full).all()
    n = len(patches.bands)
    np.testing.assert_allclose(
        spectral_features(encoder, patches.subset(list(range(n))[::-1]), batch_size=5), full, atol=1e-4
    )
    sub = spectral_features(encoder, patches.subset([0, n - 1]), batch_size=5)
    assert sub.shape == full.shape and np.isfinite(sub).all() and not np.allclose(sub, full, atol=1e-3)
    two = spectral_features(encoder, patches, queries=[(560.0, 35.0), (842.0, 115.0)], batch_size=5)
    assert two.shape == (len(patches), 2 * d)
    o = encoder_outputs(encoder, patches, batch_size=5, queries=[(560.0, 35.0)])
    # the same up to float rounding (queries take the masked attention path)
    np.testing.assert_allclose(o["pooled"], encoder_features(encoder, patches, batch_size=5), atol=1e-5)
