#!/usr/bin/env python3
"""Nothing lost, nothing silently wrong (issue 15), with real `kiln` processes. One case per run:

  nonfinite   optimizer.lr=1e6: steps with a non-finite loss or gradient norm are skipped and
              logged, training.max_non_finite_steps in a row stop the run (exit 4), every checkpoint
              left verifies (keep_last never deleted the last finite one); under mpirun -np 2 a NaN
              loss on rank 1 only makes both ranks skip and stop together.
  lock        a second `kiln train` on a run folder in use is refused naming the holder's pid;
              after kill -9 of the holder the next run takes the folder over and resumes.
  config      mpirun -np 2 with --set optimizer.lr on rank 1 only (and parallel.zero_stage, which
              changes the groups): both stop naming the field, no crash inside MPI.
  prepare     prepare-data --overwrite with a bad input, and killed with the new data staged,
              leaves the old dataset byte-identical; the manifest read back independently (sizes,
              CRC32C, token counts); training refuses a changed shard, a stray shard, an
              incomplete manifest, and warns for a dataset without one.
  io          metrics.jsonl on a full disk (/dev/full) ends the run with exit 1 naming the file;
              an unwritable checkpoint.dir fails before step 1; a shard truncated during training
              is an error naming it (exit 1), not SIGBUS.

Usage: safety_process_test.py --kiln PATH [--mpirun PATH] CASE
"""
import argparse
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

CONFIG = """
model { preset: "gpt2-tiny" vocab_size: 96 max_seq_len: 32 n_layer: 1 n_head: 2 d_model: 32 }
data { synthetic: true seq_len: 16 }
training { global_batch_size: 8 max_steps: 12 seed: 5 }
parallel { micro_batch_size: 4 }
optimizer { lr: 1e-2 }
schedule { lr { warmup_steps: 2 } }
checkpoint { every_n_steps: 1 keep_last: 2 }
eval { batches: 1 sample_tokens: 2 }
logging { tensorboard: false }
device: CPU
"""
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, flush=True)
    return cond


