#!/usr/bin/env bash
# Unauthenticated flood against a fresh release server on the shipped demo configuration (see
# bench/README.md, "flood"). Full scale by default: as many attack connections as the server's
# descriptor limit allows after FLOOD_RESERVE, 50 % idle HTTPS / 35 % idle DISET / 15 %
# slow-body, from FLOOD_PROCESSES processes; then the bursts scenario.
#
#   bench/flood.sh [tokenmanager-flood options...]     e.g. --check, --hold 30s
#
# Environment: TOKENMANAGER_BIN (server binary, default target/release/tokenmanager),
# FLOOD_BIN (default target/release/tokenmanager-flood), FLOOD_RESERVE (512),
# FLOOD_PROCESSES (4), FLOOD_IDLE_HTTPS / FLOOD_IDLE_DIPS / FLOOD_SLOW_BODY (fixed counts
# instead of the split of the limit), FLOOD_JSON (report, default target/flood/flood.json).
# Both binaries are built (release) when missing. Everything else lives in a temporary
# directory removed on exit, the server included.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

target=${CARGO_TARGET_DIR:-$root/target}
server_bin=${TOKENMANAGER_BIN:-$target/release/tokenmanager}
flood_bin=${FLOOD_BIN:-$target/release/tokenmanager-flood}
reserve=${FLOOD_RESERVE:-512}
processes=${FLOOD_PROCESSES:-4}
json_out=${FLOOD_JSON:-$target/flood/flood.json}

if [[ ! -x $server_bin && -z ${TOKENMANAGER_BIN:-} ]]; then
  echo "[flood.sh] building the release server" >&2
  cargo build --release --locked --bin tokenmanager
fi
if [[ ! -x $flood_bin && -z ${FLOOD_BIN:-} ]]; then
  echo "[flood.sh] building tokenmanager-flood" >&2
  cargo build --release --locked -p tokenmanager-loadtest --bin tokenmanager-flood
fi
[[ -x $server_bin ]] || { echo "[flood.sh] no server binary $server_bin" >&2; exit 2; }
[[ -x $flood_bin ]] || { echo "[flood.sh] no flood binary $flood_bin" >&2; exit 2; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tokenmanager-flood.XXXXXX")
server_pid=
cleanup() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The shipped demo configuration, copied so that its relative paths (../var) land in $tmp: a
# fresh keyring, demo PKI and SQLite file. Ports 0: free ones, read from the log.
mkdir -p "$tmp/config"
cp config/tokenmanager.example.cfg "$tmp/config/tokenmanager.cfg"
cat > "$tmp/config/ports.cfg" <<'EOF'
Systems
{
  Framework
  {
    Production
    {
      Services
      {
        TokenManager
        {
          Port = 0
          HTTPSPort = 0
          MetricsPort = 0
        }
      }
    }
  }
}
EOF
log=$tmp/server.log
TOKENMANAGER_LOG=${TOKENMANAGER_LOG:-info} "$server_bin" --config "$tmp/config/tokenmanager.cfg" \
  --config "$tmp/config/ports.cfg" serve > "$log" 2>&1 &
server_pid=$!
listening=
for _ in $(seq 600); do
  listening=$(grep -o 'tokenmanager listening https=[0-9]* dips=[0-9]* metrics=[0-9]*' "$log" || true)
  [[ -n $listening ]] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
if [[ -z $listening ]]; then
  echo "[flood.sh] the server did not start; its log:" >&2
  cat "$log" >&2
  exit 2
fi
https_port=$(sed -E 's/.*https=([0-9]+).*/\1/' <<< "$listening")
dips_port=$(sed -E 's/.*dips=([0-9]+).*/\1/' <<< "$listening")
fd_limit=$(awk '/^Max open files/ {print $4}' "/proc/$server_pid/limits")
if [[ -n ${FLOOD_IDLE_HTTPS:-}${FLOOD_IDLE_DIPS:-}${FLOOD_SLOW_BODY:-} ]]; then
  idle_https=${FLOOD_IDLE_HTTPS:-0} idle_dips=${FLOOD_IDLE_DIPS:-0} slow_body=${FLOOD_SLOW_BODY:-0}
  how="fixed counts"
else
  if [[ $fd_limit == unlimited ]]; then
    echo "[flood.sh] the server has no descriptor limit: set FLOOD_IDLE_HTTPS/FLOOD_IDLE_DIPS/FLOOD_SLOW_BODY" >&2
    exit 2
  fi
  total=$((fd_limit - reserve))
  ((total > 0)) || { echo "[flood.sh] descriptor limit $fd_limit <= reserve $reserve" >&2; exit 2; }
  idle_https=$((total * 50 / 100))
  idle_dips=$((total * 35 / 100))
  slow_body=$((total - idle_https - idle_dips))
  how="server descriptor limit $fd_limit - reserve $reserve"
fi
echo "[flood.sh] server $server_bin pid $server_pid https=$https_port dips=$dips_port, descriptor limit $fd_limit"
echo "[flood.sh] attack ($how): $idle_https idle HTTPS, $idle_dips idle DISET, $slow_body slow-body, $processes processes"

mkdir -p "$(dirname "$json_out")"
certs=$tmp/var/certs
args=(--https-port "$https_port" --dips-port "$dips_port" --pid "$server_pid"
  --cert "$certs/userproxy.pem" --ca-dir "$certs/certificates"
  --idle-https "$idle_https" --idle-dips "$idle_dips" --slow-body "$slow_body"
  --attack-processes "$processes" --json-out "$json_out" "$@")
status=0
"$flood_bin" "${args[@]}" || status=$?

if ! kill -0 "$server_pid" 2>/dev/null; then
  echo "[flood.sh] the server died during the run; the end of its log:"
  tail -n 30 "$log"
fi
echo "[flood.sh] server log: $(wc -l < "$log") lines, $(grep -c -E ' (WARN|ERROR) ' "$log" || true) warnings/errors; the last ones:"
grep -E ' (WARN|ERROR) ' "$log" | tail -n 5 | cut -c1-300 || true
echo "[flood.sh] report: $json_out"
repro="bench/flood.sh"
[[ -n ${TOKENMANAGER_BIN:-} ]] && repro="TOKENMANAGER_BIN=$TOKENMANAGER_BIN $repro"
for v in FLOOD_RESERVE FLOOD_PROCESSES FLOOD_IDLE_HTTPS FLOOD_IDLE_DIPS FLOOD_SLOW_BODY; do
  [[ -n ${!v:-} ]] && repro="$v=${!v} $repro"
done
echo "[flood.sh] reproduce: $repro $*"
exit "$status"
