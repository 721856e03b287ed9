"""Real services for integration tests (PostgreSQL/pgstac + STAC API, moto S3, Prefect).

Plain context-manager classes usable from tests, benchmarks and scripts; the pytest fixtures are in
:mod:`tests.services.fixtures`. See docs/testing.md.
"""

from tests.services.pgstac import PgstacService
from tests.services.ports import ServiceUnavailable, free_port, stop_all
from tests.services.prefect_server import PrefectServer, prefect_harness
from tests.services.s3 import S3Bucket, S3Service

__all__ = [
    "PgstacService",
    "PrefectServer",
    "S3Bucket",
    "S3Service",
    "ServiceUnavailable",
    "free_port",
    "prefect_harness",
    "stop_all",
]
