#!/usr/bin/env bash
# Prepares a fresh machine of this project's kind for the tests: installs the packages that
# building and testing need, and checks that PostgreSQL and MariaDB answer (their tests are never
# skipped).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-packages.sh
# Dump tools for the no-clear-token tests, promtool for the metrics test.
scripts/install-packages.sh sqlite3 postgresql-client mariadb-client prometheus

# The test OpenID provider (oidc-provider, pinned in tests/idp/package-lock.json).
npm ci --prefix tests/idp --no-audit --no-fund --loglevel=error

# DIRAC's own Python client (PyPI DIRAC 9.1.22) for tests/it/dirac_client.rs, in a venv outside
# the repository (in $TOKENMANAGER_TEST_CACHE, see tests/dirac-client/setup.sh): ~70 s the first
# time, ~1 s when it is up to date.
tests/dirac-client/setup.sh
# DIRAC 8.0's client, whose DISET calls send DEncode (tests/it/dirac_client.rs), time-boxed.
timeout 900 tests/dirac-client/setup.sh --dirac8
# DIRAC 9.1.22 with its server extra: DIRAC's own Configuration Server for
# tests/it/configuration_server.rs (tests/dirac-cs/start_cs.sh).
timeout 900 tests/dirac-client/setup.sh --server

postgres_url=${TOKENMANAGER_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
mysql_host=127.0.0.1
if ! psql "$postgres_url" -qtAc 'SELECT 1' >/dev/null; then
  echo "PostgreSQL is not reachable at $postgres_url: its tests cannot run" >&2
  exit 1
fi
if [[ -z ${TOKENMANAGER_TEST_MYSQL_URL:-} ]] && ! mariadb -h "$mysql_host" -u root -e 'SELECT 1' test >/dev/null; then
  echo "MariaDB is not reachable at $mysql_host:3306 as root: its tests cannot run" >&2
  exit 1
fi
