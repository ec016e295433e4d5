#!/usr/bin/env bash
# The first of the two commands: installs the dependencies, builds the
# framework (Release) into build/, makes the small real data set and trains
# the mixtral-tiny recipe on it, printing the falling loss.
#
#   data/corpus_{train,valid}_text_document.bin/.idx   the byte-level corpus
#                                                       (examples/data/make_dataset.sh)
#   out/mixtral-tiny/train_log.jsonl                    one JSON object per step
#
# Training runs on one process with every core (OpenMP); a few minutes on 2
# cores. Multi-rank training comes with the parallel runtime.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh

if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$(nproc)"

echo
echo "quickstart: making the data set (data/)"
MOE_PREPROCESS=build/bin/moe-preprocess ./examples/data/make_dataset.sh data

RECIPE=examples/recipes/mixtral-tiny.flags
LOG=out/mixtral-tiny/train_log.jsonl
# moe-train appends to its log; start this run's afresh.
rm -f "$LOG"
echo
echo "quickstart: training $RECIPE"
build/bin/moe-train --flagfile="$RECIPE" --log_jsonl="$LOG"

echo
echo "quickstart: done. The step log (one JSON object per step: loss, lm_loss, aux_loss, lr,"
echo "quickstart: grad_norm, tokens_per_s, val_loss at validation steps) is $LOG"
echo "quickstart: run the tests with ./scripts/test.sh (the slow end-to-end ones: ctest -L slow)."
