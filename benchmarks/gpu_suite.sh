#!/usr/bin/env bash
# Runs kiln's GPU checks and benchmarks on a GPU host and writes logs to OUT_DIR: the GPU tests,
# compute-sanitizer memcheck and racecheck on the op tests, the kernel and attention benchmarks and
# the end-to-end GPT-2 124M run next to the PyTorch reference.
# Usage: benchmarks/gpu_suite.sh BUILD_DIR OUT_DIR [tests|sanitize|bench|e2e ...]
set -uo pipefail
build=$1 out=$2
shift 2
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(tests sanitize bench e2e)
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
git -C "$here/.." rev-parse --short HEAD > "$out/commit.txt" 2>/dev/null || true
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/gpu.txt"
for part in "${parts[@]}"; do
  case $part in
    tests)
      "$build/core/core_gpu_tests" --gtest_brief=1 > "$out/core_gpu_tests.log" 2>&1
      "$build/optim/optim_gpu_tests" --gtest_brief=1 > "$out/optim_gpu_tests.log" 2>&1
      "$build/tests/gpu_train_test" > "$out/gpu_train_test.log" 2>&1
      grep -hE "tests ran|PASSED|FAILED|steps:" "$out"/*_test*.log ;;
    sanitize)
      filter='LayerNorm*:AddLayerNorm*:RmsNorm*:Activation*:Softmax*:Embedding*:Rope*:CrossEntropy*:Dropout*:Elementwise*:Reduce*'
      compute-sanitizer --tool memcheck --error-exitcode 9 "$build/core/core_gpu_tests" \
        --gtest_filter="$filter" --gtest_brief=1 > "$out/memcheck.log" 2>&1
      echo "memcheck exit $?: $(grep -E 'ERROR SUMMARY' "$out/memcheck.log" | tail -1)"
      compute-sanitizer --tool racecheck --error-exitcode 9 "$build/core/core_gpu_tests" \
        --gtest_filter="$filter" --gtest_brief=1 > "$out/racecheck.log" 2>&1
      echo "racecheck exit $?: $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$out/racecheck.log" | tail -1)" ;;
    bench)
      "$build/benchmarks/kernel_bench" 20 > "$out/kernel_bench.log" 2>&1
      "$build/benchmarks/attention_bench" 20 > "$out/attention_bench.log" 2>&1
      cat "$out/kernel_bench.log" "$out/attention_bench.log" ;;
    e2e)
      bash "$here/e2e/run.sh" "$build" "$out/e2e" > "$out/e2e.log" 2>&1
      grep -hE "^kiln:|^pytorch" "$out/e2e.log" ;;
  esac
done
