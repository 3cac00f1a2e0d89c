#!/usr/bin/env bash
# Fails when a tracked C++/CUDA source is not clang-formatted (.clang-format at the root).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v clang-format >/dev/null; then
  echo "check_format: clang-format not installed, skipping"; exit 0
fi
bad=$(git ls-files '*.h' '*.cc' '*.cu' '*.cuh' | xargs -r clang-format --dry-run -Werror 2>&1 \
      | grep -oE '^[^:]+\.(h|cc|cu|cuh)' | sort -u || true)
if [ -n "$bad" ]; then
  echo "check_format: not formatted (run clang-format -i):"; echo "$bad"; exit 1
fi
# launch/: no file over 600 lines, no function over 80 (scripts/check_lengths.sh).
if ! lengths=$(bash "$(dirname "$0")/check_lengths.sh"); then
  echo "$lengths"; exit 1
fi
echo "check_format: ok"
