# Shared by the bench scripts (sourced): waiting for a log line, and the configuration of the
# service they measure.

# wait_line FILE PATTERN PID: waits up to 60 s for a line matching PATTERN in FILE, written by
# process PID; prints the line.
wait_line() {
  local file=$1 pattern=$2 pid=$3 i
  for i in $(seq 1 600); do
    if grep -q "$pattern" "$file" 2>/dev/null; then grep -m1 "$pattern" "$file"; return 0; fi
    kill -0 "$pid" 2>/dev/null || { echo "process $pid exited:" >&2; tail -20 "$file" >&2; return 1; }
    sleep 0.1
  done
  echo "timeout waiting for '$pattern' in $file" >&2; tail -20 "$file" >&2; return 1
}

# bench_config: the service's configuration, on stdout: every port free, the demo PKI generated
# at start in $CERTS, the keyring $KEYRING, the database $DB_URL, user alice (the demo proxy's
# DN, IdP user ID bench-alice) in group g_bench (NormalUser, FullDelegation, ProxyManagement) of
# VO dteam; with $IDP_PORT, dteam's IdP test-idp is the test IdP there, client tm-basic, allowing
# the audiences $AUDIENCES (default https://ce.example.org). $SERVICE_OPTIONS: more lines of the
# service section; $USERS: more Registry users (CFG text), $GROUP_USERS: g_bench's other members.
bench_config() {
  local vo="" resources=""
  if [[ -n ${IDP_PORT:-} ]]; then
    vo="  VO
  {
    dteam
    {
      IdProvider = test-idp
    }
  }"
    resources="Resources
{
  IdProviders
  {
    test-idp
    {
      issuer = http://127.0.0.1:$IDP_PORT
      client_id = tm-basic
      client_secret = tm-basic-secret
      audience_parameter = resource
      allowed_audiences = ${AUDIENCES:-https://ce.example.org}
    }
  }
}"
  fi
  cat <<EOF
DIRAC
{
  Setup = Bench
  Setups
  {
    Bench
    {
      Framework = Production
    }
  }
  Security
  {
    CertFile = $CERTS/hostcert.pem
    KeyFile = $CERTS/hostkey.pem
    CALocation = $CERTS/certificates
  }
}
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
          ListenAddress = 127.0.0.1
          Port = 0
          HTTPSPort = 0
          MetricsPort = 0
          EncryptionKeyFile = $KEYRING
          GenerateDemoCredentials = yes
${SERVICE_OPTIONS:-}
        }
      }
      Databases
      {
        TokenDB
        {
          URL = $DB_URL
        }
      }
    }
  }
}
Registry
{
  DefaultGroup = g_bench
  Users
  {
    alice
    {
      DN = /C=ch/O=DIRAC/OU=DIRAC demo/CN=demouser
      DN += /O=DIRAC/CN=bench-alice
    }
${USERS:-}
  }
  Groups
  {
    g_bench
    {
      Users = alice${GROUP_USERS:+, $GROUP_USERS}
      Properties = NormalUser, FullDelegation, ProxyManagement
      VO = dteam
    }
  }
$vo
}
$resources
EOF
}
