"""Prefect for tests: the in-process ``prefect_test_harness`` and a real ``prefect server`` process.

* :func:`prefect_harness` wraps :func:`prefect.testing.utilities.prefect_test_harness` (a temporary
  SQLite API server subprocess managed by Prefect itself, ~10-15 s to start) with a temporary
  ``PREFECT_HOME`` and analytics off. While inside it, flows in this process report to it.
* :class:`PrefectServer` runs ``prefect server start --host 127.0.0.1 --port P`` as a subprocess
  with SQLite in a temporary ``PREFECT_HOME``, waits for ``/api/health`` and stops it by PID.
  It does **not** point this process at the server: use :meth:`PrefectServer.settings` with
  ``prefect.settings.temporary_settings`` or :meth:`PrefectServer.client_env` for subprocesses.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.services.ports import LOCALHOST, ManagedProcess, free_port, http_ok, wait_until


def _prefect_free_env() -> dict[str, str]:
    """The caller's environment minus every PREFECT_* variable."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}


@contextlib.contextmanager
def prefect_harness(startup_timeout: int = 90) -> Iterator[str]:
    """Enter ``prefect_test_harness`` with a temp ``PREFECT_HOME``; yields the harness API URL."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    home = Path(tempfile.mkdtemp(prefix="aom-prefect-harness-"))
    try:
        with (
            temporary_settings(updates={PREFECT_HOME: home, PREFECT_SERVER_ANALYTICS_ENABLED: False}),
            prefect_test_harness(server_startup_timeout=startup_timeout),
        ):
            yield str(PREFECT_API_URL.value())
    finally:
        shutil.rmtree(home, ignore_errors=True)


class PrefectServer:
    """A real ``prefect server start`` subprocess on 127.0.0.1 with SQLite in a temp PREFECT_HOME."""

    def __init__(self, ui: bool = False, services: bool = True) -> None:
        self.ui = ui
        self.services = services
        self.home: Path | None = None
        self.port: int | None = None
        self.url: str = ""
        self.api_url: str = ""
        self.timings: dict[str, float] = {}
        self._proc: ManagedProcess | None = None

    def __enter__(self) -> PrefectServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def server_env(self) -> dict[str, str]:
        assert self.home is not None
        env = _prefect_free_env()
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{self.home / 'prefect.db'}",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_UI_ENABLED="true" if self.ui else "false",
            PREFECT_LOGGING_LEVEL="WARNING",
        )
        return env

    def client_env(self) -> dict[str, str]:
        """Variables for a subprocess (flow/worker/CLI) that should talk to this server."""
        assert self.home is not None
        return {"PREFECT_API_URL": self.api_url, "PREFECT_HOME": str(self.home)}

    def settings(self) -> dict:
        """``temporary_settings(updates=server.settings())`` points this process at the server."""
        from prefect.settings import PREFECT_API_URL

        return {PREFECT_API_URL: self.api_url}

    def start(self) -> PrefectServer:
        t0 = time.perf_counter()
        self.home = Path(tempfile.mkdtemp(prefix="aom-prefect-server-"))
        self.port = free_port()
        argv = [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            LOCALHOST,
            "--port",
            str(self.port),
            "--analytics-off",
            "--ui" if self.ui else "--no-ui",
        ]
        if not self.services:
            argv.append("--no-services")
        try:
            self._proc = ManagedProcess(
                "prefect-server",
                argv,
                log_path=self.home / "server.log",
                env=self.server_env(),
                cwd=self.home,
            )
            self.url = f"http://{LOCALHOST}:{self.port}"
            self.api_url = f"{self.url}/api"
            wait_until(
                lambda: http_ok(f"{self.api_url}/health"),
                timeout=120,
                what="prefect server /api/health",
                proc=self._proc,
                interval=0.25,
            )
        except BaseException:
            self.stop()
            raise
        self.timings["prefect_server_start"] = time.perf_counter() - t0
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop(timeout=20)
            self._proc = None
        if self.home is not None and os.environ.get("AOM_TEST_KEEP_SERVICE_DIRS") != "1":
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = None

    @property
    def running(self) -> bool:
        return bool(self._proc and self._proc.running)
