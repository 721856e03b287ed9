"""The training tests' shared synthetic cube store, built once per run (read-only)."""

from __future__ import annotations

import pytest

from pipelines.testing import write_synthetic_cubes


@pytest.fixture(scope="package")
def synthetic_cubes(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A seeded synthetic cube store (:func:`pipelines.testing.write_synthetic_cubes`) of 960 m tiles:
    T000 and T001 complete (Sentinel-2 10/20/60 m and Landsat 30 m, 3 times, time 0 97 % cloudy),
    T002 with data but no completion record, TE00 empty. Its path; copy it to change it."""
    root = tmp_path_factory.mktemp("cubes") / "store"
    write_synthetic_cubes(root, seed=3, n_tiles=2, tile_m=960, n_times=3, empty_tiles=1, incomplete_tiles=1)
    return str(root)
