#!/usr/bin/env bash
# How stale a replica's token cache is: the time from a deletion committed by one writer to its
# refusal by a replica that had the token cached (PostgreSQL and MariaDB: a second replica's
# deleteToken; SQLite: SQL on the file while `serve` runs). TOKENMANAGER_STALENESS_SAMPLES
# deletions per backend (default 30); prints the median, best and worst. The tests' PKI, IdP
# fixture and databases are used (see README.md's test command for the set-up).
set -euo pipefail
cd "$(dirname "$0")/.."
export TOKENMANAGER_STALENESS_SAMPLES="${TOKENMANAGER_STALENESS_SAMPLES:-30}"
cargo test --test it --no-run
for backend in postgresql mariadb sqlite; do
    cargo test --test it "replicas::staleness_on_${backend}" -- --ignored --nocapture 2>&1 \
        | grep '^measured: staleness'
done
