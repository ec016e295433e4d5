#!/usr/bin/env bash
# The first of the two commands: installs the dependencies, builds the
# framework (Release) into build/, makes the small real data set and trains
# the mixtral-tiny recipe on it on 2 local ranks through moe-launch (expert
# parallel 2: each rank holds 4 of the 8 experts of every layer), serving
# Prometheus metrics while it trains, saving checkpoints, and exporting the
# result to Hugging Face. What it leaves:
#
#   data/corpus_{train,valid}_text_document.bin/.idx   the byte-level corpus
#                                                       (examples/data/make_dataset.sh)
#   out/mixtral-tiny/train_log.jsonl                    one JSON object per step
#   out/mixtral-tiny/logs/rank_{0,1}.log                each rank's output
#   out/mixtral-tiny/ckpt/                              checkpoints (latest = step 300)
#   out/mixtral-tiny/hf/                                config.json + model.safetensors
#                                                       for MixtralForCausalLM
#
# About 40 s of training on 2 cores; the validation loss falls from 5.55 to
# about 2.2 nats per byte, the same as on one process.
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
OUT=out/mixtral-tiny
LOG=$OUT/train_log.jsonl
# moe-train appends to its log and resumes nothing here: start afresh.
rm -rf "$LOG" "$OUT/logs" "$OUT/ckpt" "$OUT/hf"

# The first free port from 9400 up for the metrics (rank r serves port + r).
PORT=9400
while (: </dev/tcp/127.0.0.1/$PORT) 2>/dev/null || (: </dev/tcp/127.0.0.1/$((PORT + 1))) 2>/dev/null; do
  PORT=$((PORT + 2))
done

echo
echo "quickstart: training $RECIPE on 2 ranks (expert parallel 2)"
echo "quickstart: metrics at http://localhost:$PORT/metrics while it runs"
build/bin/moe-launch -n 2 --log_dir="$OUT/logs" -- \
  build/bin/moe-train --flagfile="$RECIPE" --expert_model_parallel_size=2 \
  --log_jsonl="$LOG" --save="$OUT/ckpt" --save_interval=100 --metrics_port="$PORT"

echo
echo "quickstart: exporting the last checkpoint to Hugging Face"
build/bin/moe-convert --to_hf --load="$OUT/ckpt" --out="$OUT/hf"

echo
echo "quickstart: done."
echo "  step log      $LOG (loss, lm_loss, aux_loss, lr, grad_norm, tokens_per_s,"
echo "                val_loss at validation steps, per-expert load)"
echo "  rank logs     $OUT/logs/rank_0.log, $OUT/logs/rank_1.log"
echo "  checkpoints   $OUT/ckpt (resume with --load=$OUT/ckpt)"
echo "  Hugging Face  $OUT/hf (MixtralForCausalLM.from_pretrained(\"$OUT/hf\"))"
echo "Run the tests with ./scripts/test.sh (the slow end-to-end ones: ctest -L slow)."
