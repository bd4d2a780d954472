#!/usr/bin/env bash
# The scale benchmark: 10k to 1M stored credentials on PostgreSQL, MariaDB and SQLite (see
# bench/README.md, "Scale: 10k to 1M stored credentials"). Never run by CI.
#
#   bench/scale.sh                                        # everything (~1 h on 2 cores)
#   SCALE_SIZES="10000 100000" SCALE_BACKENDS=postgres bench/scale.sh
#
# Needs PostgreSQL on 127.0.0.1:5432 and MariaDB on 127.0.0.1:3306 as the tests do (databases
# of its own are created and dropped; SCALE_POSTGRES_URL / SCALE_MYSQL_URL name other servers)
# and the fixture IdP's packages. Results: the table on stdout, target/bench/scale.json.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d tests/idp/node_modules/oidc-provider ]; then
    npm ci --prefix tests/idp
fi
exec cargo bench --bench scale "$@"