class Kiln:
    def __init__(self, kiln, mpirun):
        self.kiln, self.mpirun = kiln, mpirun
        self.tmp = tempfile.mkdtemp(prefix="kiln_safety_")
        self.cfg = self.path("cfg.textproto")
        with open(self.cfg, "w") as f:
            f.write(CONFIG)
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("SLURM_", "OMPI_COMM", "PMIX_", "KILN_"))}
        self.env.update(KILN_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
                        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_btl="self,vader",
                        OMPI_MCA_btl_vader_single_copy_mechanism="none")

    def path(self, *p):
        return os.path.join(self.tmp, *p)

    def train_cmd(self, run, sets=(), config=None):
        c = [self.kiln, "train", "--config", config or self.cfg,
             "--set", "logging.run_dir=" + self.path(run)]
        for s in sets:
            c += ["--set", s]
        return c

    def run(self, cmd, env=None, timeout=120):
        """(exit status, output); a run past `timeout` (a rank left waiting) is a failure."""
        try:
            p = subprocess.run(cmd, env=dict(self.env, **(env or {})), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            check(False, f"{' '.join(cmd[:8])} ...: still running after {timeout} s (a hang)")
            out = e.stdout or ""
            return None, out.decode(errors="replace") if isinstance(out, bytes) else out
        return p.returncode, p.stdout

    def start(self, cmd, env=None):
        return subprocess.Popen(cmd, env=dict(self.env, **(env or {})), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def mpi(self, *apps):
        """mpirun with one rank per app (a list of kiln arguments each)."""
        c = [self.mpirun, "--oversubscribe", "--bind-to", "none"]
        for i, a in enumerate(apps):
            c += ([":"] if i else []) + ["-np", "1"] + a
        return c


def records(run_dir, kind):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def wait_for(p, pattern, timeout=60):
    """Reads p's output until a line matches; returns what was read."""
    out, end = "", time.time() + timeout
    for line in p.stdout:
        out += line
        if re.search(pattern, line) or time.time() > end:
            break
    return out


def case_nonfinite(k):
    rc, out = k.run(k.train_cmd("lr1e6", ["optimizer.lr=1e6", "training.max_non_finite_steps=3"]))
    skips = records(k.path("lr1e6"), "skip")
    print(f"lr=1e6: exit {rc}, {len(skips)} skip records, steps {[s['step'] for s in skips]}",
          flush=True)
    check(rc == 4, f"lr=1e6: exit {rc} (want 4):\n{out[-1500:]}")
    check("3 steps in a row had a non-finite loss or gradient norm" in out, "no stop message")
    check(len(skips) == 3 and all(s["non_finite"] == 1 for s in skips), f"skip records {skips}")
    ckpts = sorted(d for d in os.listdir(k.path("lr1e6", "checkpoints")) if d.startswith("step_"))
    for d in ckpts:
        rc, v = k.run([k.kiln, "checkpoint", "verify", k.path("lr1e6", "checkpoints", d)])
        check(rc == 0 and ": ok" in v, f"checkpoint {d} after lr=1e6 does not verify: {v}")
    check(len(ckpts) == 2, f"keep_last 2 left {ckpts}")
    # (`checkpoint verify` on a checkpoint holding an Inf: launch/safety_test.cc.) Two ranks, a NaN
    # loss on rank 1 only: both must skip (the decision is on the loss averaged over dp, not on
    # each rank's own) and stop together.
    run = k.path("mpi_nan")
    rc, out = k.run(k.mpi(*[k.train_cmd("mpi_nan", ["training.max_non_finite_steps=2"])] * 2),
                    env={"KILN_INJECT_NON_FINITE": "1:3-9:loss"}, timeout=180)
    skips = records(run, "skip") if os.path.exists(os.path.join(run, "metrics.jsonl")) else []
    print(f"mpirun -np 2, a NaN loss on rank 1 from step 4: exit {rc}, rank 0 logged skips at "
          f"{[s['step'] for s in skips]}", flush=True)
    check(rc == 4, f"mpi: exit {rc} (want 4):\n{out[-2000:]}")
    check([s["step"] for s in skips] == [3, 4], f"mpi: rank 0's skip records {skips}")
    check(out.count("stopping after step 5") == 1, f"mpi: stop message:\n{out[-2000:]}")


def case_lock(k):
    slow = {"KILN_STEP_DELAY_MS": "300"}
    first = k.start(k.train_cmd("locked", ["training.max_steps=200"]), env=slow)
    wait_for(first, r"^step +1/")
    rc, out = k.run(k.train_cmd("locked"))
    m = re.search(r"in use by another kiln train \(pid (\d+) on host \S+, started [^)]*\)", out)
    print(f"second train on a locked folder: exit {rc}, '{m.group(0) if m else out[-300:]}'",
          flush=True)
    check(rc == 1 and m is not None and int(m.group(1)) == first.pid,
          f"second train: exit {rc}, holder pid {m.group(1) if m else '-'} vs {first.pid}:\n{out}")
    metrics = open(k.path("locked", "metrics.jsonl")).read()
    first.send_signal(signal.SIGKILL)
    first.wait()
    rc, out = k.run(k.train_cmd("locked", ["training.max_steps=14"]))
    resumed = re.search(r"kiln: resumed from \S+ \(step (\d+)", out)
    print(f"after kill -9 of the holder: exit {rc}, "
          f"{resumed.group(0) if resumed else 'did not resume'}", flush=True)
    check(rc == 0 and resumed is not None, f"takeover after kill -9: exit {rc}:\n{out[-1500:]}")
    check(len(metrics) > 0 and all(json.loads(l) for l in open(k.path("locked", "metrics.jsonl"))),
          "metrics.jsonl has a broken line")


def case_config(k):
    # training.seed is also data.seed's default: the resolved configs differ first in data.seed.
    for field, other, named in [("optimizer.lr", "0.02", "optimizer.lr"),
                                ("parallel.zero_stage", "1", "parallel.zero_stage"),
                                ("training.seed", "6", "data.seed")]:
        a = k.train_cmd("cfg_" + field)
        rc, out = k.run(k.mpi(a, a + ["--set", f"{field}={other}"]), timeout=120)
        want = f"{named} is {other} on rank 1 but"
        print(f"mpirun -np 2, --set {field}={other} on rank 1: exit {rc}, "
              f"{out.count(want)} rank(s) name the field", flush=True)
        check(rc == 1 and out.count(want) == 2, f"{field}: exit {rc}:\n{out[-1500:]}")
        check("Segmentation" not in out and "signal 11" not in out, f"{field}: a crash:\n{out}")
        check(not os.path.exists(k.path("cfg_" + field, "metrics.jsonl")) or
              not records(k.path("cfg_" + field), "train"), f"{field}: it trained")


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def snapshot(d):
    """The dataset's files (a killed run's hidden staging directory aside) and their bytes."""
    return {f: open(os.path.join(d, f), "rb").read() for f in sorted(os.listdir(d))
            if not f.startswith(".")}


def case_prepare(k):
    src, out_dir = k.path("corpus"), k.path("data")
    os.makedirs(src)
    for i in range(40):
        with open(os.path.join(src, f"doc{i:02d}.txt"), "w") as f:
            f.write(f"Document {i}: the quick brown fox jumps over the lazy dog. " * (1 + i % 3))
    prep = [k.kiln, "prepare-data", "--out", out_dir, "--name", "d", "--val-docs", "4", "--quiet",
            "--shard-tokens", "400"]
    rc, out = k.run(prep + [os.path.join(src, "doc*.txt")])
    check(rc == 0, f"prepare-data: exit {rc}: {out}")
    good = snapshot(out_dir)
    if not check("d.manifest.json" in good, f"prepare-data wrote no manifest: {sorted(good)}"):
        return
    m = json.loads(good["d.manifest.json"])
    shards = {s["file"]: s for s in m["shards"]}
    bins = sorted(f for f in good if f.endswith(".bin"))
    check(m["complete"] is True and sorted(shards) == bins, f"manifest {m}")
    for f in bins:
        data = good[f]
        magic, version, count = struct.unpack("<3i", data[:12])
        check(shards[f]["bytes"] == len(data) and shards[f]["tokens"] == count and
              int(shards[f]["crc32c"], 16) == crc32c(data) and len(data) == 1024 + 2 * count,
              f"manifest entry of {f}: {shards[f]} vs {len(data)} bytes, {count} tokens")
    split_tokens = {sp: sum(s["tokens"] for s in m["shards"] if s["split"] == sp)
                    for sp in ("train", "val")}
    check(m["tokens"] == split_tokens and m["documents"] == {"train": 36, "val": 4},
          f"manifest counts {m['tokens']} {m['documents']} vs {split_tokens}")
    print(f"prepare-data: {len(bins)} shards, manifest checked (sizes, CRC32C, counts)", flush=True)
    # A bad input with --overwrite (a JSONL file with a broken record): the old dataset stays.
    bad = os.path.join(src, "bad.jsonl")
    with open(bad, "w") as f:
        f.write('{"text": "fine"}\n' * 50 + '{"text": broken\n')
    rc, out = k.run(prep + ["--overwrite", "--format", "jsonl", bad])
    check(rc != 0 and snapshot(out_dir) == good, f"bad input with --overwrite: exit {rc}, "
          f"dataset {'intact' if snapshot(out_dir) == good else 'changed'}: {out[-500:]}")
    # Killed with the new dataset staged: the old one stays, nothing of the new one is visible.
    p = k.start(prep + ["--overwrite", os.path.join(src, "doc0*.txt")],
                env={"KILN_PREPARE_TEST_DELAY_MS": "30000"})
    wait_for(p, r"staged")
    p.send_signal(signal.SIGKILL)
    p.wait()
    check(snapshot(out_dir) == good, "killed prepare-data changed the old dataset")
    print("prepare-data --overwrite: a bad input and a kill -9 left the old dataset intact",
          flush=True)
    cfg = k.path("shards.textproto")
    with open(cfg, "w") as f:
        f.write(CONFIG.replace("synthetic: true", f'train_shards: "{out_dir}/d_train_*.bin" '
                               f'val_shards: "{out_dir}/d_val_*.bin"')
                .replace("vocab_size: 96", "vocab_size: 50304")
                .replace("max_steps: 12", "max_steps: 2").replace("keep_last: 2", "keep_last: 1"))

    def train(tag):
        return k.run(k.train_cmd("t_" + tag, config=cfg))
    rc, out = train("ok")
    check(rc == 0 and "warning" not in out, f"training on the prepared data: exit {rc}:\n{out[-800:]}")
    first = os.path.join(out_dir, bins[0])
    raw = bytearray(good[bins[0]])
    raw[1030] ^= 1
    open(first, "wb").write(raw)
    rc, out = train("flipped")
    check(rc == 1 and f"{first} has CRC32C" in out, f"a changed byte: exit {rc}:\n{out[-800:]}")
    open(first, "wb").write(good[bins[0]])
    stray = os.path.join(out_dir, "d_train_000099.bin")
    shutil.copy(first, stray)
    rc, out = train("stray")
    check(rc == 1 and "d_train_000099.bin is not part of the dataset" in out,
          f"a stray shard: exit {rc}:\n{out[-800:]}")
    os.remove(stray)
    open(os.path.join(out_dir, "d.manifest.json"), "w").write(
        good["d.manifest.json"].decode().replace('"complete": true', '"complete": false'))
    rc, out = train("incomplete")
    check(rc == 1 and "is incomplete" in out, f"an incomplete manifest: exit {rc}:\n{out[-800:]}")
    os.remove(os.path.join(out_dir, "d.manifest.json"))
    rc, out = train("legacy")
    check(rc == 0 and "has no manifest" in out, f"no manifest: exit {rc}:\n{out[-800:]}")
    print("training refused a changed, a stray shard and an incomplete manifest; warned without one",
          flush=True)


def write_shard(path, n):
    with open(path, "wb") as f:
        f.write(struct.pack("<256i", 20240520, 1, n, *([0] * 253)))
        f.write(struct.pack(f"<{n}H", *[(i * 7919) % 96 for i in range(n)]))


def case_io(k):
    os.makedirs(k.path("full"))
    os.symlink("/dev/full", k.path("full", "metrics.jsonl"))
    rc, out = k.run(k.train_cmd("full", ["checkpoint.resume=never"]))
    print(f"metrics.jsonl on /dev/full: exit {rc}", flush=True)
    check(rc == 1 and "metrics.jsonl: No space left on device" in out,
          f"full disk: exit {rc}:\n{out[-800:]}")
    open(k.path("a_file"), "w").close()
    rc, out = k.run(k.train_cmd("ckdir", ["checkpoint.dir=" + k.path("a_file", "ck")]))
    print(f"checkpoint.dir under a regular file: exit {rc}", flush=True)
    check(rc == 1 and "checkpoint.dir" in out and not re.search(r"^step", out, re.M),
          f"unwritable checkpoint.dir: exit {rc}:\n{out[-800:]}")
    shard = k.path("s_train_000000.bin")
    write_shard(shard, 100000)
    cfg = k.path("trunc.textproto")
    with open(cfg, "w") as f:
        f.write(CONFIG.replace("synthetic: true", f'train_shards: "{shard}"')
                .replace("max_steps: 12", "max_steps: 200"))
    p = k.start(k.train_cmd("trunc", config=cfg), env={"KILN_STEP_DELAY_MS": "100"})
    out = wait_for(p, r"^step +2/")
    os.truncate(shard, 1024 + 4000)
    out += p.communicate(timeout=120)[0]
    print(f"shard truncated during training: exit {p.returncode}", flush=True)
    check(p.returncode == 1 and f"data shard {shard}" in out,
          f"truncated shard: exit {p.returncode} (SIGBUS is {-signal.SIGBUS}):\n{out[-800:]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--mpirun", default="mpirun")
    ap.add_argument("case", choices=["nonfinite", "lock", "config", "prepare", "io"])
    a = ap.parse_args()
    k = Kiln(os.path.abspath(a.kiln), a.mpirun)
    t0 = time.time()
    globals()["case_" + a.case](k)
    print(f"safety_process_test {a.case}: {len(failures)} failure(s) in {time.time() - t0:.1f} s",
          flush=True)
    if not failures:
        shutil.rmtree(k.tmp, ignore_errors=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
