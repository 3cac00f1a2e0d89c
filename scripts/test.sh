#!/usr/bin/env bash
# The test command: installs what is missing (Debian 12), fetches the default corpus and the GPT-2
# reference encoder, builds everything and runs the whole suite with ctest. GPU tests skip cleanly
# on machines without a GPU. Usage: bash scripts/test.sh [ctest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/install_deps.sh
bash scripts/fetch_data.sh
bash scripts/build.sh
bash scripts/check_format.sh
# The Slurm cluster test (label slurm, ~3 min, run alone) is part of the suite; it reports itself
# skipped when not root or without slurm-wlm / munge.
ctest --test-dir build --output-on-failure -j"$(nproc)" --timeout 600 "$@"
echo "test.sh: done in $(( $(date +%s) - start )) s"
