#!/usr/bin/env bash
# Time to a target validation loss with the batch-size ramp + sequence-length curriculum against
# without, same model, data and token budget (issue: schedules measured, not assumed).
# Needs the default corpus prepared as scripts/train_default.sh does (runs/data/brown512).
# Usage: benchmarks/schedules/run.sh [BUILD_DIR] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build} out=${2:-runs/schedules}
mkdir -p "$out"
for name in base ramp_curriculum; do
  "$build/bin/kiln" train --config "benchmarks/schedules/$name.textproto" \
    --overwrite --set logging.run_dir="$out/$name" > "$out/$name.log" 2>&1
  grep -E "^kiln: trained" "$out/$name.log"
done
python3 benchmarks/schedules/compare.py "$out/base/metrics.jsonl" "$out/ramp_curriculum/metrics.jsonl"
