#!/usr/bin/env bash
# Runs COMMAND (CI: tests/run-all.sh), then fails if the tests left anything behind: a file in
# their own TMPDIR (target/test-tmp, which tests/run-all.sh sets and empties first), or a private
# key in a file created meanwhile in /tmp or in cargo's CARGO_TARGET_TMPDIR (target/tmp). Every
# test keeps its files, keys above all, in a temporary directory of its own, removed with it.
#
#   tests/leftovers.sh COMMAND [ARG...]
set -euo pipefail
cd "$(dirname "$0")/.."

test_tmp=target/test-tmp
scanned=(/tmp target/tmp)
files() { find "${scanned[@]}" -xdev -type f 2>/dev/null | sort || true; }

before=$(files)
rc=0
"$@" || rc=$?

echo "=== leftovers: $test_tmp empty, no private key in a new file of ${scanned[*]}"
failed=0
if [[ -d $test_tmp ]] && [[ -n $(find "$test_tmp" -mindepth 1 -print -quit) ]]; then
  echo "left in $test_tmp:" >&2
  find "$test_tmp" -mindepth 1 -maxdepth 3 >&2
  failed=1
fi
keys=$(comm -13 <(echo "$before") <(files) | xargs -r -d '\n' grep -l -s -- 'PRIVATE KEY' || true)
if [[ -n $keys ]]; then
  echo "private keys left by the run:" >&2
  echo "$keys" >&2
  failed=1
fi
if ((rc != 0)); then
  exit "$rc"
fi
if ((failed)); then
  exit 1
fi
echo "=== leftovers: none"
