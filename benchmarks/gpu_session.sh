#!/usr/bin/env bash
# One device call of the single-GPU speed work (issue 17): build kiln for sm_90, then run the parts
# named on the command line, each bounded by a timeout, logs under OUT.
# Usage (from the repository root on the GPU host): benchmarks/gpu_session.sh OUT part...
#   parts: e2e (kiln + PyTorch GPT-2 124M), profile (ncu kernel table, 2 steps), cebench (the
#   classifier + loss kernel bench), tests (GPU op tests), sanitize (memcheck on new kernel tests)
set -uo pipefail
out=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
root=$here/..
cd "$root"
t0=$(date +%s)
stamp() { echo "[$(($(date +%s) - t0)) s] $*"; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader | tee "$out/gpu.txt"
stamp configure
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 > "$out/cmake.log" 2>&1 || { tail -30 "$out/cmake.log"; exit 1; }
cmake --build build -j16 > "$out/build.log" 2>&1 || { grep -B2 -A10 -m3 "error" "$out/build.log"; exit 1; }
stamp built
for part in "$@"; do
  case $part in
    e2e)
      timeout 240 bash benchmarks/e2e/run.sh build "$out/e2e" > "$out/e2e.log" 2>&1
      stamp "e2e exit $?"; grep -hE "^kiln:|^pytorch|failed" "$out/e2e.log"
      grep -E '"step":(10|20|30),' "$out/e2e/kiln/metrics.jsonl" | cut -c1-300
      cp "$out/e2e/kiln/metrics.jsonl" "$out/e2e_metrics.jsonl"; rm -rf "$out/e2e" ;;
    profile)
      timeout 200 bash benchmarks/profile/run.sh build "$out/prof" 2 > "$out/profile.txt" 2>&1
      stamp "profile exit $?"; head -30 "$out/profile.txt"; tail -3 "$out/prof/kiln.log"
      gzip -c "$out/prof/ncu.csv" > "$out/ncu.csv.gz"; rm -rf "$out/prof" ;;
    kiln)
      # kiln's side of the e2e run alone (benchmarks/e2e/run.sh without PyTorch)
      timeout 90 build/bin/kiln train --config benchmarks/e2e/gpt2-124m-bench.textproto \
        --overwrite --set logging.run_dir="$out/k" > "$out/kiln_only.log" 2>&1
      stamp "kiln exit $?"; tail -2 "$out/kiln_only.log"
      python3 - "$out/k/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"kind":"train"' in l]
tok = sorted(r["tokens_per_s"] for r in rows if r["step"] >= 10)
print(f"kiln: {tok[len(tok)//2]:,.0f} tok/s (median of steps 10-29), loss at step {rows[-1]['step']} "
      f"{rows[-1]['loss']:.4f}, peak {rows[-1]['mem_peak_mib']:.0f} MiB")
PY
      rm -rf "$out/k" ;;
    newtests)
      timeout 150 build/core/core_gpu_tests --gtest_brief=1 \
        --gtest_filter="${GPU_TEST_FILTER:-*}" > "$out/new_gpu_tests.log" 2>&1
      stamp "new gpu tests exit $?"; grep -E "tests ran|PASSED|FAILED" "$out/new_gpu_tests.log"
      grep -B3 -A12 "Failure" "$out/new_gpu_tests.log" | head -50
      timeout 90 build/tests/gpu_train_test > "$out/gpu_train_test.log" 2>&1
      stamp "train exit $?"; grep -E "tests ran|PASSED|FAILED|steps:|max rel|relative" "$out/gpu_train_test.log" ;;
    ab)
      # kiln alone with each new path switched back to the old one (env knobs), same config.
      for knob in KILN_DGELU=cublaslt KILN_CE_ROWS=scalar; do
        env "$knob" timeout 60 build/bin/kiln train --config benchmarks/e2e/gpt2-124m-bench.textproto \
          --overwrite --set logging.run_dir="$out/ab_${knob%%=*}" > "$out/ab_${knob%%=*}.log" 2>&1
        python3 - "$out/ab_${knob%%=*}/metrics.jsonl" "$knob" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"kind":"train"' in l]
tok = sorted(r["tokens_per_s"] for r in rows if r["step"] >= 10)
print(f"kiln with {sys.argv[2]}: {tok[len(tok)//2]:,.0f} tok/s (median of steps 10-29)")
PY
        rm -rf "$out/ab_${knob%%=*}"
      done
      stamp ab ;;
    cebench)
      timeout 60 build/benchmarks/kernel_bench 10 ce 2>&1 | tee "$out/cebench.log"; stamp cebench ;;
    tests)
      timeout 200 build/core/core_gpu_tests --gtest_brief=1 > "$out/core_gpu_tests.log" 2>&1
      stamp "core_gpu_tests exit $?"; grep -E "tests ran|PASSED|FAILED" "$out/core_gpu_tests.log"
      timeout 60 build/optim/optim_gpu_tests --gtest_brief=1 > "$out/optim_gpu_tests.log" 2>&1
      stamp "optim exit $?"; grep -E "tests ran|PASSED|FAILED" "$out/optim_gpu_tests.log"
      timeout 90 build/tests/gpu_train_test > "$out/gpu_train_test.log" 2>&1
      stamp "train exit $?"; grep -E "tests ran|PASSED|FAILED|steps:|max rel|relative" "$out/gpu_train_test.log"
      grep -B3 -A12 "Failure" "$out/core_gpu_tests.log" | head -60 ;;
    sanitize)
      timeout 70 compute-sanitizer --tool memcheck --error-exitcode 9 build/core/core_gpu_tests \
        --gtest_filter="${SANITIZE_FILTER:-*PackedQkv*:*MlpGelu*:*LinearCrossEntropy*:*StridedInputs*:ElementwiseCuda.*}" --gtest_brief=1 > "$out/memcheck.log" 2>&1
      stamp "memcheck exit $?: $(grep -E 'ERROR SUMMARY' "$out/memcheck.log" | tail -1)" ;;
  esac
done
stamp done
