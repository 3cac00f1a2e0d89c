#!/usr/bin/env bash
# End-to-end GPT-2 124M tokens/s on one GPU: kiln and the PyTorch reference in one command, on the
# same GPU. Usage: benchmarks/e2e/run.sh BUILD_DIR [OUT_DIR]
set -euo pipefail
build=$1 out=${2:-/tmp/kiln-e2e}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
"$build/bin/kiln" train --config "$here/gpt2-124m-bench.textproto" \
  --overwrite --set logging.run_dir="$out/kiln" 2>&1 | tee "$out/kiln.log"
# Median tokens/s over steps 10..30 (the first steps include allocator and plan warm-up).
python3 - "$out/kiln/metrics.jsonl" <<'PY' | tee "$out/kiln_summary.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"kind":"train"' in l]
tok = sorted(r["tokens_per_s"] for r in rows if r["step"] >= 10)
mfu = sorted(r["mfu"] for r in rows if r["step"] >= 10)
print(f"kiln: GPT-2 124M batch 32x1024 bf16: {tok[len(tok)//2]:,.0f} tok/s, MFU {100*mfu[len(mfu)//2]:.1f}%"
      f" (median of steps 10-{rows[-1]['step']}), peak memory {rows[-1]['mem_peak_mib']:.0f} MiB")
PY
python3 "$here/pytorch_gpt2.py" > "$out/pytorch.log" 2>&1
grep -A14 "torch.compile failed" "$out/pytorch.log" || true
grep "^pytorch" "$out/pytorch.log"
