#!/usr/bin/env bash
# Installs everything the build and the tests need, idempotently:
#   - Debian packages (compilers, OpenMPI, Abseil, GoogleTest, Google Benchmark,
#     prometheus-cpp, OpenBLAS; and the real services the end-to-end tests
#     start: a Prometheus server, Slurm and munge),
#   - a Python virtualenv for the reference checks (torch on the CPU,
#     transformers, safetensors, numpy), kept outside the clone so that later
#     runs reuse it.
# CUDA, cuBLAS, cuDNN and NCCL come from the CUDA toolkit already on the machine.
#
# Environment:
#   MOE_VENV        where the virtualenv lives (default ~/.cache/moe-train/venv)
#   MOE_SKIP_PYTHON set to 1 to skip the virtualenv (the reference tests then
#                   report themselves as skipped)
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "install-deps: not root and no sudo; run as root or install sudo." >&2
    exit 1
  fi
fi

DEB_PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  openmpi-bin libopenmpi-dev
  libabsl-dev
  libgtest-dev libgmock-dev
  libbenchmark-dev
  prometheus-cpp-dev
  prometheus slurm-wlm munge
  libopenblas-dev libopenblas-openmp-dev
  python3 python3-venv python3-pip
  clang-format
)

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "install-deps: Debian packages already installed"
fi

if [ "${MOE_SKIP_PYTHON:-0}" = "1" ]; then
  echo "install-deps: MOE_SKIP_PYTHON=1, not creating the reference virtualenv"
  exit 0
fi

VENV="${MOE_VENV:-$HOME/.cache/moe-train/venv}"
PY_PACKAGES=(torch transformers safetensors numpy megatron-core)
if [ ! -x "$VENV/bin/python" ]; then
  echo "install-deps: creating virtualenv $VENV"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch, transformers, safetensors, numpy, megatron.core" >/dev/null 2>&1; then
  echo "install-deps: installing ${PY_PACKAGES[*]} into $VENV (first run only)"
  "$VENV/bin/pip" install -q "${PY_PACKAGES[@]}"
else
  echo "install-deps: reference virtualenv ready at $VENV"
fi
