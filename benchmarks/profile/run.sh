#!/usr/bin/env bash
# Kernel-time breakdown of kiln's GPT-2 124M training step on one GPU (benchmarks/e2e config):
# Nsight Compute times every kernel of a short run (gpu__time_duration only, clocks left alone),
# and kernels.py sums them per kernel name and per step. Compare the per-step kernel total with
# the step time of the plain run (benchmarks/e2e/run.sh) to see how much of a step the GPU idles;
# categories.py groups the second step's kernels (pass it that wall step time in ms for the gaps).
# Usage: benchmarks/profile/run.sh BUILD_DIR OUT_DIR [STEPS] [CONFIG] (CONFIG: another model, e.g.
# benchmarks/e2e/llama-1b-bench.textproto; default GPT-2 124M). PROFILE_SETS adds --set overrides
# (e.g. PROFILE_SETS="precision.fp8_matmul=true").
set -euo pipefail
build=$1 out=$2 steps=${3:-2}
here=$(cd "$(dirname "$0")" && pwd)
config=${4:-$here/../e2e/gpt2-124m-bench.textproto}
mkdir -p "$out"
extra=()
for kv in ${PROFILE_SETS:-}; do extra+=(--set "$kv"); done
# Under ncu every kernel runs serialised behind the profiler, so the first-call timing that picks
# GEMM algorithms and attention plans (KILN_GEMM_TUNE, KILN_SDPA_TUNE) picks at random (seen
# 2026-12-06: Llama's attention backward on an sm80 plan twice as slow as the real run's). Both
# are off here, so the table shows the heuristics' picks; PROFILE_TUNE=1 leaves them on.
if [[ ${PROFILE_TUNE:-0} != 1 ]]; then export KILN_GEMM_TUNE=0 KILN_SDPA_TUNE=0; fi
ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
  --log-file "$out/ncu.csv" \
  "$build/bin/kiln" train --config "$config" \
  --set training.max_steps="$steps" --set eval.every_n_steps=0 --set schedule.lr.warmup_steps=1 \
  --overwrite --set logging.run_dir="$out/run" "${extra[@]}" > "$out/kiln.log" 2>&1
python3 "$here/kernels.py" "$out/ncu.csv" "$steps"
python3 "$here/categories.py" "$out/ncu.csv"
