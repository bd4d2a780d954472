#!/usr/bin/env bash
# What the audit trail costs on the getToken hit path (bench/README.md, "The audit trail"): the
# release service with `Audit = yes` and `Audit = no`, on SQLite and on PostgreSQL, ROUNDS rounds
# per backend, the order of the two swapped every round; each run a fresh database and server,
# one stored credential, then user-token and client-token hits (dirac-https, keep-alive, 16
# callers). The table gives the medians of requests/s and each ratio on / off. Every run with the
# trail on is also checked: after SIGTERM, the handouts recorded in the database add up to the
# getToken requests the server counted (/metrics), so no record was lost at the stop.
#
#   bench/audit.sh [ROUNDS]        default 3; needs `npm ci --prefix tests/idp` and PostgreSQL
#
# Environment: AUDIT_SECONDS (8) measured seconds per run, AUDIT_WARMUP (2), AUDIT_NO_BUILD=1,
# AUDIT_BACKENDS ("sqlite postgres"), AUDIT_PG (postgres://postgres@127.0.0.1:5432).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
rounds=${1:-3}
SECS=${AUDIT_SECONDS:-8}
WARMUP=${AUDIT_WARMUP:-2}
PG=${AUDIT_PG:-postgres://postgres@127.0.0.1:5432}
TM=$ROOT/target/release/tokenmanager
LOADGEN=$ROOT/target/release/tokenmanager-loadtest
if [[ ${AUDIT_NO_BUILD:-0} != 1 ]]; then
  cargo build --locked --release --workspace --bin tokenmanager --bin tokenmanager-loadtest >&2
fi

WORK=$(mktemp -d -t tm-audit.XXXXXX)
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS tm_audit_bench" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "[audit] $*" >&2; }
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

(cd tests/idp && exec node server.mjs --port 0) >"$WORK/idp.out" 2>"$WORK/idp.err" &
PIDS+=($!)
IDP_PORT=$(wait_line "$WORK/idp.out" "test-idp listening" "${PIDS[-1]}" | awk '{print $NF}')
CERTS=$WORK/certs KEYRING=$WORK/keyring

GT_USER='["alice", "g_bench", ["compute.read"], "https://ce.example.org", null, 0]'
GT_CLIENT='[null, "g_bench", ["compute.read"], "https://ce.example.org", null, 0]'

# one BACKEND AUDIT ROUND: prints "backend audit scenario req/s" lines.
one() {
  local backend=$1 audit=$2 round=$3 url
  if [[ $backend == sqlite ]]; then
    rm -f "$WORK/tm.sqlite"*
    url=sqlite://$WORK/tm.sqlite
  else
    psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS tm_audit_bench" >/dev/null
    psql "$PG/postgres" -qc "CREATE DATABASE tm_audit_bench" >/dev/null
    url=$PG/tm_audit_bench
  fi
  SERVICE_OPTIONS="          Audit = $audit" DB_URL=$url bench_config >"$WORK/bench.cfg"
  TOKENMANAGER_LOG=info "$TM" serve --config "$WORK/bench.cfg" >/dev/null 2>"$WORK/tm.log" &
  local pid=$!
  PIDS+=($pid)
  local line https metrics
  line=$(wait_line "$WORK/tm.log" "tokenmanager listening" $pid)
  https=$(sed -E 's/.*https=([0-9]+).*/\1/' <<<"$line")
  metrics=$(sed -E 's/.*metrics=([0-9]+).*/\1/' <<<"$line")
  local proxy=$CERTS/userproxy.pem ca=$CERTS/certificates
  curl -sf -X POST -H 'content-type: application/json' "http://127.0.0.1:$IDP_PORT/test/grant" \
    -d '{"sub": "bench-alice", "scope": "openid offline_access compute.read", "client_id": "tm-basic"}' \
    >"$WORK/grant.json"
  jq '{token: {refresh_token, access_token, expires_in, token_type: "Bearer"}, userID: "bench-alice", provider: "test-idp"}' \
    "$WORK/grant.json" >"$WORK/update.json"
  curl -sf --capath "$ca" --cert "$proxy" -H 'content-type: application/json' \
    -X POST "https://127.0.0.1:$https/api/v1/updateToken" -d @"$WORK/update.json" >/dev/null
  local scenario args
  for scenario in user client; do
    args=$GT_USER
    [[ $scenario == client ]] && args=$GT_CLIENT
    "$LOADGEN" "https://127.0.0.1:$https/Framework/TokenManager" --protocol dirac-https \
      --method getToken --args "$args" --cert "$proxy" --ca-dir "$ca" --concurrency 16 \
      --duration "${SECS}s" --warmup "${WARMUP}s" --keep-alive \
      --json-out "$WORK/r.json" >"$WORK/r.txt" 2>&1 || { cat "$WORK/r.txt" >&2; exit 1; }
    [[ $(jq .errors.total "$WORK/r.json") == 0 ]] || { cat "$WORK/r.txt" >&2; exit 1; }
    echo "$backend $audit $scenario $(jq .rate_ok_per_s "$WORK/r.json")"
  done
  local served
  served=$(curl -sf "http://127.0.0.1:$metrics/metrics" |
    awk '/^tokenmanager_requests_total\{method="getToken"/ {s += $NF} END {print s}')
  kill -TERM $pid
  wait $pid 2>/dev/null || true
  if [[ $audit == yes ]]; then
    local recorded query="SELECT COALESCE(SUM(occurrences), 0) FROM audit_events WHERE kind = 'handout'"
    if [[ $backend == sqlite ]]; then
      recorded=$(sqlite3 "$WORK/tm.sqlite" "$query")
    else
      recorded=$(psql "$PG/tm_audit_bench" -qtAc "$query")
    fi
    log "$backend round $round: $served getToken requests served, $recorded recorded"
    [[ $recorded == "$served" ]] || { echo "audit records lost: $served served, $recorded recorded" >&2; exit 1; }
  fi
}

results=$WORK/results.txt
for backend in ${AUDIT_BACKENDS:-sqlite postgres}; do
  for round in $(seq "$rounds"); do
    order=(yes no)
    ((round % 2 == 0)) && order=(no yes)
    for audit in "${order[@]}"; do
      log "$backend round $round: Audit = $audit"
      one "$backend" "$audit" "$round" | tee -a "$results" >&2
    done
  done
done

python3 - "$results" "$rounds" <<'PY'
import statistics, sys
results, rounds = sys.argv[1], sys.argv[2]
runs = {}
for line in open(results):
    backend, audit, scenario, rate = line.split()
    runs.setdefault((backend, scenario, audit), []).append(float(rate))
print(f"| getToken hits, dirac-https keep-alive, 16 callers ({rounds} rounds, medians) | Audit = no req/s | Audit = yes req/s | ratio |")
print("|---|---:|---:|---:|")
for backend in dict.fromkeys(b for b, _, _ in runs):
    for scenario in ("user", "client"):
        off = statistics.median(runs[(backend, scenario, "no")])
        on = statistics.median(runs[(backend, scenario, "yes")])
        print(f"| {backend}, {scenario}-token hits | {off:.0f} | {on:.0f} | {on / off:.2f} |")
PY
