#!/usr/bin/env bash
# Runs the harness against DIRAC's OWN TokenManager (PyPI DIRAC 9.1.22), DISET handler over dips, on
# loopback, TokenDB on the local MariaDB (root@127.0.0.1, no password, as on this machine). Shows which
# assertions the reference implementation itself meets.
#
# https (the Tornado handler) only when the server venv has DIRACGrid's fork of tornado 5.1.1
# ("5.1.1+dirac.1": SSLIOStream and HTTPServerRequest made Configurable, for tornado_m2crypto). PyPI's
# tornado 5.1.1 fails at import with "type object 'SSLIOStream' has no attribute 'configure'" and the fork
# is not on PyPI; it is github.com/DIRACGrid/tornado (HEAD), installed by hand by copying its tornado/*.py
# over the venv's site-packages/tornado/. Without it only dips is checked.
#
#   tests/dirac-client/selfcheck/dirac_server.sh [WORKDIR] [pytest args...]
#
# Needs: setup.sh --server (server venv) and setup.sh (client venv). Known differences of DIRAC
# 9.1.22 from what we assert (so expected failures here): updateToken was removed in 9.1.20 (501 /
# "Unknown method"), DISET's getUserTokensInfo/getUsersTokensInfo type bugs
# (docs/DIRAC.md#diracs-diset-type-lists), no IdP is
# running (getToken fails at the IdP).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${1:-$(mktemp -d -t tm-dirac-server.XXXXXX)}
shift || true
server_venv=${DIRAC_SERVER_VENV:-$("$here/../setup.sh" --server | tail -1)}
client_venv=${DIRAC_CLIENT_VENV:-$("$here/../setup.sh" | tail -1)}
unset REQUESTS_CA_BUNDLE CURL_CA_BUNDLE X509_USER_PROXY
mkdir -p "$work/server/etc" "$work/server/logs"

