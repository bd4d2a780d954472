#!/usr/bin/env bash
# getToken cache hits on SQLite, PostgreSQL and MariaDB (issue 14): the `hits` part of
# `cargo bench --bench gettoken`, one `serve` process per run on a fresh database, ROUNDS
# interleaved rounds (round 1: each backend once, round 2: ...), then a table of medians, the
# database calls per hit and each server database's ratio to SQLite. See bench/README.md,
# section `backends.sh`.
#
#   bench/backends.sh
#
# Environment:
#   ROUNDS (3), BACKENDS ("sqlite postgres mariadb"; also postgres-perhit and mariadb-perhit:
#   the same with MaxStaleness = 0, so that every user-token hit asks the database for its
#   credential's version, as every hit did before the change feed);
#   BENCH_CONCURRENCY (16,64), BENCH_SCENARIOS (getToken/user,getToken/client), BENCH_PACED_RATE
#   (0: no paced runs), and every other BENCH_* knob of the bench (BENCH_SECONDS,
#   BENCH_WARMUP_SECONDS, BENCH_CLIENT_THREADS, ...) are passed on; BENCH_PHASES is `hits`;
#   POSTGRES_ADMIN_URL (postgres://postgres@127.0.0.1:5432/test): where psql runs CREATE and DROP
#   DATABASE; the bench's URL is the same with the fresh database's name;
#   MARIADB_HOST (127.0.0.1), MARIADB_PORT (3306), MARIADB_USER (root), MARIADB_PASSWORD (none):
#   the same for MariaDB (mariadb client, mysql:// URL);
#   BACKENDS_NO_BUILD=1 runs the bench binary already built.
# Each run's output and JSON report go to <target>/bench/backends/ (emptied at the start).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=$TARGET/bench/backends
ROUNDS=${ROUNDS:-3}
BACKENDS=${BACKENDS:-sqlite postgres mariadb}
POSTGRES_ADMIN_URL=${POSTGRES_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/test}
MARIADB_HOST=${MARIADB_HOST:-127.0.0.1}
MARIADB_PORT=${MARIADB_PORT:-3306}
MARIADB_USER=${MARIADB_USER:-root}
MARIADB_PASSWORD=${MARIADB_PASSWORD:-}

export BENCH_PHASES=hits
export BENCH_CONCURRENCY=${BENCH_CONCURRENCY:-16,64}
export BENCH_SCENARIOS=${BENCH_SCENARIOS:-getToken/user,getToken/client}
export BENCH_PACED_RATE=${BENCH_PACED_RATE:-0}

log() { echo "[backends] $*" >&2; }
STARTED=$SECONDS
# Runs "$@" as a stage and prints its time.
stage() {
  local name=$1 t0=$SECONDS
  shift
  "$@"
  log "$name: $((SECONDS - t0)) s"
}

for backend in $BACKENDS; do
  case $backend in
    sqlite) ;;
    postgres | postgres-perhit) command -v psql >/dev/null || { log "psql is missing"; exit 1; } ;;
    mariadb | mariadb-perhit) command -v mariadb >/dev/null || { log "the mariadb client is missing"; exit 1; } ;;
    *) log "unknown backend $backend (sqlite, postgres, mariadb, postgres-perhit, mariadb-perhit)"; exit 1 ;;
  esac
done
[[ -d tests/idp/node_modules/oidc-provider ]] || { log "run npm ci --prefix tests/idp first"; exit 1; }

mariadb_admin() {
  MYSQL_PWD=$MARIADB_PASSWORD mariadb -h "$MARIADB_HOST" -P "$MARIADB_PORT" -u "$MARIADB_USER" -e "$1"
}
postgres_admin() { psql -q -v ON_ERROR_STOP=1 "$POSTGRES_ADMIN_URL" -c "$1"; }

