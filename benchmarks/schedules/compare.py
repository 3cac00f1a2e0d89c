"""Time (training seconds, evaluation excluded) and tokens to reach a target validation loss in two
runs. The target is the baseline's final validation loss plus 2% (what both runs can reach);
crossings are interpolated linearly between evaluations.
Usage: compare.py BASE_METRICS.jsonl TREATMENT_METRICS.jsonl"""
import json
import sys


def vals(path):
    return [json.loads(l) for l in open(path) if '"kind":"val"' in l]


def cross(rows, target):
    prev = None
    for r in rows:
        if r["loss"] <= target:
            if prev is None:
                return r["train_s"], r["tokens"]
            f = (prev["loss"] - target) / (prev["loss"] - r["loss"])
            return (prev["train_s"] + f * (r["train_s"] - prev["train_s"]),
                    prev["tokens"] + f * (r["tokens"] - prev["tokens"]))
        prev = r
    return None, None


base, treat = vals(sys.argv[1]), vals(sys.argv[2])
target = base[-1]["loss"] * 1.02
tb, kb = cross(base, target)
tt, kt = cross(treat, target)
print(f"target val loss {target:.4f} (baseline final {base[-1]['loss']:.4f} + 2%)")
print(f"baseline:          final {base[-1]['loss']:.4f}, target at {tb:.1f} s / {kb / 1e6:.3f}M tokens "
      f"(run: {base[-1]['train_s']:.1f} s)")
if tt is None:
    print(f"ramp + curriculum: final {treat[-1]['loss']:.4f}, never reached the target")
    sys.exit(1)
print(f"ramp + curriculum: final {treat[-1]['loss']:.4f}, target at {tt:.1f} s / {kt / 1e6:.3f}M tokens "
      f"(run: {treat[-1]['train_s']:.1f} s)")
print(f"speed-up to target: {tb / tt:.2f}x in time, {kb / kt:.2f}x in tokens")
