#!/usr/bin/env bash
# A rank that dies (kill -9) or hangs must end the whole job within the collective timeout, with a
# clear message and no processes left behind. LAUNCHER is mpirun's path, or local:PATH for
# scripts/launch_local.sh (no MPI: the file communicator).
# Usage: fault_test.sh LAUNCHER KILN kill|hang [--set field=value ...]
# (pipeline parallel: --set parallel.pp=2, so that the surviving stage waits on a receive.)
set -uo pipefail
launcher=$1 kiln=$2 action=$3
shift 3
extra=("$@")
if [[ $launcher == local:* ]]; then
  run=(bash "${launcher#local:}" 2)
else
  run=("$launcher" -np 2 --oversubscribe --bind-to none)
fi
dir=$(mktemp -d)
cat >"$dir/cfg.textproto" <<'CFG'
model { preset: "gpt2-tiny" vocab_size: 96 max_seq_len: 32 n_layer: 2 n_head: 2 d_model: 32 }
data { synthetic: true seq_len: 16 }
training { global_batch_size: 8 max_steps: 100000 }
parallel { micro_batch_size: 2 timeout_s: 10 }
eval { batches: 1 sample_tokens: 0 }
logging { tensorboard: false log_every: 1 }
device: CPU
CFG
start=$(date +%s)
KILN_FAULT_INJECT="1:5:$action" timeout 240 "${run[@]}" \
  "$kiln" train --config "$dir/cfg.textproto" --set logging.run_dir="$dir/run" ${extra[@]+"${extra[@]}"} \
  >"$dir/out" 2>&1
rc=$?
elapsed=$(( $(date +%s) - start ))
tail -20 "$dir/out"
echo "fault_test: $action: ${run[0]} exit status $rc after ${elapsed}s"
fail=0
[ $rc -ne 0 ] || { echo "FAIL: the job succeeded despite the fault"; fail=1; }
[ $rc -ne 124 ] || { echo "FAIL: the job hung (killed by timeout 240)"; fail=1; }
[ $elapsed -le 60 ] || { echo "FAIL: took ${elapsed}s, the collective timeout is 10s"; fail=1; }
# The fault must have fired where it was asked to, after training began: an early crash (at init,
# or a fault firing at the wrong step) must not pass. The log counts steps from 1, the injection
# from 0: rank 0 logged "step 5/" (0-based step 4) before rank 1 hit the start of step 5, and can
# never log "step 6/" (that needs rank 1's gradients).
grep -q "fault injection: rank 1 $action at step 5" "$dir/out" ||
  { echo "FAIL: the injected fault did not fire at step 5"; fail=1; }
grep -qE "step +5/" "$dir/out" || { echo "FAIL: no 'step 5/' line: the job died before training"; fail=1; }
grep -qE "step +6/" "$dir/out" && { echo "FAIL: step 6 logged after the fault at step 5"; fail=1; }
if [ "$action" = hang ]; then
  grep -q "did not complete within 10 s" "$dir/out" || { echo "FAIL: no timeout message"; fail=1; }
fi
sleep 1
if pgrep -f "$dir/cfg.textproto" >/dev/null; then
  echo "FAIL: orphan processes:"; pgrep -af "$dir/cfg.textproto"; pkill -9 -f "$dir/cfg.textproto"; fail=1
fi
rm -rf "$dir"
exit $fail
