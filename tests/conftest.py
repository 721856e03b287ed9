"""Shared pytest configuration.

Real services (PostgreSQL + pgstac + stac-fastapi, moto S3, Prefect) are session fixtures in
``tests/services/fixtures.py``; they start only when a test asks for them and stop by PID.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

pytest_plugins = ["tests.services.fixtures"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    """The shared real-data folder, or None (tests that need it skip with this path named)."""
    env = os.environ.get("AOM_REAL_DATA")
    candidate = Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "real"
    return candidate if candidate.is_dir() else None


@pytest.fixture(scope="session")
def real_data() -> Path:
    path = real_data_dir()
    if path is None:
        pytest.skip(
            "real sample data not found at ../shared/data/real (or $AOM_REAL_DATA); "
            "these tests read the real Sentinel-2/Landsat/MODIS products from there"
        )
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = bool(torch.cuda.is_available())
    except Exception:
        has_cuda = False
    if has_cuda:
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
