#!/usr/bin/env bash
# Starts DIRAC's OWN Configuration Server (PyPI DIRAC 9.1.22, the master CS `Configuration/Server`, DISET
# handler over dips) on 127.0.0.1:PORT, serving CS_CONTENT_FILE as its configuration data. See README.md.
#
#   tests/dirac-cs/start_cs.sh WORKDIR CS_CONTENT_FILE PORT HOSTCERT HOSTKEY CADIR
#
# Foreground until killed: the script execs `dirac-service Configuration/Server` (via serve.py, which only
# makes it listen on 127.0.0.1 instead of every interface), so its PID is the server's. Prints exactly one stdout line, `dirac-cs ready version=<v>`, once DIRAC's own client reads the
# data (a background checker in the same process group prints it; it exits right after). Server log:
# WORKDIR/logs/server.log. If the server is not ready within $DIRAC_CS_READY_TIMEOUT s (default 90), or
# dies, the checker prints the log tail on stderr and SIGTERMs the server (exit status non-zero).
# Venv: $DIRAC_SERVER_VENV, else ../dirac-client/setup.sh --server's default (made by it if missing).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [[ $# -ne 6 ]]; then
  sed -n '5p' "$0" >&2
  exit 2
fi
abs() { realpath -m -- "$1"; }
work=$(abs "$1") content=$(abs "$2") port=$3 cert=$(abs "$4") key=$(abs "$5") cadir=$(abs "$6")
for f in "$content" "$cert" "$key"; do [[ -r $f ]] || { echo "dirac-cs: cannot read $f" >&2; exit 2; }; done
[[ -d $cadir ]] || { echo "dirac-cs: no CA directory $cadir" >&2; exit 2; }

# The default of ../dirac-client/setup.sh --server (TOKENMANAGER_TEST_CACHE: the test cache root).
venv=${DIRAC_SERVER_VENV:-${TOKENMANAGER_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenmanager}/dirac-server-9.1.22}
if [[ ! -f $venv/.tokenmanager-setup-stamp || ! -x $venv/bin/dirac-service ]]; then
  venv=$("$here/../dirac-client/setup.sh" --server | tail -1)
fi

unset REQUESTS_CA_BUNDLE CURL_CA_BUNDLE X509_USER_PROXY DIRACSYSCONFIG DIRAC_X509_HOST_CERT DIRAC_X509_HOST_KEY \
  BEARER_TOKEN BEARER_TOKEN_FILE
mkdir -p "$work"
"$venv/bin/python" "$here/cs.py" config "$work" "$content" "$port" "$cert" "$key" "$cadir" >/dev/null

# Readiness checker, in this process group; started from a subshell so that it is not a child of the
# server (which never reaps children: no zombie left behind). $$ is this shell's PID = the server's after exec.
( "$venv/bin/python" "$here/cs.py" ready "$work" "$port" $$ "${DIRAC_CS_READY_TIMEOUT:-90}" & )

cd "$work"
export DIRAC_ROOT_PATH=$work
# = `dirac-service Configuration/Server`, but listening on 127.0.0.1 only (serve.py)
exec "$venv/bin/python" "$here/serve.py" Configuration/Server >>"$work/logs/server.log" 2>&1 </dev/null
