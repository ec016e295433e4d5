#!/usr/bin/env bash
# Installs dependencies, builds everything (with the CUDA backend when nvcc is
# present) with warnings as errors, and runs the whole test suite through CTest.
#
# Environment:
#   MOE_BUILD_DIR   build directory (default: build)
#   MOE_JOBS        parallel build jobs (default: number of cores)
#   MOE_VENV        the reference virtualenv (default ~/.cache/moe-train/venv)
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh

BUILD_DIR="${MOE_BUILD_DIR:-build}"
JOBS="${MOE_JOBS:-$(nproc)}"
# nvcc lives in the toolkit's bin/, which is not always on PATH.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi

cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOE_WERROR=ON \
  -DMOE_PYTHON="${MOE_VENV:-$HOME/.cache/moe-train/venv}/bin/python"
cmake --build "$BUILD_DIR" -j "$JOBS"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS"
