#!/usr/bin/env python3
"""Checkpoint fault tests with real `kiln train` processes (ctest runs each mode; `--gpu` runs
the same model on the GPU in bf16 with training.deterministic, exit status 77 = skipped when no
GPU is visible).

  resume            kill -9 (from outside) at a random step after a checkpoint, restart: every
                    later loss bit-identical to the uninterrupted run, and the final checkpoints
                    (fp32 parameters + optimizer state) byte-identical and hash-equal. Then the
                    same with SIGTERM: the run saves, exits 143, and resumes bit-identically.
  resume-mpi        the same under `mpirun -np 2` with ZeRO-1 (rank 1 killed by SIGKILL at a
                    random step), then resharding: the dp=2 ZeRO-1 checkpoint resumed with dp=1
                    and with dp=2 ZeRO-3; losses must match the uninterrupted dp=2 run within the
                    data-parallel tests' tolerance (relative 1e-6; the script says whether they
                    were bit-identical).
  kill-during-save  N trials: a run saving after every step (with a test hook that sleeps inside
                    each stage of the save) is killed with SIGKILL at a random moment; after each
                    kill every step_* directory must verify completely, `latest` must name one of
                    them, and the next start must resume from exactly the checkpoint `latest`
                    named, never from a partial (.tmp_*) one.

                    At least half the kills (a third under mpirun, where a killed non-writer rank
                    lets rank 0 finish its publish) must land inside a save (a .tmp_ directory
                    left behind), or the test fails: otherwise it would not test what it claims.

Usage: checkpoint_process_test.py --kiln PATH [--mpirun PATH] [--gpu] MODE [--trials N] [--seed S]
(the seed is fixed by default and printed; --seed -1 draws a fresh one)
The runs use a tiny GPT-2 with dropout (so the dropout generator's state matters) on the synthetic
data source; each takes well under a second.
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

CONFIG = """
model { preset: "gpt2-tiny" vocab_size: 96 max_seq_len: 32 n_layer: 2 n_head: 2 d_model: 32
        dropout: 0.1 }
