#!/usr/bin/env bash
# One device call of the single-GPU speed work (issue 17): build kiln for sm_90, then run the parts
# named on the command line, each bounded by a timeout, logs under OUT.
# Usage (from the repository root on the GPU host): benchmarks/gpu_session.sh OUT part...
#   parts: e2e (kiln + PyTorch GPT-2 124M), profile (ncu kernel table, 2 steps; lprofile: the same
#   for Llama 1B), cebench (the
#   classifier + loss kernel bench), tests (GPU op tests), sanitize (memcheck on new kernel tests),
#   ab2 (kiln with this round's changes switched off one at a time), ctest (ctest -L gpu), plan
#   (benchmarks/plan_gpu.sh: kiln plan against measured GPU peaks), big (GPT-2 1.5B and Llama 1B,
#   kiln and PyTorch; BIG_NOPRECAST=1 adds kiln without the
#   batched parameter cast), llama_ab (Llama 1B with each of this round's switches off, and
#   PyTorch; NO_PYTORCH=1 without it), ab3 (GPT-2 124M with the direct weight gradients and
#   the folded clipping factor off), ropebench (kernel_bench rope), big15 (GPT-2 1.5B, kiln and
#   PyTorch), fp8 (GPT-2 1.5B, 200 steps
#   bf16 and fp8), plant (planted bugs), fuse (Llama's fused projections: tests, memcheck, a
#   planted bug, Llama 1B with KILN_FUSED_PROJ=1 / off), ropegrad (RoPE's (B, T, H, D) gradients:
#   tests, memcheck, Llama 1B with KILN_ROPE_GRAD_BTHD=1 / off), fp8profile (ncu kernel tables of
#   GPT-2 1.5B with fp8 GEMMs and in bf16), ceshared (the classifier rows kept in shared memory:
#   test, memcheck, planted bug, GPT-2 124M / Llama with KILN_CE_ROWS=shared), resid (the residual
#   fusions: tests, memcheck, Llama 1B and GPT-2 124M with KILN_RESID_EPILOGUE /
#   KILN_NORM_SKIP_FUSED each on, both on, off; RESID_MODELS="llama" or "" picks the timings),
#   fp8f (the fused fp8 bias gradient and GELU MLP: tests, memcheck, planted bugs, GPT-2 1.5B with
#   KILN_FP8_FUSED_DBIAS / KILN_FP8_FUSED_MLP on and off; FP8F_LONG=1 adds 200-step loss curves;
#   needs kernel_bench and models_gpu_tests built), allon (every opt-in path of this round on
#   together against all off, then PyTorch: Llama 1B, GPT-2 124M and 1.5B; ALLON_MODELS picks;
#   ALLON_QUICK=1 skips the second all-on run, ALLON_NOOFF=1 the all-off run; ALLON_FP8="g1.5b"
#   adds kiln with fp8 GEMMs for the models it names; ALLON_ENV: switches for the all-on runs),
#   close17 (issue 17's closing measurement, most needed first: GPT-2 124M and 1.5B against
#   PyTorch, then `ctest -L gpu`, then Llama 1B against PyTorch; one kiln run each),
#   fp8pair (GPT-2 1.5B with today's defaults: bf16 and fp8 for 200 steps, the loss curves and
#   speed, then fp8 and bf16 for 20 steps),
#   adamwvec (KILN_ADAMW_VEC: test, memcheck, planted bug, kernel_bench adamw, Llama 1B / GPT-2
#   124M on / off over today's defaults; ADAMWVEC_E2E=0 skips those runs), dgelu (the hidden gradient's paths: test, kernel_bench dgelu, GPT-2 124M with
#   KILN_DGELU=epilogue / default; DGELU_MODELS="g124 g1.5b" adds 1.5B),
#   fp8delayed (fp8 delayed scaling: tests, memcheck, planted bug, GPT-2 1.5B on / off / bf16 and
#   200-step losses),
#   embab / embcheck (KILN_EMB_DIRECT_GRAD and KILN_PACKED_DIRECT_WGRAD A/B; the embedding
#   test, ctest -L gpu, memcheck, plants 13_ 14_),
#   lazyab (KILN_LAZY_ZERO_GRAD on / off per model), lazycheck (its GPU tests, memcheck,
#   planted bugs 11_ and 12_; needs the test binaries built),
#   overlap (KILN_OVERLAP_OPTIM: tests from carried binaries, models on / default / on with
#   KILN_COMPUTE_PRIORITY=1 unless OVERLAP_PRIO=0), overlapcheck
#   (its memcheck and planted bugs; needs gpu_overlap_test and optim_gpu_tests built, waits for
#   the background build; OVERLAPCHECK_MORE: AdamW-copy plants to run as well),
#   r7checks (memcheck on the fused cast, RMSNorm tests repeated), round7 (this tree,
#   gpucarry/kiln-base and this tree with this round's opt-ins, per model),
#   fusedcast (KILN_FUSED_PARAM_CAST: tests, memcheck; FUSEDCAST_E2E=1 A/Bs), plants (this round's
#   planted bugs, run last), packed (KILN_PACKED_DIRECT_WGRAD: tests, memcheck, planted bug, Llama 1B on / off),
#   sdpatune (cuDNN attention plans timed on first use: test, memcheck, planted bug, Llama 1B and
#   GPT-2 124M with KILN_SDPA_TUNE=1 / off; SDPATUNE_MODELS picks),
#   r9 (the ninth round's switches off one at a time per model: R9_MODELS, R9_KB, R9_LITE, R9_CE,
#   R9_SMALL), r9check (its GPU tests and memcheck; waits for the background build), r9plants
#   (planted bugs 15_ to 22_; R9_PLANTS picks), r10 (fp8 at 1.5B: bf16, fp8 200 steps, fp8 with
#   KILN_FP8_DIRECT_WGRAD / KILN_FP8_RESID_EPILOGUE off, both again; R10_REPEAT=0: no second fp8), r10check (every fp8 GPU test,
#   memcheck on Fp8DirectCuda.*, plants 23_ 24_ from build/plants.tar.xz; waits for the build),
#   r11 (the eleventh round's switches on Llama 1B: R11_MODELS), r11check (its tests, memcheck,
#   plants 25_ 26_ from build/plants.tar.xz; waits for the build),
#   timeline (a CUPTI GPU timeline per model and its account of busy time and gaps per step;
#   TIMELINE_MODELS picks).
#   BUILD_TARGETS overrides the targets built; SKIP_BUILD=1 builds nothing (build/bin/kiln
#   built elsewhere for sm_90, for the parts that only run kiln and PyTorch; with BG_BUILD_TARGETS
#   those targets are built meanwhile into build at low priority (leave kiln out: build/bin/kiln is the one built elsewhere), and ctest waits for them)
#   (cebench needs kernel_bench).
set -uo pipefail
out=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
root=$here/..
cd "$root"
t0=$(date +%s)
stamp() { echo "[$(($(date +%s) - t0)) s] $*"; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader | tee "$out/gpu.txt"
bg_build=""
if [[ ${SKIP_BUILD:-0} == 1 ]] && build/bin/kiln --help > /dev/null 2>&1; then
  stamp "build/bin/kiln built elsewhere"  # for sm_90; only the kiln-and-PyTorch parts need no more
  if [[ -n ${BG_BUILD_TARGETS:-} ]]; then  # the test binaries, built at low priority meanwhile
    (cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
       > "$out/cmake_bg.log" 2>&1 &&
     nice -n 19 cmake --build build -j14 --target $BG_BUILD_TARGETS > "$out/build_bg.log" 2>&1
     echo $? > "$out/build_bg.rc") &
    bg_build=$!
  fi
else
  [[ ${SKIP_BUILD:-0} == 1 ]] && { echo "the kiln built elsewhere does not run:"; ldd build/bin/kiln | grep "not found"; }
  stamp configure
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 > "$out/cmake.log" 2>&1 || { tail -30 "$out/cmake.log"; exit 1; }
  cmake --build build -j16 --target ${BUILD_TARGETS:-kiln core_gpu_tests optim_gpu_tests gpu_train_test} \
    > "$out/build.log" 2>&1 || { grep -B2 -A10 -m3 "error" "$out/build.log"; exit 1; }
  stamp built
fi
export KILN_STEP_PHASES=1  # kiln prints where the host spends each step (launch/step_phases.h)
# The switches made defaults on 2026-12-06 (benchmarks/RESULTS.md), all off: the baseline the
# per-switch parts below compare against (their "on" runs add one switch back on top of it).
OFF=(KILN_FUSED_PROJ=0 KILN_ROPE_GRAD_BTHD=0 KILN_CE_ROWS=vector KILN_RESID_EPILOGUE=0
     KILN_NORM_SKIP_FUSED=0 KILN_SDPA_TUNE=0 KILN_FP8_FUSED_DBIAS=0 KILN_FP8_FUSED_MLP=0
     KILN_FP8_FAST_ACCUM=0 KILN_DGELU=kernel KILN_FP8_DELAYED_SCALING=0)
# kiln_run LABEL CONFIG [VAR=VALUE...] [-- --set k=v...]: kiln train alone, then its median
# tokens/s (steps >= 8), MFU, peak memory and the losses at a few steps (metrics kept as
# $out/LABEL.jsonl).
kiln_run() {
  local label=$1 cfg=$2 envs=() sets=()
  shift 2
  while (($#)) && [[ $1 != -- ]]; do envs+=("$1"); shift; done
  (($#)) && shift && sets=("$@")
  env "${envs[@]}" timeout 240 "${kiln_bin:-build/bin/kiln}" train --config "$cfg" --set logging.run_dir="$out/r_$label" \
    "${sets[@]}" > "$out/kiln_$label.log" 2>&1 || { echo "kiln $label failed:"; tail -5 "$out/kiln_$label.log"; }
  python3 - "$out/r_$label/metrics.jsonl" "$label" "${envs[*]} ${sets[*]}" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"kind":"train"' in l]
tok = sorted(r["tokens_per_s"] for r in rows if r["step"] >= 8)
mfu = sorted(r["mfu"] for r in rows if r["step"] >= 8)
last = rows[-1]["step"]
at = [r for r in rows if r["step"] in (0, 10, 50, 100, 150) or r["step"] == last]
print(f"kiln {sys.argv[2]} {sys.argv[3]}: {tok[len(tok)//2]:,.0f} tok/s, MFU {100*mfu[len(mfu)//2]:.1f}% "
      f"(median of steps 8-{last}), peak {rows[-1]['mem_peak_mib']:.0f} MiB, losses "
      + " ".join(f"{r['step']}:{r['loss']:.4f}" for r in at))
if len(rows) >= 40:
    tail = [r["loss"] for r in rows[-20:]]
    print(f"  mean loss of the last 20 steps {sum(tail) / len(tail):.5f}")
PY
  grep -A7 "^step phases" "$out/kiln_$label.log"
  cp "$out/r_$label/metrics.jsonl" "$out/$label.jsonl" 2>/dev/null; rm -rf "$out/r_$label"
}
# gtests LABEL BINARY FILTER [SECONDS]: the tests of BINARY that FILTER picks, their summary and
# the start of each failure (log $out/LABEL.log).
gtests() {
  timeout "${4:-180}" "$2" --gtest_brief=1 --gtest_filter="$3" > "$out/$1.log" 2>&1
  stamp "$1: exit $?"; grep -E "tests ran|PASSED|FAILED" "$out/$1.log"
  grep -B3 -A12 "Failure" "$out/$1.log" | head -40
}
# memcheck LABEL BINARY FILTER [SECONDS]: the same under compute-sanitizer memcheck.
memcheck() {
  timeout "${4:-300}" compute-sanitizer --tool memcheck --error-exitcode 9 "$2" \
    --gtest_filter="$3" --gtest_brief=1 > "$out/$1_memcheck.log" 2>&1
  stamp "$1 memcheck: exit $?, $(grep -E 'ERROR SUMMARY' "$out/$1_memcheck.log" | tail -1)"
}
# plant FILE SED_EXPR FILTER [BINARY]: plants a bug in FILE, rebuilds BINARY (default
# build/core/core_gpu_tests), runs the tests that must catch it (want: exit 1, FAILED lines > 0),
# then restores FILE and rebuilds.
plant() {
  local bin=${4:-build/core/core_gpu_tests}
  cp "$1" /tmp/planted.bak && sed -i "$2" "$1"
  cmp -s "$1" /tmp/planted.bak && echo "plant: no change in $1"
  cmake --build build -j16 --target "$(basename "$bin")" > "$out/plant_build.log" 2>&1 ||
    tail -5 "$out/plant_build.log"
  timeout 180 "$bin" --gtest_brief=1 --gtest_filter="$3" > "$out/plant.log" 2>&1
  echo "planted in $1 ($2): tests exit $? (want 1), $(grep -cE '^\[  FAILED' "$out/plant.log") FAILED lines"
  cp /tmp/planted.bak "$1"
  # PLANT_NORESTORE=1: no rebuild of the restored source (plants run last; the next build
  # recompiles it anyway)
  [[ ${PLANT_NORESTORE:-0} == 1 ]] ||
    cmake --build build -j16 --target "$(basename "$bin")" > "$out/plant_build.log" 2>&1
}
# plant_patch PATCH FILTER BINARY: the same with a patch (patch -p1) instead of a sed expression.
plant_patch() {
  patch -p1 --quiet < "$1" || { echo "plant_patch: $1 did not apply"; return; }
  # Files a later call must rebuild: the next call's copy of the tree brings back the old
  # timestamps, older than the objects built from the planted source (ctest rebuilds them).
  grep -E '^\+\+\+ b/' "$1" | sed 's|^+++ b/||' >> build/planted.list
  cmake --build build -j16 --target "$(basename "$3")" > "$out/plant_build.log" 2>&1 ||
    tail -5 "$out/plant_build.log"
  timeout 180 "$3" --gtest_brief=1 --gtest_filter="$2" > "$out/plant_$(basename "$1").log" 2>&1
  local rc=$?
  echo "planted $(basename "$1"): tests exit $rc (want != 0), $(grep -cE '^\[  FAILED' \
    "$out/plant_$(basename "$1").log") FAILED lines; $(grep -m1 -oE 'misaligned address' \
    "$out/plant_$(basename "$1").log")"
  patch -p1 -R --quiet < "$1"
  [[ ${PLANT_NORESTORE:-0} == 1 ]] ||
    cmake --build build -j16 --target "$(basename "$3")" > "$out/plant_build.log" 2>&1
}
# carried_plant N FILTER: planted bug N_ from a binary built elsewhere (build/plants.tar.xz: pN)
# on the tests FILTER picks (want: exit 1 and FAILED lines).
carried_plant() {
  [[ -f build/plants.tar.xz ]] || return 0
  [[ -d /tmp/pl ]] || { mkdir -p /tmp/pl && tar xJf build/plants.tar.xz -C /tmp/pl; }
  [[ -x /tmp/pl/p$1 ]] || return 0
  timeout 120 "/tmp/pl/p$1" --gtest_brief=1 --gtest_filter="$2" > "$out/plant$1.log" 2>&1
  echo "planted $1: tests exit $? (want 1), $(grep -cE '^\[  FAILED' "$out/plant$1.log") FAILED lines"
}
# wait_bg_build: waits for the background build of BG_BUILD_TARGETS, if one runs (once).
wait_bg_build() {
  [[ -n $bg_build ]] || return 0
  wait "$bg_build"; stamp "background build exit $(cat "$out/build_bg.rc" 2>/dev/null)"; bg_build=""
}
# cfg_of MODEL: the benchmark config of llama, g124 or g1.5b.
cfg_of() {
  case $1 in
    llama) echo benchmarks/e2e/llama-1b-bench.textproto ;;
    g124) echo benchmarks/e2e/gpt2-124m-bench.textproto ;;
    g1.5b) echo benchmarks/e2e/gpt2-1.5b-bench.textproto ;;
  esac
}
# ab LABEL CONFIG ENV...: kiln with the switches ENV on, off, on again (run-to-run spread).
ab_on_off() {
  local label=$1 cfg=$2
  shift 2
  kiln_run "$label-on" "$cfg" "${OFF[@]}" "$@"; kiln_run "$label-off" "$cfg" "${OFF[@]}"
  kiln_run "$label-on2" "$cfg" "${OFF[@]}" "$@"
}
# run_ctest: every gpu-labelled ctest (op tests, GPU training parity, GPU kill -9 resume, NCCL at
# np 2 when two GPUs are present); needs the background build (or BUILD_TARGETS) of their binaries.
run_ctest() {
  local dir=build
  wait_bg_build
  if [[ -f build/planted.list ]]; then  # objects of planted sources: rebuild from the clean ones
    sort -u build/planted.list | xargs -r touch && rm build/planted.list
    cmake --build build -j16 > "$out/build_unplant.log" 2>&1; stamp "rebuilt after plants: $?"
  fi
  timeout 420 ctest --test-dir $dir -L gpu -j4 --output-on-failure > "$out/ctest_gpu.log" 2>&1
  stamp "ctest -L gpu exit $?"; grep -E "tests passed|\*\*\*|Failed" "$out/ctest_gpu.log" | head -20
}
# allon_model MODEL: the defaults (and the ALLON_* variants) of llama, g124 or g1.5b, then PyTorch.
allon_model() {
  local m=$1 c
  c=$(cfg_of "$m")
  kiln_run "$m-allon" "$c" ${ALLON_ENV:-}
  [[ ${ALLON_NOOFF:-0} == 1 ]] || kiln_run "$m-alloff" "$c" "${OFF[@]}"
  [[ " ${ALLON_FP8:-} " == *" $m "* ]] && kiln_run "$m-fp8" "$c" -- --set precision.fp8_matmul=true
  [[ ${ALLON_QUICK:-0} == 1 ]] || kiln_run "$m-allon2" "$c"
  case $m in
    llama) timeout 240 python3 benchmarks/e2e/pytorch_llama.py > "$out/pytorch_llama.log" 2>&1 ;;
    g124) timeout 240 python3 benchmarks/e2e/pytorch_gpt2.py > "$out/pytorch_g124.log" 2>&1 ;;
    g1.5b) timeout 240 python3 benchmarks/e2e/pytorch_gpt2.py --layers 48 --heads 25 --c 1600 \
      --batch 8 --steps 20 --warmup 8 > "$out/pytorch_g1.5b.log" 2>&1 ;;
  esac
  stamp "pytorch $m exit $?"; grep -hE "^pytorch|failed|Error" "$out/pytorch_$m.log" | tail -1
}
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
    lprofile)
      # the same kernel table for Llama 1B (8 x 2048)
      timeout 300 bash benchmarks/profile/run.sh build "$out/lprof" 2 benchmarks/e2e/llama-1b-bench.textproto \
        > "$out/lprofile.txt" 2>&1
      stamp "llama profile exit $?"; head -40 "$out/lprofile.txt"; tail -3 "$out/lprof/kiln.log"
      gzip -c "$out/lprof/ncu.csv" > "$out/lncu.csv.gz"; rm -rf "$out/lprof" ;;
    fp8profile)
      # the kernel table of GPT-2 1.5B (8 x 1024) with fp8 GEMMs, then in bf16: where fp8's
      # time goes (amax / casts / unfused GELU against the GEMMs it speeds up)
      for p8 in fp8 bf16; do
        sets=""; [[ $p8 == fp8 ]] && sets="precision.fp8_matmul=true"
        PROFILE_SETS=$sets timeout 280 bash benchmarks/profile/run.sh build "$out/p$p8" 2 \
          benchmarks/e2e/gpt2-1.5b-bench.textproto > "$out/profile_1.5b_$p8.txt" 2>&1
        stamp "1.5b $p8 profile exit $?"; sed -n '/^category/,$p' "$out/profile_1.5b_$p8.txt"
        gzip -c "$out/p$p8/ncu.csv" > "$out/ncu_1.5b_$p8.csv.gz"; rm -rf "$out/p$p8"
      done ;;
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
    ab2)
      # kiln alone with each issue-17 change of this round switched back (env knobs), same config,
      # the new default first and last (run-to-run spread).
      c=benchmarks/e2e/gpt2-124m-bench.textproto
      kiln_run new "$c"; kiln_run noprecast "$c" KILN_PRECAST=0; kiln_run notune "$c" KILN_GEMM_TUNE=0
      kiln_run new2 "$c"; kiln_run noprecast2 "$c" KILN_PRECAST=0
      kiln_run notune2 "$c" KILN_GEMM_TUNE=0; kiln_run new3 "$c"; stamp ab2 ;;
    llama_ab)
      # Llama 1B (8 x 2048): kiln with this round's changes, then each switched off alone, then all
      # off, then the first again (run-to-run spread), then PyTorch, in one command.
      c=benchmarks/e2e/llama-1b-bench.textproto
      kiln_run llama-new "$c"
      if [[ ${LLAMA_AB_SHORT:-0} == 1 ]]; then  # only all on / all off
        kiln_run llama-fuse "$c" KILN_FUSED_PROJ=1
        kiln_run llama-alloff "$c" KILN_ROPE=v1 KILN_FOLD_GRAD_SCALE=0 KILN_DIRECT_WGRAD=0
      else
      kiln_run llama-fuse "$c" KILN_FUSED_PROJ=1
      kiln_run llama-rope-v1 "$c" KILN_ROPE=v1
      kiln_run llama-nofold "$c" KILN_FOLD_GRAD_SCALE=0
      kiln_run llama-nodirect "$c" KILN_DIRECT_WGRAD=0
      kiln_run llama-alloff "$c" KILN_ROPE=v1 KILN_FOLD_GRAD_SCALE=0 KILN_DIRECT_WGRAD=0
      kiln_run llama-new2 "$c"
      fi
      if [[ ${NO_PYTORCH:-0} != 1 ]]; then
        timeout 240 python3 benchmarks/e2e/pytorch_llama.py > "$out/pytorch_llama.log" 2>&1
        stamp "pytorch llama exit $?"; grep -E "^pytorch|failed|Error" "$out/pytorch_llama.log" | head -5
      fi ;;
    big15)
      # GPT-2 1.5B (8 x 1024): kiln, then the same PyTorch model.
      kiln_run gpt2-1.5b benchmarks/e2e/gpt2-1.5b-bench.textproto
      timeout 240 python3 benchmarks/e2e/pytorch_gpt2.py --layers 48 --heads 25 --c 1600 --batch 8 \
        --steps 20 --warmup 8 > "$out/pytorch_1.5b.log" 2>&1
      stamp "pytorch 1.5b exit $?"; grep -E "^pytorch|failed|Error" "$out/pytorch_1.5b.log" | head -5 ;;
    ab3)
      # GPT-2 124M: kiln with this round's changes, then with the direct weight-gradient
      # accumulation and the folded clipping factor off, then again.
      c=benchmarks/e2e/gpt2-124m-bench.textproto
      kiln_run g124-new "$c"; kiln_run g124-nodirect "$c" KILN_DIRECT_WGRAD=0
      kiln_run g124-nofold "$c" KILN_FOLD_GRAD_SCALE=0; kiln_run g124-new2 "$c"; stamp ab3 ;;
    ropebench)
      timeout 60 build/benchmarks/kernel_bench 50 rope 2>&1 | tee "$out/ropebench.log" | tail -12
      stamp ropebench ;;
    fp8)
      # GPT-2 1.5B (8 x 1024), 200 steps in bf16 and with fp8 GEMMs: speed and loss curves.
      c=benchmarks/e2e/gpt2-1.5b-bench.textproto
      kiln_run bf16-200 "$c" -- --set training.max_steps=200 --set schedule.lr.warmup_steps=20
      kiln_run fp8-200 "$c" -- --set training.max_steps=200 --set schedule.lr.warmup_steps=20 \
        --set precision.fp8_matmul=true
      stamp fp8 ;;
    big)
      # GPT-2 1.5B (8 x 1024) and Llama 1B (8 x 2048): kiln, then the same PyTorch model.
      [[ " $* " == *" fp8 "* ]] || kiln_run gpt2-1.5b benchmarks/e2e/gpt2-1.5b-bench.textproto
      timeout 240 python3 benchmarks/e2e/pytorch_gpt2.py --layers 48 --heads 25 --c 1600 --batch 8 \
        --steps 20 --warmup 8 > "$out/pytorch_1.5b.log" 2>&1
      stamp "pytorch 1.5b exit $?"; grep -E "^pytorch|failed|Error" "$out/pytorch_1.5b.log" | head -5
      kiln_run llama-1b benchmarks/e2e/llama-1b-bench.textproto; stamp "kiln llama"
      timeout 240 python3 benchmarks/e2e/pytorch_llama.py > "$out/pytorch_llama.log" 2>&1
      stamp "pytorch llama exit $?"; grep -E "^pytorch|failed|Error" "$out/pytorch_llama.log" | head -5
      if [[ ${BIG_NOPRECAST:-0} == 1 ]]; then
        kiln_run gpt2-1.5b-noprecast benchmarks/e2e/gpt2-1.5b-bench.textproto KILN_PRECAST=0
        kiln_run llama-1b-noprecast benchmarks/e2e/llama-1b-bench.textproto KILN_PRECAST=0
        stamp "noprecast"
      fi ;;
    plant)
      # Planted bugs that earlier rounds' GPU tests must catch: the cast kernel stops one element
      # short of a chunk; the f32 += 16-bit add_ skips its last element; AccumulateGrad keeps a
      # passed-on bf16 gradient as a bf16 .grad.
      plant core/ops/multi_cast.cu 's/min(a.n\[t\], start + kChunk)/min(a.n[t], start + kChunk - 1)/' 'MultiCastCuda.*'
      plant core/ops/elementwise.cu 's/    d\[i\] = add_f64(d\[i\], alpha, Elem<S>::load(s, i));/    if (i + 1 < n) d[i] = add_f64(d[i], alpha, Elem<S>::load(s, i));/' 'ElementwiseCuda.InPlace*'
      plant core/autograd.cc 's/acc = Tensor::empty(g.shape(), leaf_->dtype, g.device());/acc = Tensor::empty(g.shape(), g.dtype(), g.device());/' 'MultiCastCuda.*'
      stamp plant ;;
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
    ctest)
      run_ctest ;;
    plan)
      # kiln plan against measured GPU peaks (benchmarks/plan_gpu.sh), GPT-2 124M and 1.5B
      timeout 400 bash benchmarks/plan_gpu.sh build "$out/plan" > "$out/plan.log" 2>&1
      stamp "plan exit $?"; cat "$out/plan/plan_gpu.txt"
      rm -rf "$out"/plan/*/ ;;
    fuse)
      # Llama's fused q/k/v (rope_qkv_packed) and gate/up GEMMs: their GPU tests (all of
      # models_gpu_tests, incl. every opt-in path together), memcheck on the packed SwiGLU and q/k/v
      # kernels, a planted kernel bug (gate and up halves swapped), then Llama 1B with the fusion
      # on (KILN_FUSED_PROJ=1) and off. BUILD_TARGETS must include models_gpu_tests.
      gtests fuse_core build/core/core_gpu_tests 'ActivationCuda.*:ViewCuda.*:MultiCastCuda.*:RopeCuda.PackedQkv*'
      gtests fuse_models build/models/models_gpu_tests '*'
      memcheck fuse build/core/core_gpu_tests 'ActivationCuda.SwigluPacked*:RopeCuda.PackedQkv*'
      plant core/ops/activation.cu 's/V vg = \*reinterpret_cast<const V\*>(g), vu = \*reinterpret_cast<const V\*>(g + w)/V vu = *reinterpret_cast<const V*>(g), vg = *reinterpret_cast<const V*>(g + w)/' \
        'ActivationCuda.SwigluPacked*'
      ab_on_off llama-fused benchmarks/e2e/llama-1b-bench.textproto KILN_FUSED_PROJ=1; stamp fuse ;;
    sdpatune)
      # cuDNN attention plans timed on their first call (KILN_SDPA_TUNE=1): the test (every
      # candidate against the CPU, counts and timings printed), memcheck on it, a planted bug (the
      # forced candidate ignored), then Llama 1B and GPT-2 124M with it on and off (the tuner's
      # picks printed by KILN_CUDNN_VERBOSE into kiln_*.log).
      gtests sdpatune build/core/core_gpu_tests 'AttentionCuda.EveryTunedCandidateMatchesCpu'
      grep -h "tuned forward" "$out/sdpatune.log"
      memcheck sdpatune build/core/core_gpu_tests 'AttentionCuda.EveryTunedCandidateMatchesCpu'
      plant core/cuda/cudnn_sdpa.cc 's/if (forced >= 0) i = forced % n;/if (forced >= 0) i = 0;/' \
        'AttentionCuda.EveryTunedCandidateMatchesCpu'
      for m in ${SDPATUNE_MODELS-llama g124}; do
        c=benchmarks/e2e/gpt2-124m-bench.textproto
        [[ $m == llama ]] && c=benchmarks/e2e/llama-1b-bench.textproto
        ab_on_off "$m-sdpatune" "$c" KILN_SDPA_TUNE=1 KILN_CUDNN_VERBOSE=1
        grep -h "timed over" "$out/kiln_$m-sdpatune-on.log"
      done
      stamp sdpatune ;;
    ropegrad)
      # RoPE's backward writing q / k gradients in the projections' (B, T, H, D) order and
      # rope_into's other strides: the GPU tests, memcheck on the new ones, a planted bug (the
      # result's T and H strides swapped in the index map), then Llama 1B with
      # KILN_ROPE_GRAD_BTHD=1 and off.
      gtests ropegrad build/core/core_gpu_tests 'RopeCuda.*'
      memcheck ropegrad build/core/core_gpu_tests \
        'RopeCuda.ResultThroughOtherStrides*:RopeCuda.GradientOfAHeadsInner*:RopeCuda.PackedQkv*'
      plant core/ops/rope_index.h 's/const uint32_t dx = hh \* m.sh, dout = hh \* m.oh;/const uint32_t dx = hh * m.sh, dout = hh * m.ot;/' \
        'RopeCuda.ResultThroughOtherStrides*'
      ab_on_off llama-ropegrad benchmarks/e2e/llama-1b-bench.textproto KILN_ROPE_GRAD_BTHD=1
      stamp ropegrad ;;
    ceshared)
      # The classifier's row kernel keeping the row in shared memory (KILN_CE_ROWS=shared): its
      # test (bit-identical to the vector kernel), memcheck, a planted bug (the gradient pass
      # reads the next slot), then GPT-2 124M and Llama 1B with it on and off.
      gtests ceshared build/core/core_gpu_tests 'LinearCrossEntropyCuda.*'
      memcheck ceshared build/core/core_gpu_tests 'LinearCrossEntropyCuda.SharedRow*'
      plant core/ops/cross_entropy.cu 's/          u = row_copy\[j\];/          u = row_copy[j + 1 < nvec ? j + 1 : j];/' \
        'LinearCrossEntropyCuda.SharedRow*'
      ab_on_off g124-ceshared benchmarks/e2e/gpt2-124m-bench.textproto KILN_CE_ROWS=shared
      kiln_run llama-ceshared benchmarks/e2e/llama-1b-bench.textproto "${OFF[@]}" KILN_CE_ROWS=shared
      stamp ceshared ;;
    resid)
      # The residual fusions (both default off until this part has run): their GPU tests and the
      # norm / GEMM tests they touch, memcheck on the new ones, a planted bug (the epilogue's C
      # ignored: beta 0), then Llama 1B and GPT-2 124M with KILN_RESID_EPILOGUE=1,
      # KILN_NORM_SKIP_FUSED=1, both, and neither (first and last: run-to-run spread).
      f='LinearAddCuda.*:MlpGeluCuda.*:NormWithSkipCuda.*:RmsNormCuda.*:AddRmsNormCuda.*:LayerNormCuda.*:AddLayerNormCuda.*:MatmulCuda.*'
      gtests resid_core build/core/core_gpu_tests "$f" 200
      gtests resid_models build/models/models_gpu_tests 'ResidFusionCuda.*' 200
      memcheck resid_core build/core/core_gpu_tests 'LinearAddCuda.*:MlpGeluCuda.*:NormWithSkipCuda.*'
      memcheck resid_models build/models/models_gpu_tests 'ResidFusionCuda.*'
      plant core/ops/matmul.cu '/^bool linear_residual_epilogue/,/^}/s/p.beta = 1.0;/p.beta = 0.0;/' \
        'LinearAddCuda.*:MlpGeluCuda.Res*'
      for m in ${RESID_MODELS-llama gpt2}; do  # RESID_MODELS="" skips the timings
        c=benchmarks/e2e/llama-1b-bench.textproto
        [[ $m == gpt2 ]] && c=benchmarks/e2e/gpt2-124m-bench.textproto
        kiln_run "$m-off" "$c" "${OFF[@]}"; kiln_run "$m-epi" "$c" "${OFF[@]}" KILN_RESID_EPILOGUE=1
        kiln_run "$m-skip" "$c" "${OFF[@]}" KILN_NORM_SKIP_FUSED=1
        kiln_run "$m-both" "$c" "${OFF[@]}" KILN_RESID_EPILOGUE=1 KILN_NORM_SKIP_FUSED=1
        kiln_run "$m-off2" "$c" "${OFF[@]}"
      done
      stamp resid ;;
    fp8f)
      # The fused fp8 paths (core/ops/fp8.*: KILN_FP8_FUSED_DBIAS=1, KILN_FP8_FUSED_MLP=1) and this
      # round's fp8 changes (the descale read in place, KILN_FP8_FAST_ACCUM=1): their tests (and the
      # fp8 / matmul tests they touch), memcheck on the new kernels, four planted bugs the tests
      # must catch (the cast's column sums skip thread row 0; the first GEMM's epilogue without
      # b1; pre saved only when x needs a gradient; the GELU gradient skipped in the backward),
      # kernel_bench's fp8 section, then GPT-2 1.5B (8 x 1024) in fp8 with the switches off /
      # dbias / mlp / both / off again / fast accumulation and in bf16.
      gtests fp8f_core build/core/core_gpu_tests 'Fp8Cuda.*:Fp8FusedCuda.*:MatmulCuda.*:SplitBackward*'
      grep -E "^  |^fp8|within" "$out/fp8f_core.log" | head -60
      gtests fp8f_models build/models/models_gpu_tests 'Fp8*' 120
      grep -E "tiny GPT-2" "$out/fp8f_models.log"
      timeout 30 build/core/core_tests --gtest_brief=1 --gtest_filter='Fp8Colsum*' | grep -E "PASSED|FAILED"
      memcheck fp8f build/core/core_gpu_tests 'Fp8FusedCuda.*:Fp8Cuda.FastAccumulation*'
      plant core/ops/fp8.cu 's/for (int y = 0; y < kTileRows; ++y) t += sums/for (int y = 1; y < kTileRows; ++y) t += sums/' \
        'Fp8FusedCuda.CastColumnSums*:Fp8FusedCuda.LinearBiasGradient*'
      plant core/ops/fp8.cc 's/gelu_gemm(xq, w1q, aligned_bias(b1), &pre)/gelu_gemm(xq, w1q, Tensor(), \&pre)/' \
        'Fp8FusedCuda.MlpGeluAgainst*'
      plant core/ops/fp8.cc 's/nh ? pre : Tensor()/needs(0) ? pre : Tensor()/' 'Fp8FusedCuda.MlpGeluWithSome*'
      plant core/ops/fp8.cc 's/const Tensor dpre = dgelu(g2.gx, saved\[4\], nb1 ? \&gb1 : nullptr);/const Tensor dpre = g2.gx;/' \
        'Fp8Cuda.TinyGpt2WithTheFused*' build/models/models_gpu_tests
      cmake --build build -j16 --target kiln > "$out/plant_build.log" 2>&1
      stamp "fp8f plants"
      timeout 120 build/benchmarks/kernel_bench 20 fp8 2>&1 | tee "$out/fp8f_bench.log" | tail -6
      c=benchmarks/e2e/gpt2-1.5b-bench.textproto
      s8=(-- --set precision.fp8_matmul=true)
      kiln_run fp8f-off "$c" "${OFF[@]}" "${s8[@]}"
      kiln_run fp8f-dbias "$c" "${OFF[@]}" KILN_FP8_FUSED_DBIAS=1 "${s8[@]}"
      kiln_run fp8f-mlp "$c" "${OFF[@]}" KILN_FP8_FUSED_MLP=1 "${s8[@]}"
      kiln_run fp8f-both "$c" "${OFF[@]}" KILN_FP8_FUSED_DBIAS=1 KILN_FP8_FUSED_MLP=1 "${s8[@]}"
      kiln_run fp8f-all "$c" "${OFF[@]}" KILN_FP8_FUSED_DBIAS=1 KILN_FP8_FUSED_MLP=1 KILN_FP8_FAST_ACCUM=1 "${s8[@]}"
      kiln_run fp8f-off2 "$c" "${OFF[@]}" "${s8[@]}"
      kiln_run fp8f-bf16 "$c" "${OFF[@]}"
      if [[ ${FP8F_LONG:-0} == 1 ]]; then  # the issue's 200-step loss curves, both switches on
        l=(--set training.max_steps=200 --set schedule.lr.warmup_steps=20)
        kiln_run fp8f-both-200 "$c" "${OFF[@]}" KILN_FP8_FUSED_DBIAS=1 KILN_FP8_FUSED_MLP=1 -- "${l[@]}" \
          --set precision.fp8_matmul=true
        kiln_run fp8f-bf16-200 "$c" "${OFF[@]}" -- "${l[@]}"
      fi
      stamp fp8f ;;
    fp8delayed)
      # fp8 delayed scaling (KILN_FP8_DELAYED_SCALING=1, core/ops/fp8.h): its tests, memcheck, a
      # planted bug (each use scales by the slot it is reducing into, i.e. zero), then GPT-2 1.5B
      # (8 x 1024) in fp8 with it on and off, bf16, and the 200-step loss curves of fp8 with it on
      # and of bf16.
      gtests fp8delayed build/core/core_gpu_tests 'Fp8DelayedCuda.*:Fp8Cuda.*:Fp8FusedCuda.*'
      memcheck fp8delayed build/core/core_gpu_tests 'Fp8DelayedCuda.*'
      plant core/ops/fp8.cu 's/const float\* in = use == 0 ? m : h + (use - 1) % 3;/const float* in = use == 0 ? m : h + use % 3;/' \
        'Fp8DelayedCuda.*'
      cmake --build build -j16 --target kiln > "$out/plant_build.log" 2>&1
      c=benchmarks/e2e/gpt2-1.5b-bench.textproto
      s8=(--set precision.fp8_matmul=true)
      kiln_run fp8d-on "$c" KILN_FP8_DELAYED_SCALING=1 -- "${s8[@]}"
      kiln_run fp8d-off "$c" -- "${s8[@]}"
      kiln_run fp8d-on2 "$c" KILN_FP8_DELAYED_SCALING=1 -- "${s8[@]}"
      kiln_run fp8d-bf16 "$c"
      l=(--set training.max_steps=200 --set schedule.lr.warmup_steps=20)
      kiln_run fp8d-on-200 "$c" KILN_FP8_DELAYED_SCALING=1 -- "${l[@]}" "${s8[@]}"
      kiln_run fp8d-bf16-200 "$c" -- "${l[@]}"
      stamp fp8delayed ;;
    adamwvec)
      # KILN_ADAMW_VEC (four elements a thread in the AdamW kernel): its test, memcheck, a planted
      # bug (the third lane's update skipped), kernel_bench adamw (both kernels), then Llama 1B and
      # GPT-2 124M with it on / off / on.
      gtests adamwvec build/optim/optim_gpu_tests 'OptimCuda.*'
      memcheck adamwvec build/optim/optim_gpu_tests 'OptimCuda.Vectorized*'
      plant optim/optimizer_cuda.cu 's/adamw_one(pv.z, mv.z, vv.z, gv.z, keep, gscale, s);//' \
        'OptimCuda.Vectorized*' build/optim/optim_gpu_tests
      timeout 120 build/benchmarks/kernel_bench 20 adamw 2>&1 | tee "$out/adamw_bench.log" | tail -6
      [[ ${ADAMWVEC_E2E:-1} == 1 ]] && for m in llama-1b gpt2-124m; do  # over today's defaults
        cfg=benchmarks/e2e/$m-bench.textproto
        kiln_run "$m-vec" "$cfg" KILN_ADAMW_VEC=1; kiln_run "$m-def" "$cfg" KILN_ADAMW_VEC=0
        kiln_run "$m-vec2" "$cfg" KILN_ADAMW_VEC=1
      done
      stamp adamwvec ;;
    dgelu)
      # The MLP's hidden gradient by each path (core/ops/cuda_base_ops.h DGeluPath): its test,
      # kernel_bench's dgelu section, then GPT-2 124M (and 1.5B with DGELU_MODELS) with
      # KILN_DGELU=epilogue against the default kernel.
      gtests dgelu build/core/core_gpu_tests 'MatmulCuda.HiddenGradient*:MatmulCuda.Mlp*'
      timeout 120 build/benchmarks/kernel_bench 20 dgelu 2>&1 | tee "$out/dgelu_bench.log" | tail -9
      for m in ${DGELU_MODELS-g124}; do
        c=benchmarks/e2e/gpt2-124m-bench.textproto
        [[ $m == g1.5b ]] && c=benchmarks/e2e/gpt2-1.5b-bench.textproto
        kiln_run "$m-dgelu-epi" "$c" KILN_DGELU=epilogue; kiln_run "$m-dgelu-kernel" "$c"
        kiln_run "$m-dgelu-epi2" "$c" KILN_DGELU=epilogue
      done
      stamp dgelu ;;
    packed)
      # KILN_PACKED_DIRECT_WGRAD (the packed projections' weight gradients straight into each
      # piece's f32 .grad): tests, memcheck, Llama 1B on / default / on (PACKED_E2E=0: not); its
      # planted bug (every piece reads the first column block) is in plants.
      gtests packed build/core/core_gpu_tests 'PackedWgradCuda.*:MatmulCuda.*'
      gtests packed_models build/models/models_gpu_tests 'PackedWgradCuda.*:FusedProjCuda.*'
      memcheck packed build/core/core_gpu_tests 'PackedWgradCuda.*'
      if [[ ${PACKED_E2E:-1} == 1 ]]; then
        c=benchmarks/e2e/llama-1b-bench.textproto
        kiln_run llama-packed "$c" KILN_PACKED_DIRECT_WGRAD=1; kiln_run llama-packed-off "$c"
        kiln_run llama-packed2 "$c" KILN_PACKED_DIRECT_WGRAD=1
      fi
      stamp packed ;;
    fusedcast)
      # KILN_FUSED_PARAM_CAST (AdamW writes the next step's bf16/f16 parameter copies): tests,
      # memcheck; FUSEDCAST_E2E=1 adds GPT-2 1.5B and Llama 1B on / default / on.
      gtests fusedcast build/optim/optim_gpu_tests 'OptimCuda.*'
      gtests fusedcast_train build/tests/gpu_train_test 'GpuTraining.*'
      gtests fusedcast_core build/core/core_gpu_tests 'MultiCastCuda.*'
      memcheck fusedcast build/optim/optim_gpu_tests 'OptimCuda.AdamWWritesCopies*'
      if [[ ${FUSEDCAST_E2E:-0} == 1 ]]; then
        for m in gpt2-1.5b llama-1b; do
          c=benchmarks/e2e/$m-bench.textproto
          kiln_run "$m-fcast" "$c" KILN_FUSED_PARAM_CAST=1; kiln_run "$m-fcast-off" "$c"
          kiln_run "$m-fcast2" "$c" KILN_FUSED_PARAM_CAST=1
        done
      fi
      stamp fusedcast ;;
    plants)
      # The planted bugs of this round's GPU tests, last (PLANT_NORESTORE=1: no rebuild after each).
      export PLANT_NORESTORE=1
      plant core/ops/matmul.cc 's/gy.narrow(1, off, t.size(0))/gy.narrow(1, 0, t.size(0))/' \
        'PackedWgradCuda.*' build/models/models_gpu_tests
      for p in ${PLANTS-1_h_from_old_p 2_h_alignment_unchecked 3_wrote_flag_ignores_unupdated}; do
        plant_patch tests/mutation/gpu/$p.patch 'OptimCuda.AdamWWritesCopies*' build/optim/optim_gpu_tests
      done
      plant_patch tests/mutation/gpu/4_cache_current_after_restore.patch 'GpuTraining.FusedParamCast*' \
        build/tests/gpu_train_test
      stamp plants ;;
    round7)
      # This tree's defaults, a binary carried in as gpucarry/kiln-base (run with KILN_ADAMW_VEC=1)
      # and this tree with the opt-in switches on (R7_ON), for ROUND7_MODELS (default g124 g1.5b
      # llama).
      for m in ${ROUND7_MODELS-g124 g1.5b llama}; do
        c=$(cfg_of "$m") on="KILN_FUSED_PARAM_CAST=1"
        [[ $m == llama ]] && on="$on KILN_PACKED_DIRECT_WGRAD=1"
        kiln_run "$m-new" "$c"
        kiln_bin=gpucarry/kiln-base kiln_run "$m-base" "$c" KILN_ADAMW_VEC=1
        kiln_run "$m-on" "$c" ${R7_ON:-$on}
        [[ ${R7_REPEAT:-0} == 1 ]] && kiln_run "$m-new2" "$c"
      done
      stamp round7 ;;
    r7checks)
      # memcheck on the fused parameter cast's kernel test; RMSNorm's op tests three times (one hung
      # under ctest -j4 once, 2026-12-06, not reproduced then).
      memcheck fusedcast build/optim/optim_gpu_tests 'OptimCuda.AdamWWritesCopies*:OptimCuda.Vectorized*'
      timeout 120 build/core/core_gpu_tests --gtest_filter='RmsNormCuda.*' --gtest_repeat=3 \
        --gtest_brief=1 > "$out/rms_repeat.log" 2>&1
      stamp "RmsNormCuda x3: exit $?"; grep -cE '^\[  PASSED' "$out/rms_repeat.log" ;;
    overlap)
      # KILN_OVERLAP_OPTIM (AdamW on a side stream, the next forward waiting per group): its tests
      # from carried binaries (gpucarry/gpu_overlap_test, gpucarry/optim_gpu_tests) when present,
      # then each of OVERLAP_MODELS (default g124 g1.5b llama) on / default.
      for b in gpu_overlap_test optim_gpu_tests; do
        [[ -x gpucarry/$b ]] && gtests "overlap_$b" gpucarry/$b 'GpuOverlapOptim.*:OptimCuda.*'
      done
      for m in ${OVERLAP_MODELS-g124 g1.5b llama}; do
        c=$(cfg_of "$m")
        kiln_run "$m-overlap" "$c" KILN_OVERLAP_OPTIM=1; kiln_run "$m-default" "$c"
        [[ ${OVERLAP_PRIO:-1} == 1 ]] &&
          kiln_run "$m-overlap-prio" "$c" KILN_OVERLAP_OPTIM=1 KILN_COMPUTE_PRIORITY=1
      done
      stamp overlap ;;
    overlapcheck)
      # What KILN_OVERLAP_OPTIM still needs before it can be a default: memcheck on its tests and
      # its six planted bugs (tests/mutation/gpu/5_..10_, each must fail the named tests).
      # (memcheck runs on copies of the binaries, in the background, while the plants rebuild them)
      wait_bg_build
      cp build/optim/optim_gpu_tests /tmp/mc_optim && cp build/tests/gpu_overlap_test /tmp/mc_overlap
      (memcheck overlap /tmp/mc_optim 'OptimCuda.GroupedStep*'
       memcheck overlap_train /tmp/mc_overlap 'GpuOverlapOptim.Gpt2*' 400) &
      mc=$!
      export PLANT_NORESTORE=1
      for p in 5_no_wait_in_lookup 6_no_join_before_save 7_no_join_before_eval 9_event_before_launch \
               10_waited_not_reset 8_kernel_keeps_grads; do
        plant_patch tests/mutation/gpu/$p.patch 'GpuOverlapOptim.*' build/tests/gpu_overlap_test
      done
      plant_patch tests/mutation/gpu/8_kernel_keeps_grads.patch 'OptimCuda.GroupedStep*' \
        build/optim/optim_gpu_tests
      for p in ${OVERLAPCHECK_MORE:-}; do  # e.g. the AdamW copy plants 2_.. 3_ not yet seen failing
        plant_patch tests/mutation/gpu/$p.patch 'OptimCuda.AdamWWritesCopies*' build/optim/optim_gpu_tests
      done
      wait "$mc"
      stamp overlapcheck ;;
    r9)
      # The ninth round: the warp-group norm backward (default for wide rows; KILN_NORM_KERNEL=warp:
      # before), the 16-byte column sums of bias gradients (KILN_COLSUM_VEC=0: before), the
      # 16-byte strided copy (KILN_COPY_VEC=0: before). kernel_bench (build/bin/kernel_bench,
      # carried) first, then kiln per model (R9_MODELS), each switch off once.
      kb=build/bin/kernel_bench
      if [[ ${R9_KB:-1} == 1 ]]; then
        for v in auto warp; do
          KILN_NORM_KERNEL=$v timeout 120 $kb 20 norm > "$out/kb_norm_$v.log" 2>&1
          stamp "kernel_bench norm $v: $?"; grep -E "rms_norm fwd\+bwd|layer_norm fwd\+bwd" "$out/kb_norm_$v.log"
        done
        for v in 1 0; do
          KILN_COLSUM_VEC=$v timeout 120 $kb 50 reduce > "$out/kb_reduce_$v.log" 2>&1
          stamp "kernel_bench reduce colsum $v: $?"; grep -E "sum_to" "$out/kb_reduce_$v.log"
        done
      fi
      for m in ${R9_MODELS-g124 llama g1.5b}; do
        c=$(cfg_of "$m")
        kiln_run "$m-def" "$c"
        [[ $m != g124 && ${R9_LITE:-0} == 0 ]] && kiln_run "$m-warp" "$c" KILN_NORM_KERNEL=warp
        [[ $m == g124 || ( $m == g1.5b && ${R9_LITE:-0} == 0 ) ]] &&
          kiln_run "$m-nocolsum" "$c" KILN_COLSUM_VEC=0
        [[ $m == llama && ${R9_LITE:-0} == 0 ]] && kiln_run "$m-nocopyvec" "$c" KILN_COPY_VEC=0
        [[ ${R9_CE:-1} == 1 ]] && kiln_run "$m-noce" "$c" KILN_CE_DIRECT_WGRAD=0
        [[ ${R9_SMALL:-0} == 1 ]] && kiln_run "$m-nosmall" "$c" KILN_NORM_DIRECT_GRAD=0 KILN_BIAS_DIRECT_GRAD=0
        [[ ${R9_REPEAT:-0} == 1 ]] && kiln_run "$m-def2" "$c"
      done
      stamp r9 ;;
    r9check)
      # This round's GPU tests and memcheck; waits for the background build (core_gpu_tests).
      wait_bg_build
      gtests r9_tests build/core/core_gpu_tests \
        'RmsNorm*:LayerNorm*:AddRmsNorm*:AddLayerNorm*:NormWithSkip*:ReduceCuda.*:CudaRuntime.*:RopeCuda.*:ViewCuda.*:MatmulCuda.*:LinearAddCuda.*:MlpGeluCuda.*:LinearCrossEntropyCuda.*:CrossEntropyCuda.*:NormCuda.*'
      memcheck r9 build/core/core_gpu_tests \
        'RmsNormCuda.WarpAndBlock*:LayerNormCuda.WarpAndBlock*:ReduceCuda.ColumnSums*:CudaRuntime.ColumnBlock*:LinearCrossEntropyCuda.WeightGradientGoes*:NormCuda.*:MatmulCuda.BiasGradients*' 400
      stamp r9check ;;
    r9plants)
      # This round's planted bugs (15_ to 22_; R9_PLANTS picks), each against the test that must
      # catch it; last (PLANT_NORESTORE=1).
      export PLANT_NORESTORE=1
      for p in ${R9_PLANTS-15 16 17 18 19 20 21 22}; do
        case $p in
          15) f='RmsNormCuda.WarpAndBlock*:LayerNormCuda.WarpAndBlock*' ;;
          16) f='ReduceCuda.ColumnSums*' ;;
          17) f='CudaRuntime.ColumnBlock*' ;;
          18 | 19) f='LinearCrossEntropyCuda.WeightGradientGoes*' ;;
          20 | 21) f='NormCuda.*' ;;
          22) f='MatmulCuda.BiasGradients*' ;;
        esac
        plant_patch tests/mutation/gpu/${p}_*.patch "$f" build/core/core_gpu_tests
      done
      stamp r9plants ;;
    r10)
      # The tenth round, fp8 at GPT-2 1.5B (8 x 1024): bf16, fp8 for 200 steps (the loss curve,
      # against a bf16-200 run of the bf16 part), fp8 with this round's switches off
      # (KILN_FP8_DIRECT_WGRAD, KILN_FP8_RESID_EPILOGUE), then bf16 and fp8 again.
      c=$(cfg_of g1.5b)
      kiln_run bf16 "$c"
      kiln_run fp8-200 "$c" -- --set training.max_steps=200 --set schedule.lr.warmup_steps=20 \
        --set precision.fp8_matmul=true
      kiln_run fp8-old "$c" KILN_FP8_DIRECT_WGRAD=0 KILN_FP8_RESID_EPILOGUE=0 -- \
        --set precision.fp8_matmul=true
      kiln_run bf16-2 "$c"
      [[ ${R10_REPEAT:-1} == 1 ]] && kiln_run fp8-2 "$c" -- --set precision.fp8_matmul=true
      stamp r10 ;;
    r10check)
      # Its GPU tests (every fp8 test), memcheck on the new ones, and planted bugs 23_ and 24_
      # from binaries built elsewhere (build/plants.tar.xz: p23, p24) when carried; waits for the
      # background build.
      wait_bg_build
      gtests r10_tests build/core/core_gpu_tests 'Fp8*'
      memcheck r10 build/core/core_gpu_tests 'Fp8DirectCuda.*' 200
      carried_plant 23 'Fp8DirectCuda.*Weight*'
      carried_plant 24 'Fp8DirectCuda.MlpResidual*'
      stamp r10check ;;
    r11)
      # The eleventh round's switches on Llama 1B (R11_MODELS picks): this tree, both switched off
      # (AdamW launches cut at 320 blocks, the packed gate / up weight GEMMs one per piece: the
      # tenth round's tree but for the gradient arena), R11_EACH=1 each off alone, R11_OPTIN=1 the
      # side stream at high priority and 16 GEMM candidates tuned, this tree again; then PyTorch.
      for m in ${R11_MODELS-llama}; do
        c=$(cfg_of "$m")
        kiln_run "$m-new" "$c"
        kiln_run "$m-old" "$c" KILN_ADAMW_LAUNCH_BLOCKS=320 KILN_PACKED_WGRAD_BATCHED=0
        if [[ ${R11_EACH:-0} == 1 ]]; then
          kiln_run "$m-adamw320" "$c" KILN_ADAMW_LAUNCH_BLOCKS=320
          kiln_run "$m-nobatch" "$c" KILN_PACKED_WGRAD_BATCHED=0
        fi
        if [[ ${R11_OPTIN:-0} == 1 ]]; then
          kiln_run "$m-sideprio" "$c" KILN_SIDE_PRIORITY=1
          kiln_run "$m-tune16" "$c" KILN_GEMM_TUNE_CANDIDATES=16
        fi
        kiln_run "$m-new2" "$c"
        [[ $m == llama ]] && timeout 240 python3 benchmarks/e2e/pytorch_llama.py > "$out/pytorch_llama.log" 2>&1
        stamp "pytorch $m: $(grep -hE '^pytorch' "$out/pytorch_$m.log" 2>/dev/null | tail -1)"
      done
      stamp r11 ;;
    r11q)
      # The eleventh round in little device time, from binaries built elsewhere (build/carry
      # holds kiln and core_gpu_tests / optim_gpu_tests at /tmp/c): Llama 1B this tree, both
      # switches off, the new tests and planted bugs 25_ / 26_, PyTorch, this tree again.
      c=$(cfg_of llama)
      kiln_run llama-new "$c"
      kiln_run llama-old "$c" KILN_ADAMW_LAUNCH_BLOCKS=320 KILN_PACKED_WGRAD_BATCHED=0
      gtests r11_packed /tmp/c/core_gpu_tests 'PackedWgradCuda.*'
      gtests r11_optim /tmp/c/optim_gpu_tests 'OptimCuda.LaunchBlockCap*:OptimCuda.AdamWMatchesCpuOverSteps:OptimCuda.GradNorm*:OptimCuda.GroupedStep*'
      carried_plant 25 'PackedWgradCuda.EqualPieces*'
      carried_plant 26 'OptimCuda.LaunchBlockCap*'
      timeout 240 python3 benchmarks/e2e/pytorch_llama.py > "$out/pytorch_llama.log" 2>&1
      stamp "pytorch: $(grep -hE '^pytorch' "$out/pytorch_llama.log" | tail -1)"
      kiln_run llama-new2 "$c"
      stamp r11q ;;
    r11check)
      # Its GPU tests, memcheck on the new ones, and planted bugs 25_ and 26_ from binaries built
      # elsewhere (build/plants.tar.xz: p25 core_gpu_tests, p26 optim_gpu_tests); waits for the
      # background build.
      wait_bg_build
      gtests r11_packed build/core/core_gpu_tests 'PackedWgradCuda.*'
      gtests r11_optim build/optim/optim_gpu_tests '*'
      memcheck r11_packed build/core/core_gpu_tests 'PackedWgradCuda.EqualPieces*' 200
      memcheck r11_optim build/optim/optim_gpu_tests 'OptimCuda.LaunchBlockCap*' 100
      carried_plant 25 'PackedWgradCuda.EqualPieces*'
      carried_plant 26 'OptimCuda.LaunchBlockCap*'
      stamp r11check ;;
    timeline)
      # A CUPTI timeline (benchmarks/profile/cupti_trace.cc, injected by the driver) of each of
      # TIMELINE_MODELS (default llama g124) with this tree's defaults, and its per-step account
      # of busy time and gaps (benchmarks/profile/timeline.py); needs
      # build/benchmarks/libkiln_cupti_trace.so (built with BUILD_TARGETS, or carried).
      for m in ${TIMELINE_MODELS-llama g124}; do
        kiln_run "$m-traced" "$(cfg_of "$m")" \
          CUDA_INJECTION64_PATH="$PWD/build/benchmarks/libkiln_cupti_trace.so" \
          KILN_TRACE_OUT="$out/trace_$m.csv"
        python3 benchmarks/profile/timeline.py "$out/trace_$m.csv" > "$out/timeline_$m.txt" 2>&1
        stamp "timeline $m: exit $?"; head -45 "$out/timeline_$m.txt"
        gzip -f "$out/trace_$m.csv"
      done ;;
    lazyab)
      # KILN_LAZY_ZERO_GRAD (zero_grad marks stage 0's gradients stale; the weight GEMMs write them
      # with beta = 0): each of LAZY_MODELS (default g124 g1.5b llama) on / off / on, and Llama
      # with KILN_PACKED_DIRECT_WGRAD=1 on top unless LAZY_PACKED=0.
      for m in ${LAZY_MODELS-g124 g1.5b llama}; do
        c=$(cfg_of "$m")
        kiln_run "$m-lazy" "$c"; kiln_run "$m-zeroing" "$c" KILN_LAZY_ZERO_GRAD=0
        [[ ${LAZY_REPEAT:-1} == 1 ]] && kiln_run "$m-lazy2" "$c"
        [[ $m == llama && ${LAZY_PACKED:-1} == 1 ]] && kiln_run "$m-lazy-packed" "$c" KILN_PACKED_DIRECT_WGRAD=1
      done
      stamp lazyab ;;
    lazycheck)
      # Its GPU tests, memcheck and planted bugs (11_, 12_); waits for the background build
      # (core_gpu_tests gpu_overlap_test optim_gpu_tests gpu_train_test models_gpu_tests).
      wait_bg_build
      gtests lazy_matmul build/core/core_gpu_tests 'MatmulCuda.WeightGradients*:MatmulCuda.Mlp*:PackedWgradCuda.*'
      gtests lazy_overlap build/tests/gpu_overlap_test '*' 300
      gtests lazy_optim build/optim/optim_gpu_tests 'OptimCuda.*'
      gtests lazy_models build/models/models_gpu_tests '*' 300
      gtests lazy_train build/tests/gpu_train_test '*' 300
      memcheck lazy build/core/core_gpu_tests 'MatmulCuda.WeightGradientsWriteOverAStaleGrad'
      export PLANT_NORESTORE=1
      plant_patch tests/mutation/gpu/11_beta_one_over_stale.patch 'MatmulCuda.WeightGradientsWrite*' \
        build/core/core_gpu_tests
      plant_patch tests/mutation/gpu/12_side_step_never_zeroes.patch \
        'GpuOverlapOptim.Gpt2WithZeroed*' build/tests/gpu_overlap_test
      stamp lazycheck ;;
    embab)
      # KILN_EMB_DIRECT_GRAD and KILN_PACKED_DIRECT_WGRAD against today's defaults: GPT-2 124M and
      # 1.5B default / emb off / default, Llama default / packed on / default / packed on.
      for m in ${EMB_MODELS-g124 g1.5b}; do
        c=$(cfg_of "$m")
        kiln_run "$m-def" "$c"; kiln_run "$m-emboff" "$c" KILN_EMB_DIRECT_GRAD=0
        kiln_run "$m-def2" "$c"
      done
      if [[ ${EMB_LLAMA:-1} == 1 ]]; then
        c=$(cfg_of llama)
        kiln_run llama-def "$c"; kiln_run llama-packed "$c" KILN_PACKED_DIRECT_WGRAD=1
        kiln_run llama-def2 "$c"; kiln_run llama-packed2 "$c" KILN_PACKED_DIRECT_WGRAD=1
        kiln_run llama-emboff "$c" KILN_EMB_DIRECT_GRAD=0
      fi
      stamp embab ;;
    embcheck)
      # The direct embedding gradient's GPU test, ctest -L gpu, memcheck and planted bugs (13_, 14_)
      # after the background build (waits for it).
      wait_bg_build
      gtests emb build/core/core_gpu_tests 'EmbeddingCuda.*'
      timeout 300 ctest --test-dir build -L gpu -j4 --output-on-failure > "$out/ctest_gpu.log" 2>&1
      stamp "ctest -L gpu exit $?"; grep -E "tests passed|\*\*\*|Failed" "$out/ctest_gpu.log" | head -20
      memcheck emb build/core/core_gpu_tests 'EmbeddingCuda.Backward*'
      export PLANT_NORESTORE=1
      for p in 13_emb_direct_overwrites_grad 14_emb_stale_rows_not_zeroed; do
        plant_patch tests/mutation/gpu/$p.patch 'EmbeddingCuda.Backward*' build/core/core_gpu_tests
      done
      stamp embcheck ;;
    allon)
      # Every opt-in path of this round on together (once their tests have passed: fuse, ropegrad,
      # ceshared, resid) against all off, then PyTorch, for the issue's three bf16 rows: Llama 1B
      # (8 x 2048), GPT-2 124M (32 x 1024), GPT-2 1.5B (8 x 1024). ALLON_MODELS picks (default all).
      # (since 2026-12-06 those are the defaults: "allon" runs the defaults, "alloff" sets OFF)
      for m in ${ALLON_MODELS-llama g124 g1.5b}; do allon_model "$m"; done ;;
    close17)
      ALLON_NOOFF=1 ALLON_QUICK=1
      allon_model g124; allon_model g1.5b; run_ctest; allon_model llama ;;
    fp8pair)
      c=$(cfg_of g1.5b)
      long=(--set training.max_steps=200 --set schedule.lr.warmup_steps=20)
      kiln_run bf16-200 "$c" -- "${long[@]}"
      kiln_run fp8-200 "$c" -- "${long[@]}" --set precision.fp8_matmul=true
      kiln_run fp8 "$c" -- --set precision.fp8_matmul=true
      kiln_run bf16 "$c" ;;
    sanitize)
      timeout 70 compute-sanitizer --tool memcheck --error-exitcode 9 build/core/core_gpu_tests \
        --gtest_filter="${SANITIZE_FILTER:-*PackedQkv*:*MlpGelu*:*LinearCrossEntropy*:*StridedInputs*:ElementwiseCuda.*}" --gtest_brief=1 > "$out/memcheck.log" 2>&1
      stamp "memcheck exit $?: $(grep -E 'ERROR SUMMARY' "$out/memcheck.log" | tail -1)" ;;
  esac
done
stamp done
