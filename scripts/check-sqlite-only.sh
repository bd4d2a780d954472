#!/usr/bin/env bash
# The SQLite-only build (`--no-default-features --features sqlite`): it must be clippy-clean (the
# code of the other backends is left out by cfg), pass its unit tests, link neither libpq nor
# libmariadb/libmysqlclient, and migrate and serve an SQLite database. The shipped example
# configuration is run from a temporary directory (its relative paths then land there too), with
# ports the kernel picks.
#
# It builds in the usual target directory: the next default build only relinks, where a
# directory of its own would build every dependency again.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo clippy --locked --no-default-features --features sqlite --all-targets -- -D warnings
cargo test --locked --no-default-features --features sqlite --lib
cargo build --locked --no-default-features --features sqlite --bin tokenmanager
binary=$PWD/target/debug/tokenmanager

linked=$(ldd "$binary")
if grep -Ei 'libpq|libmysqlclient|libmariadb' <<<"$linked"; then
  echo "the SQLite-only build links a client library of another backend (above)" >&2
  exit 1
fi
echo "linked: $(awk '{print $1}' <<<"$linked" | tr '\n' ' ')"

"$binary" --version

tmp=$(mktemp -d)
server=
cleanup() {
  if [[ -n $server ]]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

mkdir "$tmp/config"
cp config/tokenmanager.example.cfg "$tmp/config/tokenmanager.cfg"
# A later file wins: ports of the kernel's choice rather than the example's fixed ones.
cat >"$tmp/config/ports.cfg" <<'EOF'
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
config=(--config "$tmp/config/tokenmanager.cfg" --config "$tmp/config/ports.cfg")

"$binary" "${config[@]}" migrate
# The example's demo credentials are made on the first serve.
TOKENMANAGER_LOG=info "$binary" "${config[@]}" serve 2>"$tmp/serve.log" &
server=$!
metrics=
for _ in $(seq 100); do
  metrics=$(sed -n 's/.*tokenmanager listening .*metrics=\([0-9]*\).*/\1/p' "$tmp/serve.log")
  [[ -n $metrics ]] && break
  kill -0 "$server" 2>/dev/null || break
  sleep 0.1
done
if [[ -z $metrics ]]; then
  cat "$tmp/serve.log" >&2
  echo "serve did not start" >&2
  exit 1
fi
ready=$(curl -sS "http://127.0.0.1:$metrics/readyz")
if [[ $ready != ready ]]; then
  cat "$tmp/serve.log" >&2
  echo "serve is not ready: $ready" >&2
  exit 1
fi
echo "serve on SQLite: ready (metrics port $metrics)"
