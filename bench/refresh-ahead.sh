#!/usr/bin/env bash
# Refresh-ahead against steady callers (bench/README.md, "Refresh-ahead"): the release service on
# SQLite and the test IdP issuing 60 s access tokens; 50 users with a stored credential and 50
# client-token keys (one audience each), each key asked for once a second, alternately with
# requiredTimeLeft 0 and 10, for DURATION seconds. After the warm-up (WARMUP s: every key
# minted once and refreshed ahead at least once) it counts the callers that waited on an IdP
# exchange (the service's cache misses) and the IdP exchanges of each key, once with
# `RefreshAhead = yes` and once with `no`. Targets: 0 waits with it on, and at most one exchange
# per key per 0.8 × lifetime (48 s).
#
#   bench/refresh-ahead.sh [DURATION]     default 600; needs `npm ci --prefix tests/idp`
#
# Environment: RA_WARMUP (90), RA_LIFETIME (60), RA_NO_BUILD=1, RA_MODES ("yes no").
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DURATION=${1:-600}
WARMUP=${RA_WARMUP:-90}
LIFETIME=${RA_LIFETIME:-60}
KEYS=50
TM=$ROOT/target/release/tokenmanager
if [[ ${RA_NO_BUILD:-0} != 1 ]]; then
  cargo build --locked --release --bin tokenmanager >&2
fi

WORK=$(mktemp -d -t tm-refresh-ahead.XXXXXX)
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "[refresh-ahead] $*" >&2; }
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

CERTS=$WORK/certs KEYRING=$WORK/keyring
AUDIENCES=$(seq -s, -f 'https://ce%g.example.org' 1 $KEYS)
GROUP_USERS=$(seq -s, -f 'u%g' 1 $KEYS)
USERS=""
for i in $(seq 1 $KEYS); do
  USERS+="    u$i
    {
      DN = /O=DIRAC/CN=bench-u$i
    }
"
done

# one MODE(yes|no): prints a JSON summary line.
one() {
  local mode=$1
  (cd tests/idp && exec node server.mjs --port 0) >"$WORK/idp.out" 2>"$WORK/idp.err" &
  local idp_pid=$!
  PIDS+=($idp_pid)
  local idp
  idp=$(wait_line "$WORK/idp.out" "test-idp listening" $idp_pid | awk '{print $NF}')
  curl -sf -X POST -H 'content-type: application/json' "http://127.0.0.1:$idp/test/ttl" \
    -d "{\"access_token\": $LIFETIME}" >/dev/null
  rm -f "$WORK/tm.sqlite"*
  IDP_PORT=$idp SERVICE_OPTIONS="          RefreshAhead = $mode" DB_URL=sqlite://$WORK/tm.sqlite \
    bench_config >"$WORK/bench.cfg"
  "$TM" serve --config "$WORK/bench.cfg" >/dev/null 2>"$WORK/tm.log" &
  local pid=$!
  PIDS+=($pid)
  local line
  line=$(wait_line "$WORK/tm.log" "tokenmanager listening" $pid)
  local https metrics
  https=$(sed -E 's/.*https=([0-9]+).*/\1/' <<<"$line")
  metrics=$(sed -E 's/.*metrics=([0-9]+).*/\1/' <<<"$line")
  python3 - "$idp" "$https" "$metrics" "$CERTS" "$KEYS" "$DURATION" "$WARMUP" "$LIFETIME" "$mode" <<'PY'
import http.client, json, re, ssl, sys, threading, time, urllib.request
idp, https, metrics, certs, keys, duration, warmup, lifetime, mode = sys.argv[1:]
keys, duration, warmup, lifetime = int(keys), int(duration), int(warmup), int(lifetime)
ctx = ssl.create_default_context(capath=f"{certs}/certificates")
ctx.load_cert_chain(f"{certs}/userproxy.pem")
ctx.check_hostname = False

def post(conn, method, body):
    conn.request("POST", f"/api/v1/{method}", json.dumps(body), {"content-type": "application/json"})
    reply = conn.getresponse()
    data = reply.read()
    if reply.status != 200:
        raise RuntimeError(f"{method}: {reply.status} {data[:300]!r}")
    return json.loads(data)

def idp_stats():
    return json.load(urllib.request.urlopen(f"http://127.0.0.1:{idp}/test/stats"))

def misses():
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics").read().decode()
    return sum(float(m.group(1)) for m in re.finditer(
        r'^tokenmanager_token_cache_lookups_total\{[^}]*result="miss"[^}]*\} (\S+)$', text, re.M))

setup = http.client.HTTPSConnection("127.0.0.1", int(https), context=ctx)
for i in range(1, keys + 1):
    grant = json.load(urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{idp}/test/grant", method="POST",
        data=json.dumps({"sub": f"bench-u{i}", "scope": "openid offline_access compute.read"}).encode(),
        headers={"content-type": "application/json"})))
    post(setup, "updateToken", {"token": {k: grant[k] for k in ("refresh_token", "access_token", "expires_in")},
                                "userID": f"bench-u{i}", "provider": "test-idp"})
