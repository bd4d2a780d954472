#!/usr/bin/env bash
# The whole test suite, set-up included: the command README.md gives and CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup.sh
cargo test --all-targets
