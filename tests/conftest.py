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
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

pytest_plugins = ["tests.services.fixtures"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def cli_env() -> dict[str, str]:
    """This environment without ``AWS_*`` variables, for ``aom`` subprocesses."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}


def aom_command(*args: str) -> list[str]:
    """The ``aom`` command line as a subprocess of this interpreter."""
    return [sys.executable, "-m", "flows.cli", *args]


def kill_when(cmd: Sequence[str], ready: Callable[[], bool], timeout_s: float = 300) -> None:
    """Start ``cmd`` in the repository and SIGKILL it as soon as ``ready()`` (polled every 10 ms);
    fails when the command finished first."""
    proc = subprocess.Popen(
        list(cmd), cwd=REPO_ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if ready():
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


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