data { synthetic: true seq_len: 16 }
training { global_batch_size: 8 max_steps: 40 seed: 11 }
parallel { micro_batch_size: 4 }
optimizer { lr: 1e-2 }
schedule { lr { warmup_steps: 3 } }
checkpoint { every_n_steps: 8 keep_last: 2 keep_every: 16 }
eval { batches: 1 every_n_steps: 10 sample_tokens: 4 sample_every: 10 }
logging { tensorboard: false log_every: 1 }
device: CPU
"""
STEPS = 40
EVERY = 8

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, flush=True)
    return cond


class Env:
    def __init__(self, args):
        self.kiln = args.kiln
        self.mpirun = args.mpirun
        self.tmp = tempfile.mkdtemp(prefix="kiln_ckpt_")
        self.cfg = os.path.join(self.tmp, "cfg.textproto")
        config = CONFIG
        if args.gpu:  # bf16 on the GPU, deterministic kernels (cuDNN attention backward included)
            config = config.replace("device: CPU", "device: CUDA\nprecision { dtype: BF16 }")
            config = config.replace("training { ", "training { deterministic: true ")
        with open(self.cfg, "w") as f:
            f.write(config)
        self.env = dict(os.environ)
        self.env.setdefault("KILN_NUM_THREADS", "1")
        for k, v in [("OMPI_ALLOW_RUN_AS_ROOT", "1"), ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"),
                     ("OMPI_MCA_btl", "self,vader"),
                     ("OMPI_MCA_btl_vader_single_copy_mechanism", "none")]:
            self.env.setdefault(k, v)

    def run_dir(self, name):
        return os.path.join(self.tmp, name)

    def cmd(self, run, sets=(), np=1):
        c = [self.kiln, "train", "--config", self.cfg, "--set", "logging.run_dir=" + self.run_dir(run)]
        for s in sets:
            c += ["--set", s]
        if np > 1:
            c = [self.mpirun, "-np", str(np), "--oversubscribe", "--bind-to", "none"] + c
        return c

    def train(self, run, sets=(), np=1, extra_env=None, timeout=120):
        env = dict(self.env, **(extra_env or {}))
        p = subprocess.run(self.cmd(run, sets, np), env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=timeout)
        return p.returncode, p.stdout

    def start(self, run, sets=(), np=1, extra_env=None):
        env = dict(self.env, **(extra_env or {}))
        return subprocess.Popen(self.cmd(run, sets, np), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def kiln_out(self, *args):
        p = subprocess.run([self.kiln] + list(args), env=self.env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=120)
        return p.returncode, p.stdout


def losses(run_dir):
    """Step -> loss from metrics.jsonl (the last record of a step wins: a resumed run re-logs the
    steps after its checkpoint)."""
    out = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r.get("kind") == "train":
                out[r["step"]] = r["loss"]
    return out


def ckpt_dir(run_dir):
    return os.path.join(run_dir, "checkpoints")


def latest(run_dir):
    try:
        with open(os.path.join(ckpt_dir(run_dir), "latest")) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def resumed_step(output):
    m = re.search(r"kiln: resumed from (\S+) \(step (\d+)", output)
    return (m.group(1), int(m.group(2))) if m else (None, None)


def compare_losses(ref, got, first, label, tol=0.0):
    # metrics.jsonl numbers train records from 1, like the console: a run resumed after `first`
    # completed steps logs steps first + 1 .. STEPS.
    steps = list(range(first + 1, STEPS + 1))
    missing = [s for s in steps if s not in got]
    if not check(not missing, f"{label}: steps {missing} missing"):
        return
    worst, exact = 0.0, True
    for s in steps:
        exact = exact and got[s] == ref[s]
        worst = max(worst, abs(got[s] - ref[s]) / abs(ref[s]))
    print(f"{label}: steps {first + 1}..{STEPS}: max relative loss difference {worst:.3g} "
          f"({'bit-identical' if exact else 'not bit-identical'})", flush=True)
    if tol == 0.0:
        check(exact, f"{label}: losses after resume are not bit-identical (max rel {worst:.3g})")
    else:
        check(worst <= tol, f"{label}: max relative loss difference {worst:.3g} > {tol}")


def final_hash(env, run_dir):
    rc, out = env.kiln_out("checkpoint", "hash", ckpt_dir(run_dir))
    check(rc == 0, f"kiln checkpoint hash {run_dir} failed: {out[-500:]}")
    total = [l for l in out.splitlines() if "TOTAL" in l]
    return total[0] if total else None


def compare_final(env, ref_run, run, ranks, label):
    ref, got = latest(env.run_dir(ref_run)), latest(env.run_dir(run))
    check(ref == got == "step_%08d" % STEPS, f"{label}: final checkpoints {ref} / {got}")
    for r in range(ranks):
        name = "rank_%05d.bin" % r
        a = open(os.path.join(ckpt_dir(env.run_dir(ref_run)), ref, name), "rb").read()
        b = open(os.path.join(ckpt_dir(env.run_dir(run)), got, name), "rb").read()
        check(a == b, f"{label}: final {name} differs from the uninterrupted run's")
    ha, hb = final_hash(env, env.run_dir(ref_run)), final_hash(env, env.run_dir(run))
    check(ha is not None and ha == hb, f"{label}: final tensor hashes differ: {ha} vs {hb}")
    print(f"{label}: final parameters + optimizer state: shard files byte-identical, hash {hb}",
          flush=True)


def kill_at_step(env, run, step, sig):
    """Starts a run and sends `sig` once it has printed the line of step `step`. Steps of 100 ms, so
    that a signal delayed a few steps on a loaded machine still lands before the run ends."""
    p = env.start(run, extra_env={"KILN_STEP_DELAY_MS": "100"})
    out = []
    for line in p.stdout:
        out.append(line)
        m = re.match(r"step\s+(\d+)/", line)
        if m and int(m.group(1)) >= step:
            p.send_signal(sig)
            break
    rest, _ = p.communicate(timeout=60)
    return p.returncode, "".join(out) + rest


def mode_resume(env, rng):
    rc, out = env.train("ref")
    check(rc == 0, "uninterrupted run failed:\n" + out[-2000:])
    ref = losses(env.run_dir("ref"))
    # SIGKILL at a random step after the first checkpoint.
    k = rng.randint(EVERY + 1, STEPS - 1)
    rc, out = kill_at_step(env, "killed", k, signal.SIGKILL)
    check(rc == -signal.SIGKILL, f"kill -9 at step {k}: exit status {rc}")
    want = latest(env.run_dir("killed"))
    rc, out = env.train("killed")
    path, step = resumed_step(out)
    check(rc == 0, "resumed run failed:\n" + out[-2000:])
    print(f"kill -9 after step {k}: `latest` was {want}; resumed from {path} (step {step})",
          flush=True)
    check(path is not None and path.endswith(want or "?"), "did not resume from `latest`")
    if step is not None:
        compare_losses(ref, losses(env.run_dir("killed")), step, "kill -9 resume")
    compare_final(env, "ref", "killed", 1, "kill -9 resume")
    # SIGTERM: saved at once, exit status 143 (128 + SIGTERM: stopped, not finished), resumed.
    k = rng.randint(2, STEPS - 2)
    rc, out = kill_at_step(env, "term", k, signal.SIGTERM)
    check(rc == 128 + signal.SIGTERM and "caught SIGTERM" in out, f"SIGTERM at step {k}: exit {rc}:\n{out[-1000:]}")
    stopped = latest(env.run_dir("term"))
    rc, out = env.train("term")
    path, step = resumed_step(out)
    print(f"SIGTERM after step {k}: saved {stopped}; resumed from step {step}", flush=True)
    check(rc == 0 and step is not None and step >= k, f"SIGTERM resume: exit {rc}, step {step}")
    if step is not None:
        compare_losses(ref, losses(env.run_dir("term")), step, "SIGTERM resume")
    compare_final(env, "ref", "term", 1, "SIGTERM resume")


def mode_resume_mpi(env, rng):
    zero1 = ["parallel.zero_stage=1"]
    rc, out = env.train("ref2", zero1, np=2)
    check(rc == 0, "uninterrupted dp=2 ZeRO-1 run failed:\n" + out[-2000:])
    ref = losses(env.run_dir("ref2"))
    k = rng.randint(EVERY + 1, STEPS - 1)
    rc, out = env.train("killed2", zero1, np=2, extra_env={"KILN_FAULT_INJECT": f"1:{k}:kill"})
    check(rc != 0 and "fault injection: rank 1 kill" in out, f"rank 1 kill at step {k}: rc {rc}")
    want = latest(env.run_dir("killed2"))
    rc, out = env.train("killed2", zero1, np=2)
    path, step = resumed_step(out)
    print(f"mpirun -np 2 ZeRO-1, rank 1 kill -9 at step {k}: `latest` was {want}; resumed from "
          f"step {step}", flush=True)
    check(rc == 0 and path is not None and path.endswith(want or "?"),
          f"dp=2 resume: exit {rc}, from {path}:\n{out[-2000:]}")
    if step is not None:
        compare_losses(ref, losses(env.run_dir("killed2")), step, "dp=2 ZeRO-1 kill -9 resume")
    compare_final(env, "ref2", "killed2", 2, "dp=2 ZeRO-1 kill -9 resume")
    # Resharding a dp=2 ZeRO-1 checkpoint of step 16 (kept: keep_every 16). Without dropout:
    # dropout masks come from per-rank generators, so another dp draws other masks.
    nodrop = ["model.dropout=0"]
    rc, out = env.train("ref3", zero1 + nodrop, np=2)
    check(rc == 0, "uninterrupted dp=2 ZeRO-1 run without dropout failed:\n" + out[-2000:])
    ref = losses(env.run_dir("ref3"))
    src = os.path.join(ckpt_dir(env.run_dir("ref3")), "step_%08d" % 16)
    # dp=2 ZeRO-1 -> dp=1, dp=2 ZeRO-1 -> dp=2 ZeRO-3, and back: the dp=1 run's step 32 -> dp=2
    # ZeRO-2.
    back = os.path.join(ckpt_dir(env.run_dir("reshard_dp1_ZeRO-0")), "step_%08d" % 32)
    for name, sets, np, frm, at, layout in [
            ("dp=1 ZeRO-0", ["parallel.zero_stage=0"], 1, src, 16, "world 2 dp 2 zero_stage 1"),
            ("dp=2 ZeRO-3", ["parallel.zero_stage=3"], 2, src, 16, "world 2 dp 2 zero_stage 1"),
            ("dp=2 ZeRO-2", ["parallel.zero_stage=2"], 2, back, 32, "world 1 dp 1 zero_stage 0")]:
        run = "reshard_" + name.replace("=", "").replace(" ", "_")
        rc, out = env.train(run, sets + nodrop + ["checkpoint.resume=" + frm], np=np)
        path, step = resumed_step(out)
        check(rc == 0 and step == at and "resharded from " + layout in out,
              f"reshard to {name}: exit {rc}:\n{out[-2000:]}")
        if step is not None:
            # The data-parallel tests' tolerance: dp=2 vs one process agrees to 1e-6 relative
            # (bit-identical where no reduction order changes).
            compare_losses(ref, losses(env.run_dir(run)), step,
                           f"reshard {layout} -> {name}", tol=1e-6)


def mode_kill_during_save(env, rng, trials, np):
    run = "crash"
    sets = ["training.max_steps=1000000", "checkpoint.every_n_steps=1", "checkpoint.keep_last=3",
            "checkpoint.keep_every=0", "logging.log_every=100000", "eval.sample_tokens=0",
            "eval.every_n_steps=0"]
    hook = {"KILN_CHECKPOINT_TEST_DELAY_MS": "20"}
    cdir = ckpt_dir(env.run_dir(run))
    expect = None  # the checkpoint `latest` named after the previous kill
    phases = {"inside a save (.tmp_ directory left)": 0,
              "after the rename, before `latest` moved": 0, "between saves": 0}
    resumed = []
    for trial in range(trials):
        p = env.start(run, sets, np=np, extra_env=hook)
        first = p.stdout.readline()  # init (and resume) done when the run prints its header
        head = first
        while first and not first.startswith("kiln: gpt2") and not first.startswith("kiln: custom"):
            first = p.stdout.readline()
            head += first
        time.sleep(rng.uniform(0.0, 0.25))
        if np == 1:
            p.send_signal(signal.SIGKILL)
        else:  # a random rank: the launcher tears the rest down
            pids = subprocess.run(["pgrep", "-P", str(p.pid)], stdout=subprocess.PIPE,
                                  text=True).stdout.split()
            os.kill(int(rng.choice(pids)), signal.SIGKILL)
        rest, _ = p.communicate(timeout=60)
        out = head + rest
        path, step = resumed_step(out)
        if expect is None:
            check(path is None, f"trial {trial}: resumed from {path} with no checkpoint")
        else:
            resumed.append(step)
            check(path is not None and ".tmp_" not in path and
                  os.path.basename(path) == expect,
                  f"trial {trial}: resumed from {path}, expected {expect}")
        names = sorted(os.listdir(cdir)) if os.path.isdir(cdir) else []
        steps = [n for n in names if re.fullmatch(r"step_\d{8}", n)]
        expect = named = latest(env.run_dir(run))
        if expect is not None:
            check(expect in steps, f"trial {trial}: latest names {expect}, not among {steps}")
        elif steps:
            # No `latest` yet: the very first save was killed after its rename, before the pointer
            # was written. A start then takes the newest complete step_* directory (verified
            # below), as documented in docs/CHECKPOINTS.md.
            expect = steps[-1]
        if steps:
            rc, vout = env.kiln_out("checkpoint", "verify", *[os.path.join(cdir, s) for s in steps])
            check(rc == 0, f"trial {trial}: a step_* directory does not verify:\n{vout}")
        if any(n.startswith(".tmp_") for n in names):
            phases["inside a save (.tmp_ directory left)"] += 1
        elif steps and (named is None or steps[-1] > named):
            phases["after the rename, before `latest` moved"] += 1
        else:
            phases["between saves"] += 1
    # The last kill is followed by one more start that must resume from `latest` too.
    last = int(expect[5:]) if expect else 0
    rc, out = env.train(run, sets + [f"training.max_steps={last + 4}", "checkpoint.every_n_steps=0",
                                     "checkpoint.save_at_end=false"], np=np)
    path, step = resumed_step(out)
    check(expect is None or (path is not None and os.path.basename(path) == expect),
          f"final start resumed from {path}, `latest` named {expect}:\n{out[-1000:]}")
    print(f"{trials} kills ({'mpirun -np 2, random rank' if np > 1 else 'one process'}): " +
          ", ".join(f"{v} {k}" for k, v in phases.items()), flush=True)
    # The test is about kills inside a save: unless most land there it did not test what it says.
    # One process: at least half. Under mpirun a third: when the random rank is not rank 0 (the one
    # that renames), rank 0 can finish the publish it was in before it notices, so such a kill
    # shows as "between saves" however it was timed (measured: 4 of 8 inside at 8 and 20 ms).
    inside = phases["inside a save (.tmp_ directory left)"]
    need = trials / 2 if np == 1 else trials / 3
    check(inside >= need, f"only {inside} of {trials} kills landed inside a save (need {need:.1f})")
    if failures:
        print(f"{len(failures)} check(s) failed: NOT every start resumed from `latest` / NOT every "
              f"step_* directory verified", flush=True)
    else:
        print(f"every start resumed from the checkpoint `latest` named (steps {resumed[:10]}"
              f"{' ...' if len(resumed) > 10 else ''}); every step_* directory verified after "
              f"every kill", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--mpirun", default="mpirun")
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--np", type=int, default=1)
    # A fixed default seed, printed: a failure reproduces with the same kill times (up to the
    # machine's timing). --seed -1 draws a fresh one.
    ap.add_argument("--seed", type=int, default=20261205)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--gpu", action="store_true", help="train on the GPU (skip: exit 77 if none)")
    ap.add_argument("mode", choices=["resume", "resume-mpi", "kill-during-save"])
    args = ap.parse_args()
    if args.gpu:
        info = subprocess.run([args.kiln, "info"], stdout=subprocess.PIPE, text=True).stdout
        m = re.search(r"GPUs visible: (\d+)", info)
        if not m or int(m.group(1)) == 0:
            if os.environ.get("KILN_REQUIRE_GPU") == "1":
                print("KILN_REQUIRE_GPU=1 but no GPU visible: failed")
                return 1
            print("no GPU visible: skipped")
            return 77
    seed = args.seed if args.seed >= 0 else random.SystemRandom().randrange(1 << 30)
    print(f"{args.mode}: seed {seed} (rerun with --seed {seed})", flush=True)
    rng = random.Random(seed)
    env = Env(args)
    start = time.time()
    try:
        if args.mode == "resume":
            mode_resume(env, rng)
        elif args.mode == "resume-mpi":
            mode_resume_mpi(env, rng)
        else:
            mode_kill_during_save(env, rng, args.trials, args.np)
    finally:
        if not args.keep and not failures:
            shutil.rmtree(env.tmp, ignore_errors=True)
        else:
            print("files kept in", env.tmp)
    print(f"{args.mode}: {len(failures)} failure(s) in {time.time() - start:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
