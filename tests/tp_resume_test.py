#!/usr/bin/env python3
"""Tensor-parallel checkpoints end to end, with real `kiln train` processes under mpirun.

  1. kill -9: a tp = 2 x dp = 2 ZeRO-1 run (4 ranks, dropout 0.1) whose rank 1 is killed with
     SIGKILL at a random step after the first checkpoint, restarted: every later loss must be
     bit-identical to the uninterrupted run's, and the final checkpoints (fp32 parameters and
     optimizer state) byte-identical file by file and hash-equal.
  2. export: the final checkpoint of a tp = 2 run (2 ranks), loaded by a tp = 1 run (one process,
     `--resume=PATH`, no step left: save_at_end writes it in the tp = 1 layout), must export
     (`kiln export`) to the same model.safetensors byte for byte, and `kiln checkpoint hash` (the
     whole tensors) must agree; `kiln checkpoint verify` passes on both.
  3. resharding: a tp2 x dp2 ZeRO-1 checkpoint of step 16 (dropout 0: per-rank dropout streams
     differ between layouts) resumed as dp = 4 ZeRO-3 and as tp = 1: losses of steps 17-40 within
     1e-6 relative of the uninterrupted tp2 x dp2 run (tensor parallelism changes the order of
     the sums in the row-parallel layers, so not bit for bit).

Usage: tp_resume_test.py --kiln PATH [--mpirun PATH] [--seed S]
Reuses tests/checkpoint_process_test.py's runner (the same tiny GPT-2 on synthetic data).
"""
import argparse
import os
import random
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import checkpoint_process_test as cpt  # noqa: E402

TP2DP2 = ["parallel.tp=2", "parallel.zero_stage=1"]


def kill_resume(env, rng):
    rc, out = env.train("ref", TP2DP2, np=4, timeout=300)
    cpt.check(rc == 0, "uninterrupted tp2 x dp2 run failed:\n" + out[-2000:])
    ref = cpt.losses(env.run_dir("ref"))
    k = rng.randint(cpt.EVERY + 1, cpt.STEPS - 1)
    rc, out = env.train("killed", TP2DP2, np=4, extra_env={"KILN_FAULT_INJECT": f"1:{k}:kill"},
                        timeout=300)
    cpt.check(rc != 0 and "fault injection: rank 1 kill" in out, f"rank 1 kill at step {k}: rc {rc}")
    want = cpt.latest(env.run_dir("killed"))
    rc, out = env.train("killed", TP2DP2, np=4, timeout=300)
    path, step = cpt.resumed_step(out)
    print(f"tp2 x dp2 ZeRO-1, rank 1 kill -9 at step {k}: `latest` was {want}; resumed from step "
          f"{step}", flush=True)
    cpt.check(rc == 0 and path is not None and path.endswith(want or "?"),
              f"tp2 x dp2 resume: exit {rc}, from {path}:\n{out[-2000:]}")
    if step is not None:
        cpt.compare_losses(ref, cpt.losses(env.run_dir("killed")), step,
                           "tp2 x dp2 ZeRO-1 kill -9 resume")
    cpt.compare_final(env, "ref", "killed", 4, "tp2 x dp2 ZeRO-1 kill -9 resume")


def export_equal(env):
    rc, out = env.train("tp2", ["parallel.tp=2"], np=2, timeout=300)
    cpt.check(rc == 0, "tp2 run failed:\n" + out[-2000:])
    src = os.path.join(cpt.ckpt_dir(env.run_dir("tp2")), "step_%08d" % cpt.STEPS)
    rc, out = env.train("tp1_of_tp2", ["checkpoint.resume=" + src], np=1)
    path, step = cpt.resumed_step(out)
    dst = os.path.join(cpt.ckpt_dir(env.run_dir("tp1_of_tp2")), "step_%08d" % cpt.STEPS)
    cpt.check(rc == 0 and step == cpt.STEPS and os.path.isdir(dst),
              f"tp1 run resumed from the tp2 checkpoint: exit {rc}, step {step}:\n{out[-2000:]}")
    exports = []
    for name, ckpt in (("tp2", src), ("tp1", dst)):
        rc, out = env.kiln_out("checkpoint", "verify", ckpt)
        cpt.check(rc == 0, f"kiln checkpoint verify ({name}): {out[-500:]}")
        out_dir = os.path.join(env.tmp, "export_" + name)
        rc, out = env.kiln_out("export", "--format", "safetensors", "--checkpoint", ckpt, "--out",
                               out_dir)
        cpt.check(rc == 0, f"kiln export ({name}): {out[-500:]}")
        with open(os.path.join(out_dir, "model.safetensors"), "rb") as f:
            exports.append(f.read())
    hashes = [cpt.final_hash(env, env.run_dir(r)) for r in ("tp2", "tp1_of_tp2")]
    same = len(exports) == 2 and exports[0] == exports[1] and len(exports[0]) > 1000
    print(f"export: tp2 checkpoint and the tp1 checkpoint holding its weights: model.safetensors "
          f"{'byte-identical' if same else 'DIFFERENT'} ({len(exports[0])} bytes); hashes "
          f"{hashes[0]} / {hashes[1]}", flush=True)
    cpt.check(same, "the tp2 export differs from the tp1 export of the same weights")
    cpt.check(hashes[0] is not None and hashes[0].split()[0] == hashes[1].split()[0],
              f"whole-tensor hashes differ: {hashes}")


def reshard(env):
    nodrop = ["model.dropout=0"]
    rc, out = env.train("ref_nodrop", TP2DP2 + nodrop, np=4, timeout=300)
    cpt.check(rc == 0, "uninterrupted tp2 x dp2 run without dropout failed:\n" + out[-2000:])
    ref = cpt.losses(env.run_dir("ref_nodrop"))
    src = os.path.join(cpt.ckpt_dir(env.run_dir("ref_nodrop")), "step_%08d" % 16)
    for name, sets, np in (("dp=4 ZeRO-3", ["parallel.zero_stage=3", "parallel.micro_batch_size=2"], 4),
                           ("tp=1", ["parallel.zero_stage=0"], 1)):
        run = "reshard_" + name.replace("=", "").replace(" ", "_")
        rc, out = env.train(run, sets + nodrop + ["checkpoint.resume=" + src], np=np, timeout=300)
        path, step = cpt.resumed_step(out)
        cpt.check(rc == 0 and step == 16 and "resharded from world 4 dp 2 zero_stage 1 tp 2" in out,
                  f"reshard to {name}: exit {rc}:\n{out[-2000:]}")
        if step is not None:
            cpt.compare_losses(ref, cpt.losses(env.run_dir(run)), step,
                               f"reshard tp2 x dp2 ZeRO-1 -> {name}", tol=1e-6)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--mpirun", default="mpirun")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    args.gpu = False
    env = cpt.Env(args)
    rng = random.Random(args.seed)
    print(f"seed {args.seed}", flush=True)
    try:
        kill_resume(env, rng)
        export_equal(env)
        reshard(env)
    finally:
        if args.keep or cpt.failures:
            print("files kept in", env.tmp)
        else:
            shutil.rmtree(env.tmp, ignore_errors=True)
    print(f"tp checkpoints end to end: {len(cpt.failures)} failure(s)")
    return 1 if cpt.failures else 0


if __name__ == "__main__":
    sys.exit(main())
