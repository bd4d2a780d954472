#!/usr/bin/env bash
# The whole test suite (the service and the workspace's crates), set-up included: the command README.md gives and CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup.sh
cargo test --workspace --all-targets