requests = [{"username": f"u{i}", "userGroup": "g_bench", "scope": ["compute.read"],
             "audience": "https://ce1.example.org"} for i in range(1, keys + 1)]
requests += [{"username": None, "userGroup": "g_bench", "scope": ["compute.read"],
              "audience": f"https://ce{i}.example.org"} for i in range(1, keys + 1)]
errors, calls = [], [0]
stop = time.monotonic() + duration
def caller(share):
    conn = http.client.HTTPSConnection("127.0.0.1", int(https), context=ctx)
    n = 0
    while time.monotonic() < stop:
        started = time.monotonic()
        for body in share:
            try:
                post(conn, "getToken", dict(body, requiredTimeLeft=10 * (n % 2)))
                calls[0] += 1
            except Exception as error:
                errors.append(str(error))
                conn = http.client.HTTPSConnection("127.0.0.1", int(https), context=ctx)
        n += 1
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
threads = [threading.Thread(target=caller, args=(requests[t::10],)) for t in range(10)]
for t in threads: t.start()
time.sleep(warmup)
before_misses, before_idp, calls_before = misses(), idp_stats(), calls[0]
for t in threads: t.join()
after_misses, after_idp = misses(), idp_stats()
steady = duration - warmup
def per_key(grant, prefix):
    b, a = before_idp["token_requests"][grant], after_idp["token_requests"][grant]
    return [a.get(k, 0) - b.get(k, 0) for k in a if k.startswith(prefix)]
user_exchanges = per_key("refresh_token", "bench-u")
client_exchanges = per_key("client_credentials", "tm-basic")
# Exchanges at least 0.8 × lifetime apart: a window of `steady` seconds holds at most this many.
allowed = int(steady // (0.8 * lifetime)) + 1
print(json.dumps({
    "refresh_ahead": mode, "steady_seconds": steady, "calls_after_warmup": calls[0] - calls_before,
    "errors": len(errors), "first_error": errors[0] if errors else None,
    "waits_after_warmup": after_misses - before_misses,
    "user_exchanges_per_key_max": max(user_exchanges, default=0),
    "client_exchanges_per_key_max": max(client_exchanges, default=0),
    "exchanges_per_key_mean": (sum(user_exchanges) + sum(client_exchanges)) / (2 * keys),
    "allowed_per_key": allowed,
}))
PY
  kill $pid $idp_pid 2>/dev/null || true
  wait $pid $idp_pid 2>/dev/null || true
}

for mode in ${RA_MODES:-yes no}; do
  log "RefreshAhead = $mode, $DURATION s ($WARMUP s warm-up)"
  one "$mode" | tee -a "$WORK/results.jsonl" >&2
done
python3 - "$WORK/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("| RefreshAhead | calls after warm-up | callers that waited on the IdP | IdP exchanges per key, max (user / client) | mean | at most, exchanges ≥ 0.8 × lifetime apart | errors |")
print("|---|---:|---:|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r['refresh_ahead']} | {r['calls_after_warmup']} | {r['waits_after_warmup']:.0f} | "
          f"{r['user_exchanges_per_key_max']} / {r['client_exchanges_per_key_max']} | "
          f"{r['exchanges_per_key_mean']:.2f} | {r['allowed_per_key']} | {r['errors']} |")
PY
