"""Tests of timeline.py on a synthetic trace whose account is known: 8 steps of 10 ms, each with
a gradient-norm kernel, an optimizer kernel on a second stream overlapping the next forward,
kernels separated by gaps of 1 us, 10 us and 300 us, and a memcpy. Busy time, gaps, the gap
bins and the per-category sums must come out exactly. Run: python3 timeline_test.py."""
import contextlib
import io
import os
import re
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import timeline  # noqa: E402

US = 1000  # ns


def synthetic_step(t0):
    """One step from t0 (ns): (kind, start, end, stream, name) rows; busy 9,401 us, gaps 599."""
    rows = [("K", t0, t0 + 200 * US, 7, "multi_tensor_sumsq_kernel")]  # grad norm: 0-200
    # optimizer on stream 9 from 201 to 1,201 us; forward GEMM on stream 7 from 700 to 5,000
    # (overlapping it); busy 200 + (5000 - 201) = 4,999 us up to 5,000, one 1 us gap.
    rows.append(("K", t0 + 201 * US, t0 + 1201 * US, 9, "adamw_kernel"))
    rows.append(("K", t0 + 700 * US, t0 + 5000 * US, 7, "nvjet_gemm"))
    # a norm after a 10 us gap (5,010-6,000), a copy after a 300 us gap (6,300-6,400), a
    # GEMM after a further 1 us gap (6,401-9,713); the step ends at 10,000 (287 us gap at the end).
    rows.append(("K", t0 + 5010 * US, t0 + 6000 * US, 7, "kiln::norm::forward"))
    rows.append(("C", t0 + 6300 * US, t0 + 6400 * US, 7, "memcpy"))
    rows.append(("K", t0 + 6401 * US, t0 + 9713 * US, 7, "nvjet_gemm"))
    return rows


class TimelineTest(unittest.TestCase):
    def run_on(self, rows):
        with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
            f.write("kind,start_ns,end_ns,stream,name\n")
            for k, s, e, st, n in rows:
                f.write(f'{k},{s},{e},{st},"{n}"\n')
        out = io.StringIO()
        argv = sys.argv
        try:
            sys.argv = ["timeline.py", f.name, "2"]
            with contextlib.redirect_stdout(out):
                timeline.main()
        finally:
            sys.argv = argv
            os.unlink(f.name)
        return out.getvalue()

    def test_account_of_a_known_trace(self):
        rows = []
        for i in range(8):
            rows += synthetic_step(i * 10_000 * US)
        text = self.run_on(rows)
        # 8 gradient-norm reductions -> 7 whole steps, from step 2: 5 steps of exactly 10 ms.
        self.assertIn("5 steps (from step 2); median step 10.00 ms", text)
        busy = float(re.search(r"GPU busy \(any stream\)\s+([\d.]+) ms", text).group(1))
        gaps = float(re.search(r"gaps \(nothing running\)\s+([\d.]+) ms", text).group(1))
        # busy: 0-200, 201-5000, 5010-6000, 6300-6400, 6401-9713 = 200+4799+990+100+3312 us.
        self.assertAlmostEqual(busy, 9.401, places=3)
        self.assertAlmostEqual(gaps, 0.599, places=3)
        self.assertAlmostEqual(busy + gaps, 10.0, places=3)
        bins = dict(re.findall(r"^\s+(< 2 us|2-5 us|5-20 us|20-100 us|>= 100 us)\s+(\d+) gaps",
                               text, re.M))
        # gaps: 1 us (200-201), 10 us (5000-5010), 300 us (6000-6300), 1 us (6400-6401),
        # 287 us (9713-10000)
        self.assertEqual(bins, {"< 2 us": "2", "2-5 us": "0", "5-20 us": "1", "20-100 us": "0",
                                ">= 100 us": "2"})
        # Overlapping streams count twice in the per-category sums: GEMMs 4,300 + 3,312 us.
        gemm = float(re.search(r"^GEMMs \(nvjet\)\s+([\d.]+)", text, re.M).group(1))
        self.assertAlmostEqual(gemm, 7.612, places=3)
        self.assertRegex(text, r"300\.0 us  after kiln::norm::forward")

    def test_too_few_steps_is_an_error_naming_the_count(self):
        with self.assertRaises(SystemExit) as e:
            self.run_on(synthetic_step(0) + synthetic_step(10_000 * US))
        self.assertIn("2 gradient-norm reductions found", str(e.exception))


if __name__ == "__main__":
    unittest.main()
