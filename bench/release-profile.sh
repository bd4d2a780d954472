#!/usr/bin/env bash
# What Cargo.toml's [profile.release] buys, against cargo's default release profile, in the same
# run (bench/README.md, "The release profile"): the service built both ways, then bench/compare.sh
# run on each binary in turn, ROUNDS times, the order swapped every round; the table gives the
# medians of tokenmanager's requests/s and server CPU µs per request for ping and for getToken
# user-token hits (dirac-https, keep-alive, 16 callers), and each ratio configured / default.
#
#   bench/release-profile.sh [ROUNDS]      default 3; needs `npm ci --prefix tests/idp`
#
# PROFILE_BUILD_TIMES=1 first builds each profile from clean and gives the wall-clock times (both
# builds start from an empty target directory of their own: minutes each). COMPARE_SECONDS and
# COMPARE_WARMUP are passed on (here 4 and 1 by default).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
rounds=${1:-3}
export COMPARE_SECONDS=${COMPARE_SECONDS:-4} COMPARE_WARMUP=${COMPARE_WARMUP:-1}

configured_dir=$ROOT/target/release-profile/configured
default_dir=$ROOT/target/release-profile/default
# Cargo's defaults for the keys that [profile.release] sets.
default_profile=(CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16)

build() {
  local dir=$1
  shift
  local start=$SECONDS
  env "$@" CARGO_TARGET_DIR="$dir" cargo build --locked --release --bin tokenmanager >&2
  echo $((SECONDS - start))
}
if [[ ${PROFILE_BUILD_TIMES:-0} == 1 ]]; then
  rm -rf "$configured_dir" "$default_dir"
fi
configured_build=$(build "$configured_dir")
default_build=$(build "$default_dir" "${default_profile[@]}")
# The load generator and the bare server compare.sh also runs, built once.
cargo build --locked --release --workspace --bin tokenmanager-loadtest --example bench-baseline >&2

reports=$(mktemp -d -t tm-release-profile.XXXXXX)
trap 'rm -rf "$reports"' EXIT
for round in $(seq "$rounds"); do
  order=(configured default)
  ((round % 2 == 0)) && order=(default configured)
  for profile in "${order[@]}"; do
    dir=$configured_dir
    [[ $profile == default ]] && dir=$default_dir
    echo "[release-profile] round $round: $profile" >&2
    COMPARE_NO_BUILD=1 COMPARE_TM=$dir/release/tokenmanager \
      bench/compare.sh "$reports/$profile-$round.md" >/dev/null
  done
done

python3 - "$reports" "$rounds" "$configured_build" "$default_build" "${PROFILE_BUILD_TIMES:-0}" \
  "$(stat -c %s "$configured_dir/release/tokenmanager")" "$(stat -c %s "$default_dir/release/tokenmanager")" <<'PY'
import os, re, statistics, sys
reports, rounds, configured_build, default_build, timed, configured_size, default_size = sys.argv[1:]
scenarios = {"ping": "dirac-https ping, keep-alive, c=16",
             "getToken user-token hit": "getToken user-token hit, dirac-https keep-alive, c=16"}
def number(cell):
    return float(re.sub(r"[^0-9.]", "", cell))
def measures(profile, scenario):
    rps, cpu = [], []
    for r in range(1, int(rounds) + 1):
        for line in open(os.path.join(reports, f"{profile}-{r}.md")):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells and cells[0] == scenarios[scenario]:
                rps.append(number(cells[2]))
                cpu.append(number(cells[6].split("/")[1]))
    return statistics.median(rps), statistics.median(cpu), len(rps)
print(f"| measure ({rounds} rounds, medians) | default profile | [profile.release] | ratio |")
print("|---|---:|---:|---:|")
for scenario in scenarios:
    (d_rps, d_cpu, n), (c_rps, c_cpu, _) = measures("default", scenario), measures("configured", scenario)
    print(f"| {scenario}: req/s | {d_rps:.0f} | {c_rps:.0f} | {c_rps / d_rps:.2f} |")
    print(f"| {scenario}: server CPU µs/req | {d_cpu:.1f} | {c_cpu:.1f} | {c_cpu / d_cpu:.2f} |")
print(f"| binary size MB | {int(default_size) / 1e6:.1f} | {int(configured_size) / 1e6:.1f} | {int(configured_size) / int(default_size):.2f} |")
if timed == "1":
    print(f"| clean release build s | {default_build} | {configured_build} | {int(configured_build) / int(default_build):.2f} |")
PY
