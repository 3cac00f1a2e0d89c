"""Groups one training step's kernels (Nsight Compute CSV from benchmarks/profile/run.sh) into
categories: the step is the kernels between the last AdamW launch of the first step and the last
AdamW launch of the second (the first step also holds the start-up evaluation's forward).

Usage: categories.py NCU_CSV [WALL_MS_PER_STEP]. Prints ms per category and the share of the wall
step time (kernels + gaps) when given."""
import collections
import csv
import gzip
import sys

RULES = [  # (category, substring of the kernel name), first match wins
    ("attention (cuDNN flash fwd/bwd + helpers)", "sdpa"),
    ("attention (cuDNN flash fwd/bwd + helpers)", "cudnn::"),
    ("strided copies (layout changes)", "strided_copy_kernel"),
    ("cuBLASLt DGELU/BGRAD epilogue kernel", "epilogue::globalKernel<"),
    ("GEMM bias-grad epilogue kernels", "globalKernelBgrad"),
    ("GEMM split-K reduce", "splitKreduce"),
    ("GEMMs (nvjet)", "nvjet"),
    ("GEMMs (other cuBLASLt kernels, e.g. fp8)", "sm90_xmma"),
    ("fp8 amax + casts (incl. transposing)", "amax_kernel"),
    ("fp8 amax + casts (incl. transposing)", "cast_transpose_kernel"),
    ("fp8 amax + casts (incl. transposing)", "::cast_kernel<"),
    ("dtype casts (weights, grads)", "multi_cast_kernel"),
    ("classifier softmax+grad rows (ce_rows)", "ce_rows"),
    ("GELU grad + b1 sums (kiln)", "dgelu_bgrad"),
    ("GELU grad + b1 sums (kiln)", "sum_chunks"),
    ("LayerNorm / RMSNorm fwd/bwd", "norm::"),
    ("RoPE (Llama)", "rope_kernel"),
    ("activations incl. SwiGLU (map_kernel)", "map_kernel"),
    ("residual adds / elementwise", "binary_"),
    ("dtype casts (weights, grads)", "convert_kernel"),
    ("grad accumulation (f32 +=)", "add_f32_kernel"),
    ("AdamW + grad norm", "adamw"),
    ("AdamW + grad norm", "sumsq"),
]


def category(name):
    for cat, key in RULES:
        if key in name:
            return cat
    return "other"


def main():
    path = sys.argv[1]
    wall = float(sys.argv[2]) if len(sys.argv) > 2 else None
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        lines = [l for l in f if l.startswith('"')]
    rows = [r for r in csv.DictReader(lines) if r.get("Metric Name") == "gpu__time_duration.sum"]
    adam = [i for i, r in enumerate(rows) if "adamw_kernel" in r["Kernel Name"]]
    # the launches of one AdamW call are consecutive: find the first index after step 1's run
    first_end = adam[0]
    while first_end + 1 in adam:
        first_end += 1
    step = rows[first_end + 1:adam[-1] + 1]
    tot = collections.defaultdict(float)
    cnt = collections.Counter()
    for r in step:
        c = category(r["Kernel Name"])
        tot[c] += float(r["Metric Value"].replace(",", "")) * 1e-6
        cnt[c] += 1
    total = sum(tot.values())
    print(f"{'category':45s} {'ms/step':>8s} {'launches':>8s} {'of kernels':>10s}" +
          (f" {'of step':>8s}" if wall else ""))
    for c, t in sorted(tot.items(), key=lambda kv: -kv[1]):
        line = f"{c:45s} {t:8.2f} {cnt[c]:8d} {100 * t / total:9.1f}%"
        if wall:
            line += f" {100 * t / wall:7.1f}%"
        print(line)
    print(f"{'kernels total':45s} {total:8.2f} {len(step):8d}")
    if wall:
        print(f"{'gaps (wall step - kernels)':45s} {wall - total:8.2f} {'':8s} {'':10s} "
              f"{100 * (wall - total) / wall:7.1f}%")


if __name__ == "__main__":
    main()