# The fresh database of the run in progress ("backend name"), dropped on exit.
CURRENT_DB=
drop_db() {
  local backend=${CURRENT_DB%% *} name=${CURRENT_DB#* }
  case $backend in
    postgres) postgres_admin "DROP DATABASE IF EXISTS $name WITH (FORCE)" ;;
    mariadb) mariadb_admin "DROP DATABASE IF EXISTS $name" ;;
  esac
  CURRENT_DB=
}
cleanup() { if [[ -n $CURRENT_DB ]]; then drop_db || log "could not drop ${CURRENT_DB#* }"; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# Creates the run's database; prints its URL (nothing for SQLite: the bench's own file).
create_db() {
  local backend=$1 name=$2
  case $backend in
    postgres)
      postgres_admin "CREATE DATABASE $name" >&2
      # The admin URL with the database replaced (its query string, if any, kept).
      local base=${POSTGRES_ADMIN_URL%%\?*} query=
      [[ $POSTGRES_ADMIN_URL == *\?* ]] && query="?${POSTGRES_ADMIN_URL#*\?}"
      echo "${base%/*}/$name$query"
      ;;
    mariadb)
      mariadb_admin "CREATE DATABASE $name" >&2
      local password=
      # A password with URL-reserved characters must be given percent-encoded.
      [[ -n $MARIADB_PASSWORD ]] && password=":$MARIADB_PASSWORD"
      echo "mysql://$MARIADB_USER$password@$MARIADB_HOST:$MARIADB_PORT/$name"
      ;;
  esac
}

build() {
  if [[ ${BACKENDS_NO_BUILD:-0} == 1 ]]; then
    EXE=$(find "$TARGET/release/deps" -maxdepth 1 -type f -executable -name 'gettoken-*' \
      -printf '%T@ %p\n' | sort -n | tail -1 | cut -d' ' -f2-)
  else
    # Builds the release server too (the bench gets its path from cargo).
    EXE=$(cargo bench --bench gettoken --no-run --message-format=json-render-diagnostics |
      jq -r 'select(.reason == "compiler-artifact" and .target.name == "gettoken" and .executable != null) | .executable' |
      tail -1)
  fi
  [[ -n $EXE && -x $EXE ]] || { log "no bench binary (gettoken) found"; exit 1; }
  log "bench binary $EXE"
}

# One bench run: round $1, backend $2 (a -perhit variant: its database, MaxStaleness = 0).
run() {
  local round=$1 variant=$2 url= t0=$SECONDS options=
  local backend=${variant%-perhit}
  [[ $variant == *-perhit ]] && options="MaxStaleness = 0"
  local name="tm_hitbench_$$_r${round}_$backend" file="$OUT/r$round-$variant"
  [[ $backend == sqlite ]] || CURRENT_DB="$backend $name"
  url=$(create_db "$backend" "$name")
  if ! BENCH_SERVICE_OPTIONS=$options BENCH_DATABASE_URL=$url "$EXE" --bench >"$file.log" 2>&1; then
    log "round $round, $backend: the bench failed; the end of $file.log:"
    tail -30 "$file.log" >&2
    exit 1
  fi
  cp "$TARGET/bench/gettoken.json" "$file.json"
  [[ $backend == sqlite ]] || drop_db
  { grep '^\[hits\]   ' "$file.log" || true; } | sed "s/^\[hits\]  /  $variant/" >&2
  log "round $round/$ROUNDS, $variant: $((SECONDS - t0)) s"
}

rm -rf "$OUT"
mkdir -p "$OUT"
log "$ROUNDS rounds of: $BACKENDS; BENCH_CONCURRENCY=$BENCH_CONCURRENCY BENCH_SCENARIOS=$BENCH_SCENARIOS" \
  "BENCH_SECONDS=${BENCH_SECONDS:-5} BENCH_WARMUP_SECONDS=${BENCH_WARMUP_SECONDS:-1}; load average $(cut -d' ' -f1-3 /proc/loadavg)"
stage build build
for round in $(seq 1 "$ROUNDS"); do
  for backend in $BACKENDS; do
    run "$round" "$backend"
  done
done

