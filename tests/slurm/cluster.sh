#!/usr/bin/env bash
# A private one-node Slurm cluster for tests, entirely under DIR: munged with its own key and
# socket, slurmctld and slurmd on 127.0.0.1 with their state, spool, logs and pid files in DIR.
# Nothing outside DIR is written; the system's Slurm and munge (if any) are not touched.
# Needs root (slurmd starts jobs as their user) and slurm-wlm + munge (scripts/install_deps.sh).
#   cluster.sh start DIR [pmix|none]   starts the daemons and waits until the node is idle; prints
#                                      `export SLURM_CONF=DIR/slurm.conf` for the client commands
#   cluster.sh stop DIR                stops the daemons this script started (by their pid files)
set -uo pipefail
cmd=${1:-}
dir=${2:-}
if [ -z "$cmd" ] || [ -z "$dir" ]; then
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
dir=$(realpath -m "$dir")

stop_pid() {  # pid file, name
  [ -f "$1" ] || return 0
  local pid
  pid=$(cat "$1" 2>/dev/null)
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || { rm -f "$1"; return 0; }
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$1"; return 0; }
    sleep 0.1
  done
  echo "cluster: $2 (pid $pid) ignored SIGTERM; SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null
  rm -f "$1"
}

if [ "$cmd" = stop ]; then
  # Jobs first (their steps belong to slurmd's children), then the daemons.
  if [ -f "$dir/slurm.conf" ] && [ -f "$dir/slurmctld.pid" ]; then
    SLURM_CONF=$dir/slurm.conf timeout 10 scancel --full --quiet --user="$(id -un)" 2>/dev/null
    sleep 1
  fi
  stop_pid "$dir/slurmd.pid" slurmd
  stop_pid "$dir/slurmctld.pid" slurmctld
  stop_pid "$dir/munge/munged.pid" munged
  exit 0
fi
[ "$cmd" = start ] || { echo "cluster: unknown command '$cmd'" >&2; exit 2; }
mpi=${3:-none}
if [ "$(id -u)" -ne 0 ]; then
  echo "cluster: needs root (slurmd runs jobs as their owner)" >&2
  exit 77
fi
for p in munged slurmctld slurmd sbatch scontrol; do
  command -v "$p" >/dev/null || { echo "cluster: $p not found: run scripts/install_deps.sh" >&2; exit 77; }
done
mkdir -p "$dir"/{munge,state,spool,log} || exit 1
chmod 700 "$dir/munge"

# munge: a fresh key, our own socket.
sock=$dir/munge/munge.socket
if ! [ -f "$dir/munge/munge.key" ]; then
  head -c 1024 /dev/urandom >"$dir/munge/munge.key" && chmod 400 "$dir/munge/munge.key"
fi
munged --force --socket="$sock" --key-file="$dir/munge/munge.key" \
  --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" \
  --seed-file="$dir/munge/munged.seed" || { echo "cluster: munged failed:" >&2; cat "$dir/log/munged.log" >&2; exit 1; }
munge --socket="$sock" -n | unmunge --socket="$sock" >/dev/null ||
  { echo "cluster: munge round trip failed" >&2; exit 1; }

# Two free TCP ports on 127.0.0.1.
read -r port_ctld port_d < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
host=$(hostname -s)
cpus=$(nproc)
((cpus < 4)) && cpus=4  # room for a 2-task job beside a 1-task one on a small CI machine
cat >"$dir/slurm.conf" <<CONF
# Written by tests/slurm/cluster.sh: a private one-node test cluster.
ClusterName=kilntest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port_ctld
SlurmdPort=$port_d
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=$mpi
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=10
MinJobAge=3600
InactiveLimit=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$dir/slurm.conf
slurmctld -c -f "$SLURM_CONF" || { echo "cluster: slurmctld failed:" >&2; tail -20 "$dir/log/slurmctld.log" >&2; exit 1; }
slurmd -f "$SLURM_CONF" -N "$host" || { echo "cluster: slurmd failed:" >&2; tail -20 "$dir/log/slurmd.log" >&2; exit 1; }
for _ in $(seq 100); do
  state=$(sinfo -h -N -o %t 2>/dev/null | head -1)
  [ "$state" = idle ] && { echo "export SLURM_CONF=$SLURM_CONF"; exit 0; }
  sleep 0.3
done
echo "cluster: the node did not become idle (state '${state:-?}'):" >&2
tail -20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2
exit 1
