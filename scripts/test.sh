#!/usr/bin/env bash
# Quick start 2: set up (idempotent), install the services the tests start (PostgreSQL 15 +
# PostGIS; pgstac, stac-fastapi, moto S3 and Prefect come from the venv), then lint, type-check
# and run the whole test suite, one pytest-xdist worker per core (at most 4; AOM_TEST_WORKERS
# overrides, 0 runs in this process). A test file stays on one worker (--dist loadfile), so a
# module's fixtures are built once. Extra arguments go to pytest and come last (`-n 0` wins).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install_test_services.sh
export PREFECT_SERVER_ANALYTICS_ENABLED=false
echo "== ruff check"; .venv/bin/ruff check .
echo "== ruff format --check"; .venv/bin/ruff format --check .
echo "== mypy"; .venv/bin/mypy
echo "== pytest"
set +e
workers=${AOM_TEST_WORKERS:-$(nproc)}
if [[ -z ${AOM_TEST_WORKERS:-} && $workers -gt 4 ]]; then workers=4; fi
.venv/bin/python -m pytest -n "$workers" --dist loadfile "$@"
rc=$?
set -e
if [[ $rc == 5 ]]; then echo "pytest collected no tests" >&2; exit 1; fi
exit $rc
