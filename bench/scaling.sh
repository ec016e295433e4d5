#!/usr/bin/env bash
# bench/scaling: step time of the mixtral-tiny recipe on 1, 2 and 4 ranks
# under mpirun (data parallel; tensor + sequence parallel; both; expert
# parallel), plus DP=2 and TP=2 on a simulated 10 us / 10 Gbit/s network
# (--sim_latency_us / --sim_bandwidth_gbps), with the speed-up relative to
# one rank.
#
# The corpus is built by examples/data/make_dataset.sh into a temporary
# directory; each run writes --log_jsonl there, and the step time is the
# median (with min and max) of step_s over steps 5..TRAIN_ITERS (the first
# steps touch fresh memory and warm the caches). The recipe's global batch of
# 16 is kept, in micro-batches of 4 on every run (DP=4 needs 16 % (M * 4) ==
# 0), so that all runs do the same work per step. The vocabulary is padded
# from 257 to 260 on every run, so that TP = 4 divides the embedding and LM
# head rows (the 3 extra ids never occur in the data). Every rank gets
# --threads = cores / ranks (at least 1), so the runs share the same cores.
# --bind-to none: OpenMPI binds each of up to 2 ranks to one core, which
# would put all of a single rank's threads on one core (measured: 0.17 s
# instead of 0.09 s per step for DP=1 with 2 threads).
#
#   bench/scaling.sh [TRAIN_ITERS]      (default 20; 3 for a smoke test)
# Environment: MOE_BUILD  the build directory (default build)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ITERS="${1:-20}"
BUILD="${MOE_BUILD:-$REPO/build}"
TRAIN="$BUILD/bin/moe-train"
MPIRUN="${MPIRUN:-mpirun}"
CORES="$(nproc)"
FIRST=5
[ "$ITERS" -ge "$FIRST" ] || FIRST=1

[ -x "$TRAIN" ] || { echo "scaling.sh: no $TRAIN; build it first (or set MOE_BUILD)" >&2; exit 2; }
command -v "$MPIRUN" >/dev/null || { echo "scaling.sh: no mpirun on PATH" >&2; exit 2; }

TMP="$(mktemp -d -t moe-scaling.XXXXXX)"
trap 'rm -rf "$TMP"' EXIT
MOE_PREPROCESS="$BUILD/bin/moe-preprocess" "$REPO/examples/data/make_dataset.sh" "$TMP/data" \
  >"$TMP/make_dataset.log" 2>&1 || { cat "$TMP/make_dataset.log" >&2; exit 1; }

# name ranks extra-flags
RUNS=(
  "dp1 1"
  "dp2 2"
  "dp4 4"
  "dp2_sim10us_10Gbit 2 --sim_latency_us=10 --sim_bandwidth_gbps=10"
  "tp2_sp 2 --tensor_model_parallel_size=2 --sequence_parallel"
  "tp4_sp 4 --tensor_model_parallel_size=4 --sequence_parallel"
  "tp2_sp_dp2 4 --tensor_model_parallel_size=2 --sequence_parallel"
  "tp2_sp_sim10us_10Gbit 2 --tensor_model_parallel_size=2 --sequence_parallel --sim_latency_us=10 --sim_bandwidth_gbps=10"
  "ep2 2 --expert_model_parallel_size=2"
  "tp2_sp_ep2 2 --tensor_model_parallel_size=2 --sequence_parallel --expert_model_parallel_size=2"
)

# Prints "median min max" of step_s over steps FIRST..ITERS of a step log.
summarize() {
  python3 - "$1" "$FIRST" <<'EOF'
import json, statistics, sys
first = int(sys.argv[2])
steps = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
t = [r["step_s"] for r in steps if r["step"] >= first]
print(f"{statistics.median(t):.4f} {min(t):.4f} {max(t):.4f}")
EOF
}

cd "$REPO"  # the recipe's paths are relative to the repository root
echo "mixtral-tiny, $ITERS steps, step_s median [min..max] of steps $FIRST..$ITERS; $CORES cores"
printf '%-22s %5s %7s %10s %22s %8s\n' run ranks threads "median s" "[min..max]" speed-up
base=""
for run in "${RUNS[@]}"; do
  read -r name ranks extra <<<"$run"
  threads=$((CORES / ranks))
  [ "$threads" -ge 1 ] || threads=1
  log="$TMP/$name.jsonl"
  # shellcheck disable=SC2086  # extra holds several flags
  if ! OMP_NUM_THREADS="$threads" "$MPIRUN" --allow-run-as-root --oversubscribe --bind-to none -n "$ranks" \
      -x OMP_NUM_THREADS "$TRAIN" --flagfile=examples/recipes/mixtral-tiny.flags \
      --data_path="$TMP/data/corpus_train_text_document" --valid_data_path= \
      --vocab_size=260 --micro_batch_size=4 --train_iters="$ITERS" --lr_warmup_iters=0 --log_interval=1000 --threads="$threads" \
      --log_jsonl="$log" $extra >"$TMP/$name.out" 2>&1; then
    echo "scaling.sh: $name failed:" >&2
    cat "$TMP/$name.out" >&2
    exit 1
  fi
  read -r median lo hi <<<"$(summarize "$log")"
  [ -n "$base" ] || base="$median"
  speedup="$(python3 -c "print(f'{$base / $median:.2f}')")"
  printf '%-22s %5d %7d %10s %22s %8s\n' "$name" "$ranks" "$threads" "$median" "[$lo..$hi]" \
    "${speedup}x"
done
