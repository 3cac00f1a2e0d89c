#!/usr/bin/env python3
"""Checkpoint durability: the writer makes every file and directory durable before it publishes.

Runs a tiny `kiln train` that saves twice under
  strace -f -y -s 4096 -e trace=openat,fsync,fdatasync,rename,renameat,renameat2
(-y prints each file descriptor with its path) and checks, for every save, in the order the calls
were made:
  1. each file of the published step_N directory was fsynced (fsync/fdatasync on a descriptor of
     .tmp_step_N/FILE) before .tmp_step_N was renamed to step_N;
  2. the directory .tmp_step_N itself was fsynced before that rename;
  3. the checkpoint directory was fsynced after the rename and before `latest` moved;
  4. latest.tmp was fsynced before it was renamed to `latest`, and the directory after that.
Removing either fsync from launch/checkpoint.cc (Out::finish's, or fsync_dir(tmp)) fails 1 or 2.

Usage: durability_test.py --kiln PATH [--strace PATH]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

CONFIG = """
model { preset: "gpt2-tiny" vocab_size: 96 max_seq_len: 32 n_layer: 2 n_head: 2 d_model: 32 }
data { synthetic: true seq_len: 16 }
training { global_batch_size: 4 max_steps: 2 seed: 3 }
parallel { micro_batch_size: 4 }
checkpoint { every_n_steps: 1 keep_last: 10 save_at_end: false }
eval { batches: 1 every_n_steps: 0 sample_tokens: 0 }
logging { tensorboard: false }
device: CPU
"""

CALL = re.compile(r"^(?:\[pid\s+\d+\]\s+|\d+\s+)?(\w+)\((.*)$")
FD_PATH = re.compile(r"^-?\d+<([^>]*)>")
QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def parse(trace_path):
    """(name, args) of each call in the order they were made (unfinished lines count)."""
    events = []
    with open(trace_path) as f:
        for line in f:
            if "<... " in line and "resumed>" in line:
                continue  # the call was recorded at its start
            m = CALL.match(line.strip())
            if not m:
                continue
            name, rest = m.group(1), m.group(2)
            if name in ("fsync", "fdatasync"):
                p = FD_PATH.match(rest)
                if p:
                    events.append((name, os.path.normpath(p.group(1))))
            elif name in ("rename", "renameat", "renameat2"):
                q = QUOTED.findall(rest)
                if len(q) >= 2:
                    events.append(("rename", (q[0], q[1])))
    return events


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--strace", default=shutil.which("strace") or "strace")
    args = ap.parse_args()
    if not os.path.exists(args.strace):
        print("strace not found: install it (scripts/install_deps.sh)")
        return 1
    tmp = tempfile.mkdtemp(prefix="kiln_durability_")
    failures = []

    def check(cond, what):
        if not cond:
            failures.append(what)
            print("FAIL:", what, flush=True)

    try:
        cfg = os.path.join(tmp, "cfg.textproto")
        with open(cfg, "w") as f:
            f.write(CONFIG)
        run = os.path.join(tmp, "run")
        trace = os.path.join(tmp, "trace.txt")
        env = dict(os.environ, KILN_NUM_THREADS="1")
        cmd = [args.strace, "-f", "-y", "-s", "4096", "-o", trace, "-e",
               "trace=openat,fsync,fdatasync,rename,renameat,renameat2",
               args.kiln, "train", "--config", cfg, "--set", "logging.run_dir=" + run]
        p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=300)
        if p.returncode != 0:
            print(p.stdout[-3000:])
            print("FAIL: kiln train under strace exited", p.returncode)
            return 1
        events = parse(trace)
        ckpt = None
        saves = []
        for i, (name, a) in enumerate(events):
            if name == "rename" and os.path.basename(a[0]).startswith(".tmp_step_"):
                saves.append(i)
                ckpt = os.path.dirname(os.path.normpath(a[0]))
        check(len(saves) == 2, f"expected 2 saves (steps 1 and 2), saw {len(saves)} renames")
        for i in saves:
            src, dst = (os.path.normpath(x) for x in events[i][1])
            step = os.path.basename(dst)
            synced_before = {a for n, a in events[:i] if n in ("fsync", "fdatasync")}
            files = sorted(f for f in os.listdir(dst) if os.path.isfile(os.path.join(dst, f)))
            check(files, f"{step}: no files in {dst}")
            for f in files:
                check(os.path.join(src, f) in synced_before,
                      f"{step}: {f} was not fsynced before the rename to {step}")
            check(src in synced_before,
                  f"{step}: the directory {os.path.basename(src)} was not fsynced before the rename")
            # After the rename: the parent directory, then latest.tmp, its rename, the parent again.
            later = events[i + 1:]
            j_latest = next((k for k, (n, a) in enumerate(later)
                             if n == "rename" and os.path.basename(a[1]) == "latest"), None)
            check(j_latest is not None, f"{step}: `latest` was never renamed into place")
            if j_latest is None:
                continue
            between = later[:j_latest]
            check(("fsync", ckpt) in between or ("fdatasync", ckpt) in between,
                  f"{step}: the checkpoint directory was not fsynced between the rename and `latest`")
            check(any(n in ("fsync", "fdatasync") and os.path.basename(a) == "latest.tmp"
                      for n, a in between), f"{step}: latest.tmp was not fsynced before its rename")
            after = later[j_latest + 1:]
            nxt = next((k for k, (n, a) in enumerate(after) if n == "rename"), len(after))
            check(any(n in ("fsync", "fdatasync") and a == ckpt for n, a in after[:nxt]),
                  f"{step}: the checkpoint directory was not fsynced after `latest` moved")
            print(f"{step}: {len(files)} files fsynced, then the directory, before the rename; "
                  f"then the parent, latest.tmp, rename, the parent", flush=True)
    finally:
        if not failures:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("files kept in", tmp)
    print(f"durability: {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
