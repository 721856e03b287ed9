"""pytest fixtures for the real test services (register with
``pytest_plugins = ["tests.services.fixtures"]``).

Session-scoped, started lazily on first request, stopped by PID at session end (and by atexit):

* ``pgstac_api``      -> :class:`~tests.services.pgstac.PgstacService` (``.url``, ``.dsn``,
  ``.load_collections``, ``.load_items``, ``.delete_items``, ``.reset``, ``.count_items``)
* ``s3``              -> :class:`~tests.services.s3.S3Service` (``.endpoint_url``, ``.key``,
  ``.secret``, ``.storage_options``, ``.stop()``/``.start()``)
* ``prefect_harness`` -> API URL (str) of ``prefect_test_harness``; this process reports to it
* ``prefect_server``  -> API URL (str, ``http://127.0.0.1:P/api``) of a real ``prefect server``
* ``prefect_server_process`` -> the :class:`~tests.services.prefect_server.PrefectServer` behind it
  (``.client_env()``, ``.settings()``, ``.home``)

Function-scoped:

* ``s3_bucket``       -> :class:`~tests.services.s3.S3Bucket` (``.name``, ``.url_prefix``,
  ``.url(...)``, ``.storage_options``, ``.fs``), a fresh bucket, deleted afterwards. Restarts the
  S3 endpoint first if a previous test left it stopped.

A service that cannot exist on this machine (e.g. PostGIS missing and not root) makes the test
skip with the reason, except when ``CI`` is set: there it fails, so CI never silently skips.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.services.pgstac import PgstacService
from tests.services.ports import ServiceUnavailable
from tests.services.prefect_server import PrefectServer
from tests.services.prefect_server import prefect_harness as _prefect_harness
from tests.services.s3 import S3Bucket, S3Service


def _unavailable(exc: ServiceUnavailable) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"test service unavailable in CI: {exc}", pytrace=False)
    pytest.skip(f"test service unavailable: {exc}")


@pytest.fixture(scope="session")
def pgstac_api() -> Iterator[PgstacService]:
    service = PgstacService()
    try:
        service.start()
    except ServiceUnavailable as exc:
        _unavailable(exc)
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Service]:
    service = S3Service()
    try:
        service.start()
    except ServiceUnavailable as exc:
        _unavailable(exc)
    try:
        yield service
    finally:
        service.close()


@pytest.fixture
def s3_bucket(s3: S3Service) -> Iterator[S3Bucket]:
    if not s3.running:
        s3.start()
    bucket = S3Bucket(name=s3.create_bucket(), service=s3)
    yield bucket
    if not s3.running:
        s3.start()
    s3.delete_bucket(bucket.name)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[str]:
    with _prefect_harness() as api_url:
        yield api_url


@pytest.fixture(scope="session")
def prefect_server_process() -> Iterator[PrefectServer]:
    with PrefectServer() as server:
        yield server


@pytest.fixture(scope="session")
def prefect_server(prefect_server_process: PrefectServer) -> str:
    return prefect_server_process.api_url
