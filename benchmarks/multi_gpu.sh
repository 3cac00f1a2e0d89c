#!/usr/bin/env bash
# Data parallel on several GPUs of one host (NCCL; NVLink multicast stays off): GPT-2 124M scaling
# from 1 to N GPUs at batch 32 x 1024 per GPU, GPT-2 1.5B with ZeRO-3, and a killed rank ending the
# job within the timeout. Writes logs to OUT_DIR. Usage: benchmarks/multi_gpu.sh BUILD OUT [N]
set -uo pipefail
build=$1 out=$2 n=${3:-2}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpi=(mpirun -np "$n" --bind-to none -x NCCL_NVLS_ENABLE -x LD_LIBRARY_PATH)
cfg="$here/e2e/gpt2-124m-bench.textproto"
median() {  # median tokens/s and MFU of train records with step >= MEDIAN_FROM (default 10)
  python3 - "$1" "${MEDIAN_FROM:-10}" <<'PY'
import json, sys
first = int(sys.argv[2])
rows = [json.loads(l) for l in open(sys.argv[1]) if '"kind":"train"' in l and json.loads(l)["step"] >= first]
t = sorted(r["tokens_per_s"] for r in rows); m = sorted(r["mfu"] for r in rows)
print(f"{t[len(t)//2]:.0f} {100*m[len(m)//2]:.1f}")
PY
}
"$build/bin/kiln" train --config "$cfg" --quiet --set logging.run_dir="$out/gpt2_1gpu" > "$out/gpt2_1gpu.log" 2>&1
read -r t1 m1 < <(median "$out/gpt2_1gpu/metrics.jsonl")
"${mpi[@]}" "$build/bin/kiln" train --config "$cfg" --quiet --set logging.run_dir="$out/gpt2_${n}gpu" \
  --set training.global_batch_size=$((32 * n)) > "$out/gpt2_${n}gpu.log" 2>&1
read -r tn mn < <(median "$out/gpt2_${n}gpu/metrics.jsonl")
python3 -c "print(f'GPT-2 124M, 32x1024 per GPU, bf16: 1 GPU {$t1:,.0f} tok/s (MFU $m1%), $n GPUs {$tn:,.0f} tok/s (MFU $mn%): scaling {$tn/$t1:.3f}x')" | tee "$out/scaling.txt"
# ZeRO-3 GPT-2 1.5B at 32 x 1024 per GPU (the batch of the 40% MFU entry in RESULTS.md), median
# over steps 1-15 of 16 (the first step is excluded by the metrics' own warm-up).
"${mpi[@]}" "$build/bin/kiln" train --config "$cfg" --quiet --set logging.run_dir="$out/gpt2_1_5b_zero3" \
  --set 'model={preset: "gpt2-1.5b" vocab_pad_multiple: 128}' --set parallel.zero_stage=3 \
  --set training.global_batch_size=$((32 * n)) --set parallel.micro_batch_size=32 \
  --set training.max_steps=16 > "$out/gpt2_1_5b_zero3.log" 2>&1
read -r tz mz < <(MEDIAN_FROM=1 median "$out/gpt2_1_5b_zero3/metrics.jsonl")
echo "GPT-2 1.5B ZeRO-3 on $n GPUs, 32x1024 per GPU, bf16: $tz tok/s, MFU $mz%" | tee "$out/zero3.txt"
tail -3 "$out/gpt2_1_5b_zero3.log"
start=$(date +%s)
KILN_FAULT_INJECT="1:12:kill" timeout 200 "${mpi[@]}" -x KILN_FAULT_INJECT "$build/bin/kiln" train \
  --config "$cfg" --quiet --set training.max_steps=1000 --set parallel.timeout_s=30 \
  --set logging.run_dir="$out/killed" --set training.global_batch_size=$((32 * n)) > "$out/killed.log" 2>&1
rc=$?
echo "killed rank: mpirun exit $rc after $(( $(date +%s) - start )) s (timeout 30 s)" | tee "$out/killed.txt"
pgrep -af "kiln train" && echo "ORPHANS LEFT" || echo "no kiln processes left"
