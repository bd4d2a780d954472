#!/usr/bin/env bash
# The frozen-database fault test at bench length: PostgreSQL and MariaDB, each frozen 40 s (CI
# freezes them 8 s) by the stalling TCP proxy of tests/it/stall.rs, against the real binary.
# Prints each call's measured time during the freeze and the recovery; fails if a target is
# missed (no call longer than DatabaseDeadline + 1 s, /readyz 503 within 2 s and 200 within 2 s
# of the database returning, the rotated refresh token stored). Usage: bench/db-freeze.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
export TOKENMANAGER_TEST_FREEZE_SECONDS="${1:-40}"
cargo test --test it a_frozen_ -- --test-threads=1 --nocapture 2>&1 |
  grep -E '^test |measured:|test result|panicked'
