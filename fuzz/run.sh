#!/usr/bin/env bash
# Runs every fuzz target of the DIRAC codecs for a bounded time (default 60 s each), two at a
# time (this machine has 2 cores), with a 512 MB memory cap: a crash, a leak past the cap or a
# timeout fails the script and leaves the input in fuzz/artifacts/<target>/.
#   fuzz/run.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo +nightly fuzz build
targets=(dencode_decode jencode_decode diset_frame form_decode)
run_target() {
  local target=$1
  mkdir -p "corpus/$target"
  cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=512 -timeout=10 -print_final_stats=1 \
    >"corpus/$target.log" 2>&1 || { tail -40 "corpus/$target.log"; return 1; }
  echo "$target: $(grep -m1 'stat::number_of_executed_units' "corpus/$target.log" | awk '{print $2}') runs in ${seconds} s, no crash"
}
status=0
for ((i = 0; i < ${#targets[@]}; i += 2)); do
  run_target "${targets[i]}" & first=$!
  run_target "${targets[i + 1]}" & second=$!
  wait "$first" || status=1
  wait "$second" || status=1
done
exit "$status"
