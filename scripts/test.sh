#!/usr/bin/env bash
# Quick start 2: set up (idempotent), install the services the tests start (PostgreSQL 15 +
# PostGIS; pgstac, stac-fastapi, moto S3 and Prefect come from the venv), then lint, type-check
# and run the whole test suite. Extra arguments go to pytest.
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
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [[ $rc == 5 ]]; then echo "pytest collected no tests" >&2; exit 1; fi
exit $rc
