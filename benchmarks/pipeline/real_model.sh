#!/usr/bin/env bash
# ZB-H1 against 1F1B on a real model on the CPU (a small GPT-2 at pp = 2, gpt2_pp2.textproto: M
# micro-batches of 1 x 128 tokens in one flush, one thread per rank), three ways:
#  1. stage_split_bench: one process times a stage's forward, backward and split passes and prints
#     the theory's step-time ratio from them;
#  2. zb_pair_bench (mpirun -np 2): the same flush through a 1F1B and a ZB-H1 executor alternately,
#     step by step, so that load from other jobs falls on both alike; median of the pair ratios;
#  3. `kiln train` runs of each schedule alternating REPEATS times: the median step time of each
#     (steps 3.. of every run, pooled; sensitive to other jobs on a shared machine) and the
#     largest relative difference of their losses.
# Usage: benchmarks/pipeline/real_model.sh BUILD_DIR [OUT_DIR] [REPEATS] [M]
set -euo pipefail
build=$1 out=${2:-/tmp/kiln-pp-real} reps=${3:-3} m=${4:-8}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader
export KILN_NUM_THREADS=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
"$build/benchmarks/stage_split_bench" --reps 10 --m "$m"
mpirun -np 2 --oversubscribe --bind-to none "$build/benchmarks/zb_pair_bench" --m "$m" --pairs 20
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$reps"); do
  for s in ONE_F_ONE_B ZB_H1; do
    mpirun -np 2 --oversubscribe --bind-to none "$build/bin/kiln" train \
      --config "$here/gpt2_pp2.textproto" --overwrite --set logging.run_dir="$out/$s-$r" \
      --set parallel.pipeline_schedule="$s" --set training.global_batch_size="$m" \
      >"$out/$s-$r.log" 2>&1
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$out" "$reps" "$m" <<'PY'
import json, statistics, sys
out, reps, m = sys.argv[1], int(sys.argv[2]), sys.argv[3]
med, losses = {}, {}
for s in ("ONE_F_ONE_B", "ZB_H1"):
    ms = []
    for r in range(1, reps + 1):
        rows = [json.loads(l) for l in open(f"{out}/{s}-{r}/metrics.jsonl") if '"kind":"train"' in l]
        ms += [1000 * r_["batch"] * r_["seq_len"] / r_["tokens_per_s"] for r_ in rows if r_["step"] >= 3]
        losses.setdefault(s, [x["loss"] for x in rows])
    q = statistics.quantiles(ms, n=4)
    med[s] = statistics.median(ms)
    print(f"m = {m}: {s:12s} step {med[s]:7.1f} ms (median of {len(ms)} steps, quartiles {q[0]:.1f}-{q[2]:.1f})")
a, b = losses["ZB_H1"], losses["ONE_F_ONE_B"]
diff = max(abs(x - y) / abs(y) for x, y in zip(a, b))
print(f"ZB_H1 / ONE_F_ONE_B = {med['ZB_H1'] / med['ONE_F_ONE_B']:.3f}; "
      f"losses of {len(a)} steps differ by at most {diff:.2e} relative")
PY
