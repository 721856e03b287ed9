"""Shared pytest configuration.

Real services (PostgreSQL + pgstac + stac-fastapi, moto S3, Prefect) are session fixtures in
``tests/services/fixtures.py``; they start only when a test asks for them and stop by PID.

Test data that several test packages read is built once per run by the session fixtures here (and
in the ``conftest.py`` of the package that uses it: ``tests/pipelines/conftest.py``,
``tests/pipelines/cubes/conftest.py``, ``tests/aom_model/train/conftest.py``). Those fixtures are
read-only for their users; a test that changes such data copies it into its own ``tmp_path`` first.
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


@pytest.fixture(scope="session")
def search_catalog(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The controlled search items (``tests/pipelines/search/support.py``) written once in the three
    local formats: ``{"static": catalog.json, "ndjson": items.ndjson, "parquet": items.parquet}``."""
    from tests.pipelines.search.support import all_items, write_all_formats

    return write_all_formats(all_items(), tmp_path_factory.mktemp("search-catalog"))


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
