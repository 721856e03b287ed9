#!/usr/bin/env bash
# Quick start 1: set up (idempotent) and run the main job on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PREFECT_SERVER_ANALYTICS_ENABLED=false
exec .venv/bin/aom demo "$@"
