#!/usr/bin/env bash
# CI stage: admission under an unauthenticated flood, on the release build. 2,000 idle HTTPS +
# 1,500 idle DISET + 500 slow-body connections held 15 s while identified callers time ping on
# DIRAC HTTPS, the JSON API and DISET; 60 s at most for descriptors and RSS to come back; then
# 4 bursts of 2,000 legitimate connections and 60 s idle. Fails (exit 1) on a missed target,
# naming it. Runs bench/flood.sh with fixed counts; extra arguments go to tokenmanager-flood.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
start=$SECONDS

# The server alone first (the same artifacts as `cargo build --release`), then the tool: one
# invocation for both would unify their dependencies' features and build the server again.
if [[ -z ${TOKENMANAGER_BIN:-} ]]; then
  cargo build --release --locked --bin tokenmanager
fi
cargo build --release --locked -p tokenmanager-loadtest --bin tokenmanager-flood
echo "[flood] build: $((SECONDS - start)) s"

measure=$SECONDS
FLOOD_IDLE_HTTPS=${FLOOD_IDLE_HTTPS:-2000} FLOOD_IDLE_DIPS=${FLOOD_IDLE_DIPS:-1500} \
  FLOOD_SLOW_BODY=${FLOOD_SLOW_BODY:-500} FLOOD_PROCESSES=${FLOOD_PROCESSES:-2} \
  FLOOD_JSON=${FLOOD_JSON:-${CARGO_TARGET_DIR:-$root/target}/flood/ci.json} \
  bench/flood.sh --hold 15s --recovery 60s --bursts 4 --burst-size 2000 --burst-idle 60s \
  --check "$@" && status=0 || status=$?
echo "[flood] measurement: $((SECONDS - measure)) s, total $((SECONDS - start)) s"
exit "$status"
