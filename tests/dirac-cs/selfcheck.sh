#!/usr/bin/env bash
# End-to-end check of start_cs.sh + commit.sh with a throw-away PKI and DIRAC's own client.
#
#   tests/dirac-cs/selfcheck.sh [WORKDIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
t=${1:-$(mktemp -d -t dirac-cs-selfcheck.XXXXXX)}
client_venv=${DIRAC_CLIENT_VENV:-$("$here/../dirac-client/setup.sh" | tail -1)}
unset REQUESTS_CA_BUNDLE CURL_CA_BUNDLE X509_USER_PROXY
mkdir -p "$t"
"$client_venv/bin/python" "$here/../dirac-client/selfcheck/make_pki.py" "$t/pki" >"$t/pki.json"
cat >"$t/content.cfg" <<'EOF'
DIRAC
{
  VirtualOrganization = dirac
}
Registry
{
  Users
  {
    tmadmin
    {
      DN = /C=ch/O=DIRAC/OU=TokenManager Test/CN=tmadmin
    }
    tmplain
    {
      DN = /C=ch/O=DIRAC/OU=TokenManager Test/CN=tmplain
    }
  }
  Groups
  {
    dirac_admin
    {
      Users = tmadmin
      Properties = CSAdministrator, ProxyManagement
    }
    dirac_user
    {
      Users = tmplain
      Properties = NormalUser
    }
  }
}
Systems
{
  Framework
  {
    Services
    {
      TokenManager
      {
        Marker = first-content
      }
    }
  }
}
EOF
sed 's/first-content/second-content/' "$t/content.cfg" >"$t/content2.cfg"
port=$("$client_venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

start=$(date +%s.%N)
setsid "$here/start_cs.sh" "$t/work" "$t/content.cfg" "$port" "$t/pki/hostcert.pem" "$t/pki/hostkey.pem" \
  "$t/pki/certificates" >"$t/stdout" 2>"$t/stderr" &
pid=$!
trap 'kill -- -$pid 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  grep -q '^dirac-cs ready' "$t/stdout" && break
  kill -0 $pid 2>/dev/null || break
  sleep 0.1
done
printf 'start-up: %.1f s; stdout: %s\n' "$(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN{print a-b}')" "$(cat "$t/stdout")"
grep -q '^dirac-cs ready' "$t/stdout" || { cat "$t/stderr"; exit 1; }
echo "listening: $(ss -ltn "sport = :$port" | tail -n +2 | awk '{print $4}' | paste -sd' ')"
rc=0
"$client_venv/bin/python" "$here/check_client.py" "$t/work" "$port" "$t/pki.json" "$t/content2.cfg" || rc=$?
[[ $(wc -l <"$t/stdout") == 1 ]] || { echo "FAIL stdout has more than one line"; rc=1; }
stop=$(date +%s.%N)
kill -- -$pid
while kill -0 $pid 2>/dev/null; do sleep 0.05; done
printf 'stop (SIGTERM to the process group): %.1f s\n' "$(awk -v a="$(date +%s.%N)" -v b="$stop" 'BEGIN{print a-b}')"
trap - EXIT
echo "workdir: $t"
exit $rc
