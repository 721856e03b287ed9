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
from collections.abc import Sequence
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


# Runs ``python -m <module> ...`` with a function wrapped so that the process SIGKILLs itself right
# after a call of it returns: argv[1] the function ("package.module:Class.method"), argv[2] an
# optional second one (then the kill comes after its first call that follows a call of the first),
# argv[3] the module to run.
_KILLED_AFTER = """
import importlib, os, runpy, signal, sys

def wrap(spec, then):
    module, _, attr = spec.partition(":")
    owner = importlib.import_module(module)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    real = getattr(owner, name)

    def wrapped(*args, **kwargs):
        out = real(*args, **kwargs)
        then()
        return out

    setattr(owner, name, wrapped)

def die():
    os.kill(os.getpid(), signal.SIGKILL)

after, at, module = sys.argv[1:4]
del sys.argv[1:4]
if at:
    armed = []
    wrap(after, lambda: armed.append(True))
    wrap(at, lambda: armed and die())
else:
    wrap(after, die)
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def kill_after(cmd: Sequence[str], after: str, at: str = "", timeout_s: float = 300) -> None:
    """Run ``cmd`` (``python -m <module> ...``) in the repository until it SIGKILLs itself: right
    after its first call of ``after`` (``"package.module:Class.method"``) returns, or, with ``at``,
    right after its first call of ``at`` that follows one of ``after`` (e.g. the first group of the
    tile after the first recorded one). The same point on every run, however loaded the machine (a
    test that polled for a file and then killed the run could be too late); fails when the command
    exits by itself."""
    assert list(cmd[1:2]) == ["-m"], cmd
    proc = subprocess.run(
        [cmd[0], "-c", _KILLED_AFTER, after, at, cmd[2], *cmd[3:]],
        cwd=REPO_ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])


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
