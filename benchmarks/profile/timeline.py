"""Per-step account of a GPU timeline (the CSV of benchmarks/profile/cupti_trace.cc): for each
training step, the time some kernel / copy runs on the GPU (busy: the union over all streams) and
the gaps when none does, so busy + gaps is the whole step; the kernel time per category
(categories.py; their sum exceeds busy where streams overlap); the gaps by size; and the largest
gaps of the median step with the kernels on either side.

A step is the time from one gradient-norm reduction (the first kernel whose name holds "sumsq",
once per step, after the backward; its kernels start less than 5 ms apart) to the next: it holds the optimizer step, the next forward and
backward. Usage: timeline.py TRACE_CSV [FIRST_STEP] (steps before FIRST_STEP, default 3, are
skipped: allocator and tuning warm-up)."""
import collections
import csv
import shutil
import statistics
import subprocess
import sys

import categories

GAP_BINS = [(0, 2e3, "< 2 us"), (2e3, 5e3, "2-5 us"), (5e3, 20e3, "5-20 us"),
            (20e3, 100e3, "20-100 us"), (100e3, float("inf"), ">= 100 us")]


def demangle(names):
    """Demangled names by c++filt (or cu++filt) where one is installed; else the names as given."""
    tool = shutil.which("c++filt") or shutil.which("cu++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names) + "\n", capture_output=True, text=True)
    lines = out.stdout.splitlines()
    return dict(zip(names, lines)) if len(lines) == len(names) else {n: n for n in names}


def load(path):
    with open(path, newline="") as f:
        rows = [(int(r["start_ns"]), int(r["end_ns"]), r["kind"], r["name"])
                for r in csv.DictReader(f)]
    names = demangle(sorted({r[3] for r in rows}))
    return sorted((s, e, k, names[n]) for s, e, k, n in rows)


def step_starts(events):
    """Start times of the first gradient-norm kernel of each step (kernels within 5 ms of the
    previous one belong to the same reduction)."""
    starts, last = [], None
    for s, _, kind, name in events:
        if kind == "K" and "sumsq" in name:
            if last is None or s - last > 5e6:
                starts.append(s)
            last = s
    return starts


def account(events, t0, t1):
    """Busy time, gaps (list of (length, before, after)) and per-category kernel time within
    [t0, t1)."""
    inside = [(max(s, t0), min(e, t1), k, n) for s, e, k, n in events if e > t0 and s < t1]
    busy, gaps, cur_end, cur_name = 0, [], t0, "(step start)"
    per_cat = collections.Counter()
    for s, e, kind, name in inside:
        per_cat[categories.category(name) if kind == "K" else f"{name} (copy engine)"] += e - s
        if s > cur_end:
            gaps.append((s - cur_end, cur_name, name))
        if e > cur_end:
            busy += e - max(s, cur_end)
            cur_end, cur_name = e, name
    if t1 > cur_end:
        gaps.append((t1 - cur_end, cur_name, "(step end)"))
    return busy, gaps, per_cat


def short(name, n=70):
    return name if len(name) <= n else name[:n - 3] + "..."


def main():
    events = load(sys.argv[1])
    first = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    starts = step_starts(events)
    steps = [(starts[i], starts[i + 1]) for i in range(first, len(starts) - 1)]
    if not steps:
        sys.exit(f"timeline.py: {len(starts)} gradient-norm reductions found; need > {first + 1}")
    acc = [(t1 - t0, *account(events, t0, t1)) for t0, t1 in steps]
    med = sorted(range(len(acc)), key=lambda i: acc[i][0])[len(acc) // 2]
    span, busy, gaps, per_cat = acc[med]
    ms = 1e-6
    print(f"{len(steps)} steps (from step {first}); median step {span * ms:.2f} ms "
          f"(all: {statistics.median(a[0] for a in acc) * ms:.2f} ms median)")
    print(f"  GPU busy (any stream)  {busy * ms:8.3f} ms  {100 * busy / span:5.1f}%")
    print(f"  gaps (nothing running) {(span - busy) * ms:8.3f} ms  {100 * (span - busy) / span:5.1f}%"
          f"  in {len(gaps)} gaps")
    for lo, hi, label in GAP_BINS:
        g = [x[0] for x in gaps if lo <= x[0] < hi]
        print(f"    {label:10s} {len(g):6d} gaps  {sum(g) * ms:8.3f} ms")
    total = sum(per_cat.values())
    print(f"\n{'category (the median step)':48s} {'ms':>8s} {'of step':>8s}")
    for cat, t in per_cat.most_common():
        print(f"{cat:48s} {t * ms:8.3f} {100 * t / span:7.1f}%")
    print(f"{'kernel + copy time (streams overlapping count twice)':48s} {total * ms:8.2f}")
    print("\nlargest gaps of the median step:")
    for length, before, after in sorted(gaps, reverse=True)[:10]:
        print(f"  {length * 1e-3:9.1f} us  after {short(before)}\n{'':15s}before {short(after)}")


if __name__ == "__main__":
    main()
