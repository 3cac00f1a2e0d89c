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
# On the GPU host a test that would skip for want of a GPU (a broken driver, no device visible,
# no cuDNN) fails instead (core/testing/require_gpu.h, tests/checkpoint_process_test.py --gpu).
export KILN_REQUIRE_GPU=1
mkdir -p "$out"
git -C "$here/.." rev-parse --short HEAD > "$out/commit.txt" 2>/dev/null || true
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/gpu.txt"
for part in "${parts[@]}"; do
  case $part in
    tests)
      "$build/core/core_gpu_tests" --gtest_brief=1 > "$out/core_gpu_tests.log" 2>&1
      "$build/optim/optim_gpu_tests" --gtest_brief=1 > "$out/optim_gpu_tests.log" 2>&1
      "$build/tests/gpu_train_test" > "$out/gpu_train_test.log" 2>&1
      # Every NCCL collective, 2 ranks, one GPU each (fails on a host with fewer than 2 GPUs).
      OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun -np 2 --oversubscribe \
        --bind-to none "$build/tests/nccl_comm_cuda_test" > "$out/nccl_comm_test.log" 2>&1
      python3 "$here/../tests/checkpoint_process_test.py" --kiln "$build/bin/kiln" --gpu resume \
        > "$out/gpu_ckpt_test.log" 2>&1
      grep -hE "tests ran|PASSED|FAILED|steps:|kill -9 after|SIGTERM after|failure" "$out"/*_test*.log ;;
    sanitize)
      # memcheck: every CUDA op test and the optimizer tests. racecheck: the same, but the tests
      # that run cuDNN's attention kernels (wgmma / TMA code racecheck cannot follow) go to a
      # separate log, so that the verdict on the rest (the kiln attention kernel included) stays
      # readable.
      cudnn='AttentionCuda.CudnnMatchesCpu:AttentionCuda.DeterministicModeIsBitIdentical:AttentionCuda.AutoPicksCudnnForHalfAndKilnForF32:AttentionCuda.PlansAreCachedPerShape:AttentionCuda.StridedInputsMatchCpu:AttentionCuda.EveryOutputElementWritten'
      # Not under the sanitizers: the out-of-memory test (memcheck reports its deliberately
      # failed cudaMalloc) and the pinned-ring test (40 large GEMMs, minutes under a sanitizer).
      skip='CudaRuntime.OutOfMemoryIsAClearError:CudaRuntime.PinnedRingUploadsWithoutWaitingForTheGpu'
      for t in core optim; do
        timeout 240 compute-sanitizer --tool memcheck --error-exitcode 9 "$build/$t/${t}_gpu_tests" \
          --gtest_filter="-$skip" --gtest_brief=1 > "$out/memcheck_$t.log" 2>&1
        echo "memcheck $t exit $?: $(grep -E 'ERROR SUMMARY' "$out/memcheck_$t.log" | tail -1)"
      done
      timeout 300 compute-sanitizer --tool racecheck --error-exitcode 9 "$build/core/core_gpu_tests" \
        --gtest_filter="-$cudnn:$skip" --gtest_brief=1 > "$out/racecheck.log" 2>&1
      echo "racecheck core (kiln kernels) exit $?: $(grep -E 'RACECHECK SUMMARY' "$out/racecheck.log" | tail -1)"
      timeout 120 compute-sanitizer --tool racecheck "$build/optim/optim_gpu_tests" --gtest_brief=1 \
        > "$out/racecheck_optim.log" 2>&1
      echo "racecheck optim: $(grep -E 'RACECHECK SUMMARY' "$out/racecheck_optim.log" | tail -1)"
      timeout 120 compute-sanitizer --tool racecheck "$build/core/core_gpu_tests" \
        --gtest_filter="$cudnn" --gtest_brief=1 > "$out/racecheck_cudnn.log" 2>&1
      echo "racecheck cuDNN attention: $(grep -E 'RACECHECK SUMMARY' "$out/racecheck_cudnn.log" | tail -1)" ;;
    bench)
      "$build/benchmarks/kernel_bench" 20 > "$out/kernel_bench.log" 2>&1
      "$build/benchmarks/attention_bench" 20 > "$out/attention_bench.log" 2>&1
      cat "$out/kernel_bench.log" "$out/attention_bench.log" ;;
    e2e)
      bash "$here/e2e/run.sh" "$build" "$out/e2e" > "$out/e2e.log" 2>&1
      grep -hE "^kiln:|^pytorch" "$out/e2e.log" ;;
  esac
done
