#!/usr/bin/env bash
# Installs DIRAC's Python client (PyPI "DIRAC") into a venv outside the repository, for the
# DIRAC-client compatibility tests in this folder. Idempotent and non-interactive.
#
#   tests/dirac-client/setup.sh            DIRAC 9.1.22 into $DIRAC_CLIENT_VENV
#                                          (default $cache/dirac-client-9.1.22)
#   tests/dirac-client/setup.sh --server   same plus DIRAC's [server] extra (Tornado, MySQLdb...) into
#                                          $DIRAC_SERVER_VENV (default $cache/dirac-server-9.1.22);
#                                          only for running DIRAC's own TokenManager (selfcheck/dirac_server.sh)
#   tests/dirac-client/setup.sh --dirac8   DIRAC 8.0.x into $DIRAC8_CLIENT_VENV
#                                          (default $cache/dirac-client-8.0)
#   --relock                               ignore the lock file, resolve again and rewrite it
#
# $cache is $TOKENMANAGER_TEST_CACHE, default ${XDG_CACHE_HOME:-$HOME/.cache}/tokenmanager: the
# test caches of this user, shared by every checkout (tests/it/dirac_client.rs and
# tests/dirac-cs/*.sh compute the same default).
#
# Why not a plain `pip install DIRAC==9.1.22`: DIRAC requires gfal2-python unconditionally and
# gfal2-python does not build against Debian 12's libgfal2
# (docs/DIRAC.md#gfal2-python-does-not-build-on-debian-12). gfal2 is only used by DataManagement
# storage plugins, so DIRAC is installed with --no-deps and then its requirement list minus
# gfal2-python. With a lock file (pip freeze of a venv that worked) the install is
# `pip install --no-deps -r <lock>`: exactly those versions, no resolution.
#
# Prints the path of the venv on the last line of stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

flavour=9 extra_server=0 relock=0
for a in "$@"; do
  case $a in
    --dirac8) flavour=8 ;;
    --server) extra_server=1 ;;
    --relock) relock=1 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done

cache=${TOKENMANAGER_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenmanager}
if [[ $flavour == 9 ]]; then
  version=9.1.22
  venv=${DIRAC_CLIENT_VENV:-$cache/dirac-client-$version}
  lock=$here/requirements-dirac9.lock
  if [[ $extra_server == 1 ]]; then
    venv=${DIRAC_SERVER_VENV:-$cache/dirac-server-$version}
    lock=$here/requirements-dirac9-server.lock
  fi
else
  # Latest 8.0 release on PyPI when this was written (`pip index versions DIRAC`).
  version=${DIRAC8_VERSION:-8.0.86}
  venv=${DIRAC8_CLIENT_VENV:-$cache/dirac-client-8.0}
  lock=$here/requirements-dirac8.lock
fi
python=${DIRAC_CLIENT_PYTHON:-python3.11}

t0=$(date +%s.%N)
step_start=$t0
step() { # step <description>: prints the time the previous step took, then names the next one
  local now; now=$(date +%s.%N)
  [[ -n ${step_name:-} ]] && printf '[setup] %-60s %6.1f s\n' "$step_name" "$(awk -v a="$now" -v b="$step_start" 'BEGIN{print a-b}')" >&2
  step_name=$1 step_start=$now
  [[ -n $1 ]] && echo "[setup] -> $1" >&2
  return 0
}

# Runtime environment for DIRAC's client on this machine
# (docs/DIRAC.md#requests_ca_bundle-breaks-diracs-https-client): requests would let these
# override the CA directory DIRAC passes as `verify`.
unset REQUESTS_CA_BUNDLE CURL_CA_BUNDLE

import_check='import DIRAC; import DIRAC.Resources.IdProvider.OAuth2IdProvider; from DIRAC.FrameworkSystem.Client.TokenManagerClient import TokenManagerClient; from DIRAC.Core.DISET.RPCClient import RPCClient; from DIRAC.Core.Tornado.Client.TornadoClient import TornadoClient; import pytest; print("DIRAC", DIRAC.version)'
stamp=$venv/.tokenmanager-setup-stamp
want_stamp="$version server=$extra_server lock=$( [[ -f $lock && $relock == 0 ]] && sha256sum "$lock" | cut -c1-16 || echo none)"

if [[ -f $stamp && $(cat "$stamp") == "$want_stamp" ]] && "$venv/bin/python" -c "$import_check" >/dev/null 2>&1; then
  echo "[setup] $venv is up to date ($want_stamp)" >&2
  echo "$venv"
  exit 0
fi

step "Debian packages (swig libssl-dev pkg-config libmariadb-dev)"
missing=()
for p in swig libssl-dev pkg-config libmariadb-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[setup]    installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

step "venv $venv ($python)"
if [[ ! -x $venv/bin/python ]]; then
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)

if [[ -f $lock && $relock == 0 ]]; then
  step "pip install --no-deps -r $(basename "$lock")"
  "${pip[@]}" --no-deps -r "$lock"
else
  step "pip install --no-deps DIRAC==$version"
  "${pip[@]}" --no-deps "DIRAC==$version"
  step "pip install DIRAC's requirements minus gfal2-python (+ pytest)"
  extras=()
  [[ $extra_server == 1 ]] && extras=(server)
  reqs_txt=$("$venv/bin/python" - "${extras[@]}" <<'PY'
import sys
from importlib.metadata import requires
from pip._vendor.packaging.requirements import Requirement
extras = set(sys.argv[1:])
for r in requires("DIRAC") or []:
    req = Requirement(r)
    if req.name.lower() in ("gfal2-python", "gfal2_python"):
        continue
    if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
        continue
    req.marker = None
    print(str(req))
PY
)
  mapfile -t reqs <<<"$reqs_txt"
  echo "[setup]    ${reqs[*]}" >&2
  # tornado: DIRAC's *client* needs it too (TokenManagerClient.getToken -> IdProviderFactory ->
  # OAuth2IdProvider -> authorization/utils/Requests.py imports tornado.escape), but DIRAC lists it only
  # in the [server] extra; without it getToken fails with "Can't load DIRAC.Resources.IdProvider.OAuth2IdProvider".
  tornado_pin="tornado~=5.1.1"
  "${pip[@]}" "${reqs[@]}" pytest "$tornado_pin"
  step "write $(basename "$lock")"
  {
    echo "# pip freeze of a working DIRAC $version client venv (python $("$venv/bin/python" -c 'import platform;print(platform.python_version())'), $(date -u +%Y-%m-%d))."
    echo "# Written by setup.sh --relock; installed with pip install --no-deps -r. gfal2-python is left out on purpose."
    "$venv/bin/python" -m pip freeze --all --exclude-editable | grep -v -E '^(pip|setuptools|wheel)=='
  } >"$lock"
  want_stamp="$version server=$extra_server lock=$(sha256sum "$lock" | cut -c1-16)"
fi

step "import check"
"$venv/bin/python" -c "$import_check" >&2
echo "$want_stamp" >"$stamp"
step ""
printf '[setup] total %.1f s\n' "$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN{print a-b}')" >&2
echo "$venv"
