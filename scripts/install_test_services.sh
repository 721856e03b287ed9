#!/usr/bin/env bash
# Install the system packages the integration-test services need (idempotent).
#
#   * PostgreSQL 15 must already be present (/usr/lib/postgresql/15/bin).
#   * PostGIS 3 for PostgreSQL 15 (Debian: postgresql-15-postgis-3) is installed if missing.
#
# Safe to re-run: does nothing when everything is already installed. Needs root (CI runs as root).
set -euo pipefail

PG_MAJOR="${PG_MAJOR:-15}"
PG_BIN="/usr/lib/postgresql/${PG_MAJOR}/bin"
POSTGIS_CONTROL="/usr/share/postgresql/${PG_MAJOR}/extension/postgis.control"
POSTGIS_PKG="postgresql-${PG_MAJOR}-postgis-3"

if [[ ! -x "${PG_BIN}/initdb" ]]; then
    echo "install_test_services: PostgreSQL ${PG_MAJOR} not found at ${PG_BIN}; install postgresql-${PG_MAJOR} first" >&2
    exit 1
fi

if [[ -f "${POSTGIS_CONTROL}" ]]; then
    echo "install_test_services: PostGIS already installed (${POSTGIS_CONTROL})"
else
    if [[ "$(id -u)" -ne 0 ]]; then
        echo "install_test_services: PostGIS is missing and this script is not running as root." >&2
        echo "  Run as root:  apt-get update && apt-get install -y --no-install-recommends ${POSTGIS_PKG}" >&2
        exit 1
    fi
    echo "install_test_services: installing ${POSTGIS_PKG} ..."
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${POSTGIS_PKG}"
    if [[ ! -f "${POSTGIS_CONTROL}" ]]; then
        echo "install_test_services: ${POSTGIS_PKG} installed but ${POSTGIS_CONTROL} is still missing" >&2
        exit 1
    fi
    echo "install_test_services: PostGIS installed"
fi
