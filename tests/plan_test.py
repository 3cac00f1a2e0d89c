#!/usr/bin/env python3
"""`kiln plan` against real trainings on the CPU: for each layout below, trains a tiny model a few
steps (one process or `mpirun -np 2`), reads the mem_peak_mib it logged (the CPU allocator's peak,
core/allocator.cc, rank 0) and checks that `kiln plan --world N --json` for the same config
predicts it within 10%. The layouts cover data parallel, ZeRO-1, ZeRO-3 and recompute none /
selective / full, a GPT-2 and a Llama, and pipeline parallel at pp 2 (1F1B, even and uneven
splits; only layouts whose planned peak is on stage 0, the rank that reports); the shapes are chosen so that the term each layout changes
is large (small batches where ZeRO shards the optimizer state or the parameters, long ones where
activations and recompute dominate), so a wrong term shows. It also checks that the prediction
moves with the layout as the measurement does (full recompute well below none).

Usage: plan_test.py --kiln PATH [--mpirun PATH]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

BASE = """
name: "plan"
device: CPU
model { preset: "gpt2-tiny" vocab_size: 512 max_seq_len: 64 n_layer: 4 n_head: 4 d_model: 64 }
data { synthetic: true seq_len: 64 }
parallel { micro_batch_size: 8 }
optimizer { lr: 1e-3 }
training { global_batch_size: 16 max_steps: 3 seed: 1 }
precision { dtype: FP32 }
eval { every_n_steps: 0 batches: 1 sample_tokens: 0 }
checkpoint { every_n_steps: 0 save_at_end: false resume: "never" }
logging { tensorboard: false }
"""
SMALL_BATCH = ["parallel.micro_batch_size=1", "data.seq_len=16", "training.global_batch_size=2"]
LLAMA = ['model={preset: "llama-tiny" vocab_size: 512 max_seq_len: 64}']
# (name, ranks, --set overrides)
CASES = [
    ("1 process, recompute none", 1, ["recompute.policy=NONE"]),
    ("1 process, recompute full", 1, ["recompute.policy=FULL"]),
    ("dp 2, DDP, recompute selective", 2, ["parallel.zero_stage=0", "recompute.policy=SELECTIVE"]),
    ("dp 2, ZeRO-1, small batch", 2, ["parallel.zero_stage=1"] + SMALL_BATCH),
    ("dp 2, ZeRO-3, small batch", 2, ["parallel.zero_stage=3"] + SMALL_BATCH),
    ("dp 2, ZeRO-3, recompute full", 2, ["parallel.zero_stage=3", "recompute.policy=FULL"]),
    ("dp 2, ZeRO-1, Llama, recompute full", 2,
     ["parallel.zero_stage=1", "recompute.policy=FULL"] + LLAMA),
    # Pipeline layouts whose peak is on stage 0 (rank 0 writes mem_peak_mib; the test checks the
    # plan's peak stage is 0): 1F1B with 4 micro-batches in flight, and an uneven 3 / 1 split.
    ("pp 2, 1F1B, 4 micro-batches", 2, ["parallel.pp=2", "parallel.micro_batch_size=2"]),
    ("pp 2, 1F1B, layers 3 / 1", 2, ["parallel.pp=2", "parallel.pipeline_layers=[3,1]"]),
]
TOLERANCE = 0.10  # the claim of docs/SLURM.md and the issue


def run(cmd, env):
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stdout[-3000:]}")
    return p.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--mpirun", default="mpirun")
    args = ap.parse_args()
    env = dict(os.environ, KILN_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_btl="self,vader",
               OMPI_MCA_btl_vader_single_copy_mechanism="none")
    work = tempfile.mkdtemp(prefix="kiln_plan_test_")
    config = os.path.join(work, "plan.textproto")
    with open(config, "w") as f:
        f.write(BASE)
    failures, results = [], {}
    try:
        for i, (name, ranks, sets) in enumerate(CASES):
            run_dir = os.path.join(work, f"run{i}")
            flags = sum((["--set", s] for s in sets), [])
            pre = [args.mpirun, "-np", str(ranks), "--oversubscribe", "--bind-to", "none"] \
                if ranks > 1 else []
            run(pre + [args.kiln, "train", "--config", config, "--set",
                       f"logging.run_dir={run_dir}"] + flags, env)
            plan = json.loads(run([args.kiln, "plan", "--config", config, "--world", str(ranks),
                                   "--run", run_dir, "--json"] + flags, env))
            pred, meas = plan["peak_mib"], plan.get("measured_mib")
            if plan.get("stage", 0) != 0:
                failures.append(f"{name}: the plan's peak is on stage {plan['stage']}; only rank "
                                "0 (stage 0) reports mem_peak_mib")
                continue
            if meas is None:
                failures.append(f"{name}: no mem_peak_mib in {run_dir}/metrics.jsonl")
                continue
            err = (pred - meas) / meas
            results[name] = (pred, meas)
            ok = abs(err) <= TOLERANCE
            print(f"{'ok  ' if ok else 'FAIL'} {name:40s} predicted {pred:8.3f} MiB  measured "
                  f"{meas:8.3f} MiB  {100 * err:+5.1f}%  (peak at {plan['peak_at']})", flush=True)
            if not ok:
                failures.append(f"{name}: predicted {pred:.3f} MiB, measured {meas:.3f} MiB")
        none, full = results.get(CASES[0][0]), results.get(CASES[1][0])
        if none and full and not (full[0] < 0.7 * none[0] and full[1] < 0.7 * none[1]):
            failures.append(f"full recompute should cut the peak by > 30%: none {none}, full {full}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for f in failures:
        print("FAIL:", f)
    print(f"plan_test: {len(CASES)} layouts, {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
