#!/usr/bin/env python3
"""Pipeline-parallel checkpoints across layouts, through the kiln CLI under mpirun.

Each stage writes the parameters it holds (GPT-2's tied classifier once, by the first stage); the
pieces load into another pp because a stage is a subset of the named tensors.
  1. pp 2 -> 1: 4 steps at pp = 2 (saving), then resumed at pp = 1 to step 8: losses 5-8 equal an
     uninterrupted pp = 1 run within 1e-6 relative; `kiln export` of the pp = 2 checkpoint equals
     the export of the pp = 1 run's step-4 checkpoint within 1e-6 (same names and shapes).
  2. pp 1 -> 4: 4 steps at pp = 1, resumed at pp = 4 (4 layers, one per stage) to step 8.
  3. kill -9: a pp = 2 run saving every 2 steps loses rank 1 at step 5; the same command resumes
     from step 4 and its losses 5-8 equal an uninterrupted pp = 2 run's bit for bit.
  4. kill -9 of a 3-D run: dp = 2 x tp = 2 x pp = 2 with ZeRO-1 (8 ranks, dropout 0.1, so the
     per-rank generators must resume too) loses rank 6 (last stage) at step 5; the resumed losses
     5-8 equal the uninterrupted 3-D run's bit for bit.
  5. Interleaved 1F1B with two model chunks per stage (pp 2 x v 2, 4 chunks of one layer) -> pp 1:
     killed after its step-4 checkpoint, resumed at pp = 1: losses 5-8 equal the pp = 1 run within
     1e-6, and its export equals the pp = 1 run's within 1e-6.
  6. kill -9 of a pp 2 x v 2 run with dropout 0.1 (one generator per chunk, each saved and
     restored): the resumed losses 5-8 equal the uninterrupted run's bit for bit.
Usage: pp_checkpoint_test.py --kiln PATH --mpirun PATH
"""
import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile

CONFIG = """
model { preset: "gpt2-tiny" vocab_size: 96 max_seq_len: 32 n_layer: 4 n_head: 2 d_model: 32 }
data { synthetic: true seq_len: 16 }
training { global_batch_size: 8 max_steps: 8 seed: 9 }
parallel { micro_batch_size: 2 timeout_s: 20 }
optimizer { type: SGD momentum: 0.9 lr: 0.1 grad_clip: 1.0 }
schedule { lr { warmup_steps: 2 } }
eval { batches: 1 sample_tokens: 0 }
logging { tensorboard: false jsonl: true }
checkpoint { every_n_steps: 2 save_at_end: false resume: "auto" }
device: CPU
"""


