#!/usr/bin/env bash
# Configures and builds kiln into ./build (Release, ccache). CUDA is built when nvcc is found.
# Extra CMake arguments pass through, e.g. scripts/build.sh -DKILN_CUDA=OFF.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/cuda/bin"
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
if [ -f build/CMakeCache.txt ]; then gen=(); fi
cmake -S . -B build "${gen[@]}" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build -j"$(nproc)"