# --- the table -------------------------------------------------------------------------------
python3 - "$OUT" "$ROUNDS" $BACKENDS <<'EOF'
import json, statistics, sys
from pathlib import Path

out, rounds, backends = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
points = {}  # (backend, callers, scenario) -> [point of each round]
git = set()
for backend in backends:
    for r in range(1, rounds + 1):
        report = json.loads((out / f"r{r}-{backend}.json").read_text())
        git.add(report["environment"]["git"])
        for p in report["hits"]["points"]:
            points.setdefault((backend, p["concurrency"], p["scenario"]), []).append(p)

def median(values):
    return statistics.median(values)

def calls(ps):
    """Database calls per hit over all rounds, and the operations."""
    total = sum(p["db_calls"]["total"] for p in ps)
    hits = sum(p["db_calls"]["requests"] for p in ps)
    ops = {}
    for p in ps:
        for op, n in p["db_calls"]["operations"].items():
            ops[op] = ops.get(op, 0) + n
    listed = ", ".join(f"{op} {n}" for op, n in sorted(ops.items())) or "none"
    return total / max(hits, 1), f"{total} in {hits} hits: {listed}"

names = {"sqlite": "SQLite", "postgres": "PostgreSQL", "mariadb": "MariaDB",
         "postgres-perhit": "PostgreSQL, MaxStaleness 0", "mariadb-perhit": "MariaDB, MaxStaleness 0"}
print(f"\n=== getToken cache hits by backend: median of {rounds} interleaved rounds (git {', '.join(sorted(git))}) ===\n")
print("| backend | callers | scenario | req/s median | min–max | p50 ms | p99 ms | errors | db calls/hit | vs SQLite |")
print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
details, targets = [], []
keys = sorted({(c, s) for (_, c, s) in points})
for callers, scenario in keys:
    sqlite = points.get(("sqlite", callers, scenario))
    sqlite_rate = median([p["requests_per_second"] for p in sqlite]) if sqlite else None
    for backend in backends:
        ps = points.get((backend, callers, scenario))
        if not ps:
            continue
        rates = [p["requests_per_second"] for p in ps]
        rate = median(rates)
        per_hit, what = calls(ps)
        ratio = "-"
        # The -perhit variants are the baseline (the behaviour before the change feed): no target.
        judged = not backend.endswith("-perhit")
        if backend != "sqlite" and sqlite_rate:
            ratio = f"{100 * rate / sqlite_rate:.1f} %"
            if judged:
                targets.append((rate >= 0.9 * sqlite_rate,
                                f"{names[backend]} {scenario} at {callers} callers: {ratio} of SQLite's (target >= 90 %)"))
        if judged:
            targets.append((per_hit == 0, f"{names[backend]} {scenario} at {callers} callers: {per_hit:.4f} database calls per hit (target 0)"))
        print(f"| {names[backend]} | {callers} | {scenario} | {rate:,.0f} | {min(rates):,.0f}–{max(rates):,.0f} "
              f"| {median([p['p50_ms'] for p in ps]):.3f} | {median([p['p99_ms'] for p in ps]):.3f} "
              f"| {sum(p['errors'] for p in ps)} | {per_hit:.4f} | {ratio} |")
        by_round = " ".join(f"{x:.0f}" for x in rates)
        other = " ".join(f"{p['other_cores']:.1f}" for p in ps)
        details.append(f"  {names[backend]:<10} {callers:>4} {scenario:<16} req/s by round {by_round}; "
                       f"other processes' cores {other}; db calls {what}")
print("\nEach round, and the database calls over all rounds (tokenmanager_db_operations_total over the counted runs,")
print("ping, count_credentials and count_expiring excluded):")
print("\n".join(details))
print(f"\nTargets ({sum(ok for ok, _ in targets)} of {len(targets)} PASS)")
for ok, line in targets:
    print(f"  [{'PASS' if ok else 'FAIL'}] {line}")
EOF
log "per-run output and JSON: $OUT; $((SECONDS - STARTED)) s in all"
