#!/usr/bin/env bash
# The whole test suite (the service and the workspace's crates), set-up included: the command
# README.md gives and CI runs. The fault tests (tests/it/faults.rs: signals, kill -9, a frozen
# database, a failing IdP against the real binary) run afterwards one at a time, so that their
# timings measure the service, not the other tests.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup.sh
# The tests' temporary files go here, in a directory emptied for each run: whatever is left
# afterwards (CI checks with tests/leftovers.sh) is a test that does not clean up.
export TMPDIR=$PWD/target/test-tmp
rm -rf "$TMPDIR"
mkdir -p "$TMPDIR"
echo "=== documentation links"
scripts/check-doc-links.py
cargo test --workspace --all-targets -- --skip faults::
start=$SECONDS
echo "=== fault tests (serial)"
cargo test --test it faults:: -- --test-threads=1
echo "=== fault tests (serial) took $((SECONDS - start)) s"
