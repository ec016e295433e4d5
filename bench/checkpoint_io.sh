#!/usr/bin/env bash
# Checkpoint save and load throughput of moe-train against the disk's own
# figure, measured in the same run (docs/BENCHMARKS.md "Checkpoint I/O").
#
#   bench/checkpoint_io.sh [BUILD_DIR] [REPEATS]
#
# A 55M-parameter model (hidden 512, 4 layers, 8 experts of width 1024) is
# trained for one step and saved (weights + AdamW state, about 0.66 GB, with
# fsync and CRC-32), then loaded by a second run. The peer is dd writing the
# same number of bytes with conv=fsync, and reading them back. Reads come
# from the page cache in both cases (the container cannot drop it), so the
# load figure is the cost of parsing, checking and copying, not of the disk.
# Prints the median and the spread over REPEATS runs.
set -euo pipefail
BUILD=${1:-build}
REPEATS=${2:-3}
TRAIN=$BUILD/bin/moe-train
PREPROCESS=$BUILD/bin/moe-preprocess
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

python3 - "$WORK/text.jsonl" <<'PY'
import json, random, sys
random.seed(1)
with open(sys.argv[1], "w") as f:
    for _ in range(200):
        f.write(json.dumps({"text": "".join(random.choice("abcdefgh ") for _ in range(400))}) + "\n")
PY
"$PREPROCESS" --input="$WORK/text.jsonl" --output_prefix="$WORK/data" > /dev/null

DATA=$(ls "$WORK"/data*.bin | head -1)
FLAGS="--num_layers=4 --hidden_size=512 --ffn_hidden_size=1024 --num_attention_heads=8
  --num_experts=8 --moe_router_topk=2 --vocab_size=257 --seq_length=64 --micro_batch_size=2
  --global_batch_size=2 --lr=1e-4 --log_interval=1 --data_path=${DATA%.bin}"

save=() load=() ddw=() ddr=()
for r in $(seq "$REPEATS"); do
  rm -rf "$WORK/ckpt"
  out=$("$TRAIN" $FLAGS --train_iters=1 --save="$WORK/ckpt" --save_interval=1)
  save+=($(echo "$out" | sed -n 's/.*checkpoint | step 1 .* (\([0-9.]*\) GB\/s).*/\1/p' | tail -1))
  out=$("$TRAIN" $FLAGS --train_iters=2 --load="$WORK/ckpt")
  load+=($(echo "$out" | sed -n 's/.*loaded .* (\([0-9.]*\) GB\/s).*/\1/p'))
  bytes=$(du -sb "$WORK/ckpt/iter_0000001" | cut -f1)
  mb=$((bytes / 1048576))
  t0=$(date +%s.%N)
  dd if=/dev/zero of="$WORK/dd" bs=1M count="$mb" conv=fsync status=none
  t1=$(date +%s.%N)
  dd if="$WORK/dd" of=/dev/null bs=1M status=none
  t2=$(date +%s.%N)
  ddw+=($(python3 -c "print(f'{$mb * 1048576 / ($t1 - $t0) / 1e9:.3f}')"))
  ddr+=($(python3 -c "print(f'{$mb * 1048576 / ($t2 - $t1) / 1e9:.3f}')"))
  rm -f "$WORK/dd"
done

python3 - "${save[*]}" "${load[*]}" "${ddw[*]}" "${ddr[*]}" "$bytes" <<'PY'
import statistics, sys
save, load, ddw, ddr = ([float(x) for x in a.split()] for a in sys.argv[1:5])
size = int(sys.argv[5]) / 1e9
def line(name, xs):
    return f"{name:<22} median {statistics.median(xs):6.2f} GB/s  (min {min(xs):.2f}, max {max(xs):.2f})"
print(f"checkpoint of {size:.2f} GB, {len(save)} repeats")
print(line("save (fsync, CRC)", save))
print(line("dd write (fsync)", ddw))
print(f"save / dd write        {statistics.median(save) / statistics.median(ddw):.2f}")
print(line("load (CRC, reshard)", load))
print(line("dd read (page cache)", ddr))
print(f"load / dd read         {statistics.median(load) / statistics.median(ddr):.2f}")
PY
