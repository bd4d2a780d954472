#!/usr/bin/env bash
# Commits NEW_CONTENT_FILE as the new data of a CS started by start_cs.sh (same WORKDIR and PORT), with
# DIRAC's own client: ConfigurationClient.commitNewData over dips with the host certificate (the server's
# local cfg maps its DN to a host with CSAdministrator). Prints `dirac-cs committed version=<v>`. See README.md.
#
#   tests/dirac-cs/commit.sh WORKDIR NEW_CONTENT_FILE PORT HOSTCERT HOSTKEY CADIR
#
# The certificate's DN must map to a Registry host/user with CSAdministrator in the CS's merged
# configuration; start_cs.sh's local cfg grants that to ITS host certificate (see README.md).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [[ $# -ne 6 ]]; then
  sed -n '6p' "$0" >&2
  exit 2
fi
abs() { realpath -m -- "$1"; }
work=$(abs "$1") content=$(abs "$2") port=$3 cert=$(abs "$4") key=$(abs "$5") cadir=$(abs "$6")
for f in "$content" "$cert" "$key"; do [[ -r $f ]] || { echo "dirac-cs: cannot read $f" >&2; exit 2; }; done
# The default of ../dirac-client/setup.sh --server (TOKENMANAGER_TEST_CACHE: the test cache root).
venv=${DIRAC_SERVER_VENV:-${TOKENMANAGER_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenmanager}/dirac-server-9.1.22}
[[ -x $venv/bin/python ]] || venv=$("$here/../dirac-client/setup.sh" --server | tail -1)
unset REQUESTS_CA_BUNDLE CURL_CA_BUNDLE X509_USER_PROXY DIRACSYSCONFIG DIRAC_X509_HOST_CERT DIRAC_X509_HOST_KEY
exec "$venv/bin/python" "$here/cs.py" commit "$work" "$content" "$port" "$cert" "$key" "$cadir"
