#!/usr/bin/env bash
# Installs the Debian packages named on the command line that are missing (no-op otherwise).
# Without arguments: what building tokenmanager needs (the C client libraries of the three
# databases and OpenSSL).
set -euo pipefail

packages=("$@")
((${#packages[@]})) || packages=(pkg-config libssl-dev libpq-dev libmariadb-dev)
missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
