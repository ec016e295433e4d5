#!/usr/bin/env bash
# The first of the two commands: installs the dependencies and builds the
# framework (Release) into build/.
#
# Today that is all it does: the core library (tensors, CPU and CUDA kernels,
# layers with exact gradients, AdamW, safetensors/.npy I/O), its tests and
# benchmarks. Training a Mixtral-shaped model on a small real data set comes
# with the single-rank model and trainer (issue "Mixtral on one rank"), and
# this script will then build the data set and train.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh

if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$(nproc)"

echo
echo "quickstart: built into build/ (libraries in build/lib, binaries in build/bin)."
echo "quickstart: run the tests with ./scripts/test.sh, the benchmarks with build/bin/linear_bench."
