"""Synthetic model inputs for tests, benchmarks and smoke runs (not part of the model's API)."""

from aom_model.testing.batches import BandIdentity, sensor_batch, smooth_field

__all__ = [
    "BandIdentity",
    "sensor_batch",
    "smooth_field",
]
