#!/usr/bin/env bash
# Self-check of the DIRAC-client harness without our server (a few minutes, mostly DISET's connect
# retries in step 3):
#   1. a throw-away PKI (openssl + DIRAC's X509Chain for RFC 3820 proxies with the group extension);
#   2. plumbing: selfcheck/fake_server.py (TLS with mandatory client certs, proxies allowed, answers
#      Tornado-style POSTs and DISET conversations) + plumbing_check.py: every transport x caller x
#      client kind completes a call and the server saw the right certificate, extraCredentials and
#      payload encoding;
#   3. the real test suite against a closed port: every test must fail (or skip), each failure with
#      "Connection refused".
# Usage: tests/dirac-client/selfcheck/run.sh [WORKDIR]   (venv from setup.sh / $DIRAC_CLIENT_VENV)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${1:-$(mktemp -d -t tm-dirac-selfcheck.XXXXXX)}
venv=${DIRAC_CLIENT_VENV:-$("$here/../setup.sh" | tail -1)}
py=$venv/bin/python
mkdir -p "$work"
unset REQUESTS_CA_BUNDLE CURL_CA_BUNDLE

echo "== 1. PKI in $work/pki"
"$py" "$here/make_pki.py" "$work/pki" >"$work/pki.json"

fixture() { # fixture HTTPS_PORT DIPS_PORT > json
  "$py" - "$work/pki.json" "$1" "$2" <<'PY'
import json, sys
pki = json.load(open(sys.argv[1]))
u = pki["users"]
def caller(name, props, **kw):
    return dict({"proxy": u[name]["proxy"], "dn": u[name]["dn"], "username": name, "group": u[name]["group"],
                 "properties": props}, **kw)
print(json.dumps({
    "https_url": f"https://localhost:{sys.argv[2]}/Framework/TokenManager",
    "dips_url": f"dips://localhost:{sys.argv[3]}/Framework/TokenManager",
    "ca_dir": pki["ca_dir"], "vo": "dirac",
    "callers": {"admin": caller("tmadmin", ["FullDelegation", "ProxyManagement"], user_id="tmadmin-sub"),
                "plain": caller("tmplain", ["NormalUser"])},
    "host": dict(pki["host"], hostname="localhost", properties=["FullDelegation", "TrustedHost"]),
    "idp": {"name": "test-idp", "issuer": "http://127.0.0.1:1", "client_id": "tm-basic",
            "audience": "https://aud.example"},
    "client_token": {"group": "dirac_pilot", "scope": ["compute.create"]},
}, indent=1))
PY
}

echo "== 2. plumbing against selfcheck/fake_server.py"
coproc FAKE { exec "$py" "$here/fake_server.py" "$work/pki.json" 2>"$work/fake_server.err"; }
read -r line <&"${FAKE[0]}"
https_port=$(sed -E 's/.*https=([0-9]+).*/\1/' <<<"$line")
dips_port=$(sed -E 's/.*dips=([0-9]+).*/\1/' <<<"$line")
fixture "$https_port" "$dips_port" >"$work/fixture-fake.json"
rc=0
TM_DIRAC_FIXTURE=$work/fixture-fake.json "$py" "$here/plumbing_check.py" || rc=$?
kill "$FAKE_PID" 2>/dev/null || true
[[ $rc == 0 ]] || { echo "plumbing check failed (server log: $work/fake_server.err)"; exit 1; }

echo "== 3. test suite against a closed port (expect: all fail with Connection refused)"
fixture 1 1 >"$work/fixture-closed.json"
TM_DIRAC_FIXTURE=$work/fixture-closed.json "$venv/bin/pytest" "$here/.." -q --tb=no -p no:cacheprovider \
  --junitxml="$work/closed.xml" >"$work/closed.log" 2>&1 || true
tail -1 "$work/closed.log"
"$py" - "$work/closed.xml" <<'PY'
import sys
import xml.etree.ElementTree as ET
failed = skipped = 0
bad = []
for tc in ET.parse(sys.argv[1]).iter("testcase"):
    if tc.find("skipped") is not None:
        skipped += 1
        continue
    f = tc.find("failure") if tc.find("failure") is not None else tc.find("error")
    if f is None:
        bad.append(f"{tc.get('name')}: passed against a closed port")
        continue
    failed += 1
    if "Connection refused" not in f.get("message", "") + (f.text or ""):
        bad.append(f"{tc.get('name')}: {f.get('message', '')[:300]}")
print(f"closed port: {failed} failed with Connection refused, {skipped} skipped, {len(bad)} unexpected")
print("\n".join(bad))
sys.exit(1 if bad or not failed else 0)
PY
echo "selfcheck OK ($work)"
