#!/usr/bin/env bash
# Installs kiln's build and test dependencies on Debian 12 (run as root, or with sudo available).
# Idempotent: packages already present are skipped, so it is cheap on a prepared machine.
set -euo pipefail
pkgs=(build-essential cmake ninja-build ccache pkg-config git
      libopenmpi-dev openmpi-bin libprotobuf-dev protobuf-compiler
      libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev libopenblas-dev clang-format
      nodejs npm python3
      clang libclang-rt-14-dev  # clang + its libFuzzer/ASan runtime: the fuzz tests (tests/fuzz)
      slurm-wlm munge  # a private one-node Slurm cluster for the slurm test (tests/slurm)
      python3-torch  # the PyTorch oracle (tests/oracle): CPU PyTorch 1.13 from Debian
      strace)        # the checkpoint durability test (tests/durability_test.py)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# A node already on PATH (e.g. a newer one installed outside apt) serves as well as Debian's.
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
fi
read -r -a missing <<<"${missing[*]:-}"
if ((${#missing[@]})); then
  echo "install_deps: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install_deps: all packages present"
fi
