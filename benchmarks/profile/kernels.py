"""Sums Nsight Compute's per-kernel gpu__time_duration (CSV) by kernel name.

Usage: kernels.py NCU_CSV STEPS. Prints the kernels sorted by total time with their share, the
launch count per step and the total kernel time per step (the whole run divided by STEPS, so the
start-up kernels of the first step are spread over the steps)."""
import collections
import csv
import sys


def main():
    path, steps = sys.argv[1], int(sys.argv[2])
    with open(path) as f:
        lines = [l for l in f if l.startswith('"')]
    total = collections.defaultdict(float)
    count = collections.Counter()
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = row["Kernel Name"]
        name = name if len(name) < 90 else name[:87] + "..."
        total[name] += float(row["Metric Value"].replace(",", "")) * 1e-6  # ns -> ms (ncu may print 170,400)
        count[name] += 1
    grand = sum(total.values())
    print(f"{'kernel':90s} {'ms/step':>9s} {'share':>6s} {'calls/step':>10s}")
    for name, t in sorted(total.items(), key=lambda kv: -kv[1])[:45]:
        print(f"{name:90s} {t / steps:9.3f} {100 * t / grand:5.1f}% {count[name] / steps:10.1f}")
    print(f"kernel time per step: {grand / steps:.2f} ms over "
          f"{sum(count.values()) / steps:.0f} launches")


if __name__ == "__main__":
    main()