def run(args, tmp, name, np, steps=8, extra=(), env=None, check=True, pp=None):
    """Trains `name` on np ranks at pp = np (or the pp given; the rest of np is tp and dp)."""
    cfg = os.path.join(tmp, "cfg.textproto")
    with open(cfg, "w") as f:
        f.write(CONFIG)
    cmd = [args.kiln, "train", "--config", cfg, "--set", f"logging.run_dir={tmp}/{name}/run",
           "--set", f"checkpoint.dir={tmp}/{name}/ckpt", "--set", f"training.max_steps={steps}",
           "--set", f"parallel.pp={pp or np}"] + list(extra)
    if np > 1:
        cmd = [args.mpirun, "-np", str(np), "--oversubscribe", "--bind-to", "none"] + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    if check and p.returncode != 0:
        sys.exit(f"FAIL: {name}: exit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return p


def stopped(p):
    if p.returncode == 0 or "fault injection" not in p.stdout + p.stderr:
        sys.exit(f"FAIL: the run was not stopped by the injected kill\n{p.stdout[-2000:]}")


def resumed(p, step=4, note=""):
    """The run resumed from the step-`step` checkpoint (a run that silently started over would
    log the same later losses), saying `note` (the layout it was resharded from)."""
    m = re.search(r"kiln: resumed from (\S+) \(step (\d+)", p.stdout + p.stderr)
    if not m or int(m.group(2)) != step or note not in p.stdout:
        sys.exit(f"FAIL: not resumed from step {step}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")


def losses(tmp, name):
    out = {}
    with open(f"{tmp}/{name}/run/metrics.jsonl") as f:
        for line in f:
            r = json.loads(line)
            if "loss" in r and "step" in r and r.get("kind", "train") == "train":
                out[r["step"]] = r["loss"]
    return out


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[k] = (tuple(v["shape"]), struct.unpack(f"<{(b - a) // 4}f", data[a:b]))
    return out


def compare(got, want, steps, tol, what):
    worst = 0.0
    for s in steps:
        if s not in got or s not in want:
            sys.exit(f"FAIL: {what}: step {s} missing ({sorted(got)} vs {sorted(want)})")
        worst = max(worst, abs(got[s] - want[s]) / abs(want[s]))
    print(f"{what}: max relative loss difference {worst:.3g} over steps {steps[0]}-{steps[-1]}")
    if worst > tol:
        sys.exit(f"FAIL: {what}: {worst} > {tol}")


def compare_exports(args, tmp, name, what):
    """`kiln export` of run `name`'s step-4 checkpoint equals that of the pp = 1 run "ref1"."""
    for n in (name, "ref1"):
        subprocess.run([args.kiln, "export", "--format", "safetensors", "--checkpoint",
                        f"{tmp}/{n}/ckpt/step_00000004", "--out", f"{tmp}/{n}/hf"],
                       check=True, capture_output=True)
    got, want = (read_safetensors(f"{tmp}/{n}/hf/model.safetensors") for n in (name, "ref1"))
    if sorted(got) != sorted(want) or any(got[k][0] != want[k][0] for k in want):
        sys.exit(f"FAIL: the exports of {what} and pp = 1 hold different tensors or shapes")
    # Per tensor ||a - b|| / max(||b||, 1e-3): the runs differ by float rounding (the tied gradient
    # and the gradient norm are summed in another order). SGD, because AdamW divides a near-zero
    # gradient (GPT-2's key bias has an exactly zero one) by its own size and so turns rounding
    # into an update of size lr.
    worst, worst_name = 0.0, ""
    for k in want:
        num = sum((x - y) ** 2 for x, y in zip(got[k][1], want[k][1])) ** 0.5
        den = max(sum(y * y for y in want[k][1]) ** 0.5, 1e-3)
        if num / den > worst:
            worst, worst_name = num / den, k
    print(f"export of the {what} checkpoint vs pp = 1: {len(want)} tensors, max relative "
          f"difference {worst:.3g} ({worst_name})")
    if worst > 1e-6:
        sys.exit(f"FAIL: exports of {what} and pp = 1 differ")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--mpirun", required=True)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="kiln_pp_ckpt_")
    later = [5, 6, 7, 8]  # metrics.jsonl numbers train steps from 1: those after step 4
    # The single-process reference, uninterrupted.
    run(args, tmp, "ref1", 1)
    ref1 = losses(tmp, "ref1")
    # Every run is an 8-step run (the LR schedule spans max_steps); a run stops after its step-4
    # checkpoint by losing rank 1 (kill -9): the fault injection counts steps from 0, so "1:5:kill"
    # fires before the 6th step, after step 5 (not saved) is logged; the resumed run trains and
    # logs steps 5-8 again.
    kill = dict(os.environ, KILN_FAULT_INJECT="1:5:kill")
    kill0 = dict(os.environ, KILN_FAULT_INJECT="0:5:kill")
    # 1. pp 2 -> 1.
    stopped(run(args, tmp, "a", 2, env=kill, check=False))
    resumed(run(args, tmp, "a", 1), note="resharded from world 2 dp 1 zero_stage 0 pp 2")
    compare(losses(tmp, "a"), ref1, later, 1e-6, "pp 2 -> 1 resume")
    compare_exports(args, tmp, "a", "pp = 2")
    # 2. pp 1 -> 4.
    stopped(run(args, tmp, "b", 1, env=kill0, check=False))
    resumed(run(args, tmp, "b", 4), note="resharded from world 1 dp 1 zero_stage 0)")
    compare(losses(tmp, "b"), ref1, later, 1e-6, "pp 1 -> 4 resume")
    # 3. kill -9 of a pp = 2 run, resumed bit-identical.
    run(args, tmp, "ref2", 2)
    stopped(run(args, tmp, "c", 2, env=kill, check=False))
    resumed(run(args, tmp, "c", 2))
    compare(losses(tmp, "c"), losses(tmp, "ref2"), later, 0.0, "pp 2 kill -9 resume")
    # 4. kill -9 of a dp 2 x tp 2 x pp 2 ZeRO-1 run, resumed bit-identical.
    three_d = ["--set", "parallel.tp=2", "--set", "parallel.zero_stage=1", "--set",
               "model.dropout=0.1"]
    run(args, tmp, "ref3", 8, extra=three_d, pp=2)
    kill6 = dict(os.environ, KILN_FAULT_INJECT="6:5:kill")
    stopped(run(args, tmp, "d", 8, extra=three_d, env=kill6, check=False, pp=2))
    resumed(run(args, tmp, "d", 8, extra=three_d, pp=2))
    compare(losses(tmp, "d"), losses(tmp, "ref3"), later, 0.0,
            "dp 2 x tp 2 x pp 2 ZeRO-1 kill -9 resume")
    # 5. pp 2 x v 2 (interleaved) -> pp 1, and its export.
    inter = ["--set", "parallel.pipeline_schedule=INTERLEAVED_1F1B", "--set",
             "parallel.virtual_stages=2"]
    stopped(run(args, tmp, "e", 2, extra=inter, env=kill, check=False))
    resumed(run(args, tmp, "e", 1), note="resharded from world 2 dp 1 zero_stage 0 pp 2 v 2")
    compare(losses(tmp, "e"), ref1, later, 1e-6, "pp 2 x v 2 -> pp 1 resume")
    compare_exports(args, tmp, "e", "pp 2 x v 2")
    # 6. kill -9 of a pp 2 x v 2 run with dropout, resumed bit-identical.
    drop = inter + ["--set", "model.dropout=0.1"]
    run(args, tmp, "ref4", 2, extra=drop)
    stopped(run(args, tmp, "f", 2, extra=drop, env=kill, check=False))
    resumed(run(args, tmp, "f", 2, extra=drop))
    compare(losses(tmp, "f"), losses(tmp, "ref4"), later, 0.0, "pp 2 x v 2 dropout kill -9 resume")
    shutil.rmtree(tmp, ignore_errors=True)
    print("PASS")


if __name__ == "__main__":
    main()
