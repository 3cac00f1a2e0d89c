#!/usr/bin/env bash
# Starts NP processes of one kiln run on this machine without MPI: each gets KILN_RANK,
# KILN_WORLD_SIZE, KILN_LOCAL_RANK and KILN_LOCAL_WORLD_SIZE, and they meet through files
# (KILN_RENDEZVOUS=file:DIR, KILN_RUN_ID; parallel/file_comm.h). On GPUs each rank takes the GPU
# of its local rank and NCCL's id travels through those files. When a rank fails the others are
# stopped (TERM, then KILL after 10 s): no process outlives the job. The exit status is the first
# failing rank's, else 0.
# Usage: scripts/launch_local.sh NP COMMAND [ARGS...]
#   e.g. scripts/launch_local.sh 2 build/bin/kiln train --config configs/tiny.textproto
# KILN_RENDEZVOUS_DIR picks the directory (default: a new temporary one, removed at the end).
set -uo pipefail
if [ $# -lt 2 ] || [ "$1" = --help ] || ! [[ $1 =~ ^[1-9][0-9]*$ ]]; then
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  [ "${1:-}" = --help ] && exit 0 || exit 2
fi
np=$1
shift
own_dir=0
dir=${KILN_RENDEZVOUS_DIR:-}
if [ -z "$dir" ]; then
  dir=$(mktemp -d -t kiln-rendezvous.XXXXXX) || exit 1
  own_dir=1
fi
id=${KILN_RUN_ID:-local-$$-$(date +%s%N)}
pids=()
for ((r = 0; r < np; ++r)); do
  KILN_RANK=$r KILN_WORLD_SIZE=$np KILN_LOCAL_RANK=$r KILN_LOCAL_WORLD_SIZE=$np \
    KILN_RENDEZVOUS="file:$dir" KILN_RUN_ID="$id" "$@" &
  pids+=($!)
done
stop_all() {
  kill -TERM "${pids[@]}" 2>/dev/null
  for _ in $(seq 100); do
    kill -0 "${pids[@]}" 2>/dev/null || return
    sleep 0.1
  done
  kill -KILL "${pids[@]}" 2>/dev/null
}
trap 'stop_all; exit 130' INT TERM
status=0
for ((left = np; left > 0; --left)); do
  wait -n -p done_pid
  rc=$?
  if [ $rc -ne 0 ] && [ $status -eq 0 ]; then
    status=$rc
    for ((r = 0; r < np; ++r)); do [ "${pids[$r]}" = "$done_pid" ] && failed=$r; done
    echo "launch_local: rank ${failed:-?} exited with status $rc; stopping the other ranks" >&2
    stop_all
  fi
done
[ $own_dir -eq 1 ] && rm -rf "$dir"
exit $status