"$client_venv/bin/python" "$here/make_pki.py" "$work/pki" >"$work/pki.json"
free_port() { "$client_venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
https_port=$(free_port)
dips_port=$(free_port)

db=TokenDB_tmselfcheck
mariadb -h 127.0.0.1 -u root -e "DROP DATABASE IF EXISTS $db; CREATE DATABASE $db;
  CREATE USER IF NOT EXISTS 'tmdirac'@'%' IDENTIFIED BY 'tmdirac';
  CREATE USER IF NOT EXISTS 'tmdirac'@'localhost' IDENTIFIED BY 'tmdirac';
  GRANT ALL ON $db.* TO 'tmdirac'@'%'; GRANT ALL ON $db.* TO 'tmdirac'@'localhost';"

"$client_venv/bin/python" - "$work" "$https_port" "$dips_port" "$db" <<'PY'
import json, sys
work, https_port, dips_port, db = sys.argv[1:]
pki = json.load(open(f"{work}/pki.json"))
u = pki["users"]
auth = """        Authorization
        {
          Default = authenticated
          getUsersTokensInfo = ProxyManagement
        }"""
cfg = f"""DIRAC
{{
  VirtualOrganization = dirac
  Hostname = localhost
  Security
  {{
    CertFile = {pki['host']['cert']}
    KeyFile = {pki['host']['key']}
    CALocation = {pki['ca_dir']}
    UseServerCertificate = yes
  }}
}}
DiracX
{{
  DisabledVOs = dirac
}}
Systems
{{
  Tornado
  {{
    Port = {https_port}
  }}
  Framework
  {{
    Services
    {{
      TokenManager
      {{
        Port = {dips_port}
        Protocol = dips
{auth}
      }}
      TornadoTokenManager
      {{
        Protocol = https
{auth}
      }}
    }}
    Databases
    {{
      TokenDB
      {{
        DBName = {db}
        Host = 127.0.0.1
        Port = 3306
        User = tmdirac
        Password = tmdirac
      }}
    }}
  }}
}}
Registry
{{
  DefaultGroup = dirac_user
  Users
  {{
    tmadmin
    {{
      DN = {u['tmadmin']['dn']}, /O=DIRAC/CN=tmadmin-sub
    }}
    tmplain
    {{
      DN = {u['tmplain']['dn']}
    }}
  }}
  Groups
  {{
    dirac_admin
    {{
      Users = tmadmin
      Properties = FullDelegation, ProxyManagement
      VO = dirac
    }}
    dirac_user
    {{
      Users = tmadmin, tmplain
      Properties = NormalUser
      VO = dirac
    }}
    dirac_pilot
    {{
      Users = tmadmin
      Properties = GenericPilot
      VO = dirac
    }}
  }}
  Hosts
  {{
    localhost
    {{
      DN = {pki['host']['dn']}
      Properties = FullDelegation, TrustedHost
    }}
  }}
  VO
  {{
    dirac
    {{
      IdProvider = test-idp
    }}
  }}
}}
Resources
{{
  IdProviders
  {{
    test-idp
    {{
      ProviderType = OAuth2
      issuer = http://127.0.0.1:1
      client_id = tm-basic
      client_secret = tm-basic-secret
      token_endpoint = http://127.0.0.1:1/token
    }}
  }}
}}
"""
open(f"{work}/server/etc/dirac.cfg", "w").write(cfg)
def caller(name, props, **kw):
    return dict({"proxy": u[name]["proxy"], "dn": u[name]["dn"], "username": name, "group": u[name]["group"],
                 "properties": props}, **kw)
json.dump({
    "https_url": f"https://localhost:{https_port}/Framework/TornadoTokenManager",
    "dips_url": f"dips://localhost:{dips_port}/Framework/TokenManager",
    "ca_dir": pki["ca_dir"], "vo": "dirac",
    "callers": {"admin": caller("tmadmin", ["FullDelegation", "ProxyManagement"], user_id="tmadmin-sub"),
                "plain": caller("tmplain", ["NormalUser"])},
    "host": dict(pki["host"], hostname="localhost", properties=["FullDelegation", "TrustedHost"]),
    "idp": {"name": "test-idp", "issuer": "http://127.0.0.1:1", "client_id": "tm-basic",
            "audience": "https://aud.example"},
    "client_token": {"group": "dirac_pilot", "scope": ["compute.create"]},
    # DIRAC 9's DISET server answers in its own default encoding (JSON), whatever the request used.
    "expect": {"version": "9.1.22", "ping_name_https": "Framework/TornadoTokenManager",
               "dips_reply_mirrors_encoding": False},
}, open(f"{work}/fixture.json", "w"), indent=1)
PY

tornado_fork=0
"$server_venv/bin/python" -c 'import tornado.iostream as i; i.SSLIOStream.configure' 2>/dev/null && tornado_fork=1
if [[ $tornado_fork == 0 ]]; then
  sed -i 's|^  "https_url": .*|  "https_url": null,|' "$work/fixture.json"
  echo "no DIRACGrid tornado fork in $server_venv: https not checked"
fi

export DIRAC_ROOT_PATH=$work/server
pids=()
if [[ $tornado_fork == 1 ]]; then
  (cd "$work/server" && DIRAC_USE_TORNADO_IOLOOP=yes exec "$server_venv/bin/tornado-start-all" >logs/tornado.log 2>&1) &
  pids+=($!)
fi
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
(cd "$work/server" && exec "$server_venv/bin/dirac-service" Framework/TokenManager >logs/diset.log 2>&1) &
pids+=($!)
for _ in $(seq 60); do
  if (exec 3<>/dev/tcp/127.0.0.1/$dips_port) 2>/dev/null &&
     { [[ $tornado_fork == 0 ]] || (exec 3<>/dev/tcp/127.0.0.1/$https_port) 2>/dev/null; }; then break; fi
  sleep 1
done
echo "DIRAC TokenManager: https=$https_port (tornado fork: $tornado_fork) dips=$dips_port (logs in $work/server/logs)"
unset DIRAC_ROOT_PATH
rc=0
TM_DIRAC_FIXTURE=$work/fixture.json "$client_venv/bin/pytest" "$here/.." -q --tb=line "$@" || rc=$?
exit $rc
