#!/usr/bin/env bash
# Runs a libFuzzer target for a bounded time over its committed seed corpus (copied: new inputs go
# to a scratch directory, never into the repository). Fails on any finding (crash, ASan report,
# leak, timeout, out-of-memory); the input that caused it is printed and kept under the build dir.
# Usage: run_fuzzer.sh FUZZER CORPUS_DIR SECONDS [DICT]
set -uo pipefail
fuzzer=$1 corpus=$2 secs=$3 dict=${4:-}
work=$(mktemp -d)
mkdir -p "$work/new" "$(dirname "$fuzzer")/findings"
args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1
      -artifact_prefix="$(dirname "$fuzzer")/findings/" "$work/new" "$corpus")
[ -n "$dict" ] && args=(-dict="$dict" "${args[@]}")
"$fuzzer" "${args[@]}" >"$work/log" 2>&1
rc=$?
grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::new_units_added|Done [0-9]+ runs)" "$work/log"
if [ $rc -ne 0 ]; then
  tail -60 "$work/log"
  echo "run_fuzzer: $(basename "$fuzzer"): FINDING (exit status $rc); input kept in $(dirname "$fuzzer")/findings/"
else
  runs=$(grep -oE "stat::number_of_executed_units: [0-9]+" "$work/log" | grep -oE "[0-9]+$")
  echo "run_fuzzer: $(basename "$fuzzer"): ${runs:-?} inputs in ${secs}s, 0 findings"
fi
rm -rf "$work"
exit $rc
