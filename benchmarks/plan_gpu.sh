#!/usr/bin/env bash
# kiln plan against GPU trainings: GPT-2 124M and 1.5B (bf16, synthetic tokens) trained a few steps
# on this machine's GPUs, each layout's measured mem_peak_mib (the CUDA allocator's peak, rank 0)
# printed beside kiln plan's prediction, one table at the end (OUT/plan_gpu.txt).
#   benchmarks/plan_gpu.sh BUILD_DIR [OUT_DIR]      (NGPUS=N to use N GPUs for the dp rows)
# One GPU: 124M at micro-batch 32 with recompute none / selective / full, 1.5B at micro-batch 8
# none / full. With 2 or more GPUs (mpirun -np N, one GPU per rank) also 124M ZeRO-1 and ZeRO-3
# and 1.5B ZeRO-3. The CPU test (ctest plan_memory_cpu) holds the model within 10%; record the
# GPU figures with date, GPU and commit in benchmarks/RESULTS.md.
set -uo pipefail
build=${1:?usage: plan_gpu.sh BUILD_DIR [OUT_DIR]}
out=${2:-/tmp/kiln-plan-gpu}
kiln=$build/bin/kiln
here=$(cd "$(dirname "$0")" && pwd)
ngpus=${NGPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
mkdir -p "$out"
cat >"$out/base.textproto" <<'EOF'
name: "plan-gpu"
device: CUDA
model { preset: "gpt2-124m" vocab_pad_multiple: 128 }
data { synthetic: true seq_len: 1024 }
training { global_batch_size: 32 max_steps: 4 seed: 1 }
parallel { micro_batch_size: 32 }
optimizer { lr: 1e-4 }
precision { dtype: BF16 }
eval { every_n_steps: 0 batches: 1 sample_tokens: 0 }
checkpoint { every_n_steps: 0 save_at_end: false resume: "never" }
logging { tensorboard: false }
EOF
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
table=$out/plan_gpu.txt
printf '%-44s %12s %12s %8s\n' layout "plan MiB" "measured MiB" diff | tee "$table"

# run NAME RANKS --set ... : trains, then prints the plan beside the measurement.
run() {
  local name=$1 ranks=$2
  shift 2
  local dir=$out/$name sets=(--set "logging.run_dir=$out/$name" "$@")
  rm -rf "$dir"
  local pre=()
  ((ranks > 1)) && pre=(mpirun -np "$ranks" --bind-to none)
  if ! "${pre[@]}" "$kiln" train --config "$out/base.textproto" "${sets[@]}" >"$out/$name.log" 2>&1; then
    printf '%-44s %12s %12s %8s\n' "$name" - "failed" "(see $out/$name.log)" | tee -a "$table"
    return
  fi
  "$kiln" plan --config "$out/base.textproto" --world "$ranks" "${sets[@]}" --run "$dir" \
    >"$out/$name.plan.txt"
  "$kiln" plan --config "$out/base.textproto" --world "$ranks" "${sets[@]}" --run "$dir" --json |
    python3 -c '
import json, sys
p = json.load(sys.stdin)
m = p.get("measured_mib")
d = "%+.1f%%" % (100 * (p["peak_mib"] - m) / m) if m else "-"
print("%-44s %12.0f %12s %8s" % (sys.argv[1], p["peak_mib"], "%.0f" % m if m else "-", d))
' "$name" | tee -a "$table"
}

big=(--set 'model={preset: "gpt2-1.5b" vocab_pad_multiple: 128}' --set parallel.micro_batch_size=8
     --set training.global_batch_size=8)
run gpt2-124m_b32_none 1 --set recompute.policy=NONE
run gpt2-124m_b32_selective 1 --set recompute.policy=SELECTIVE
run gpt2-124m_b32_full 1 --set recompute.policy=FULL
run gpt2-1.5b_b8_none 1 "${big[@]}" --set recompute.policy=NONE
run gpt2-1.5b_b8_full 1 "${big[@]}" --set recompute.policy=FULL
if ((ngpus >= 2)); then
  gb=$((32 * ngpus))
  run "gpt2-124m_dp${ngpus}_zero1" "$ngpus" --set parallel.zero_stage=1 --set "training.global_batch_size=$gb"
  run "gpt2-124m_dp${ngpus}_zero3" "$ngpus" --set parallel.zero_stage=3 --set "training.global_batch_size=$gb"
  run "gpt2-1.5b_dp${ngpus}_zero3" "$ngpus" "${big[@]}" --set parallel.zero_stage=3 \
    --set "training.global_batch_size=$((8 * ngpus))"
fi
echo "plan_gpu: GPUs: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1) x $ngpus," \
  "commit $(git -C "$here/.." rev-parse --short HEAD 2>/dev/null), $(date -u +%F)" | tee -a "$table"
echo "plan_gpu: the term-by-term plans are in $out/*.plan.txt; layouts that fit 80 GiB:"
"$kiln" plan --config "$out/base.textproto" --world 8 "${big[@]}" --set training.global_batch_size=64 \
  --gpu-mem 80 | sed -n "/^layouts/,\$p"
