#!/usr/bin/env bash
# Builds a small real corpus (about 4.5 MB) from text that every Debian machine
# has: the licenses in /usr/share/common-licenses and Python standard library
# sources, taken from the pinned list examples/data/files.txt. Each file is one
# document; every 20th document (the 20th, 40th, ...) is held out for
# validation. Writes, in OUT_DIR (default: data/ in the repository root):
#
#   corpus_train.jsonl, corpus_valid.jsonl          {"text": ...} per document
#   corpus_train_text_document.bin/.idx             byte tokenizer, --append_eod
#   corpus_valid_text_document.bin/.idx
#   corpus.sha256                                    checksum of the corpus text
#   corpus_files.txt                                 the files used, with sizes
#
# The checksum is of the files' bytes concatenated in list order; package
# versions differ between images, so compare it to know whether two machines
# trained on the same text. Running again with an unchanged corpus does
# nothing; otherwise every output is rewritten (atomically).
#
#   examples/data/make_dataset.sh [OUT_DIR]
# Environment: MOE_PREPROCESS  the moe-preprocess binary (default build/bin/moe-preprocess)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT_DIR="${1:-$REPO/data}"
LIST="$REPO/examples/data/files.txt"
PREPROCESS="${MOE_PREPROCESS:-$REPO/build/bin/moe-preprocess}"
PYTHON=/usr/bin/python3
[ -x "$PYTHON" ] || PYTHON="$(command -v python3 || true)"

if [ -z "$PYTHON" ]; then
  echo "make_dataset: python3 not found (scripts/install-deps.sh installs it)" >&2
  exit 1
fi
if [ ! -x "$PREPROCESS" ]; then
  echo "make_dataset: $PREPROCESS not found; build first (cmake -S . -B build && cmake --build build)" \
    "or set MOE_PREPROCESS" >&2
  exit 1
fi
mkdir -p "$OUT_DIR"

# Collects the corpus, its checksum and the JSONL files; prints the checksum
# and whether the outputs are already up to date.
status="$("$PYTHON" - "$LIST" "$OUT_DIR" <<'EOF'
import hashlib, json, os, sys, sysconfig

list_path, out_dir = sys.argv[1], sys.argv[2]
stdlib = sysconfig.get_paths()["stdlib"]
paths, missing = [], []
with open(list_path) as f:
    for line in f:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = os.path.join(stdlib, line[len("stdlib/"):]) if line.startswith("stdlib/") else line
        (paths if os.path.isfile(path) else missing).append(path)
if missing:
    print(f"make_dataset: warning: {len(missing)} listed files are missing here and skipped "
          f"(first: {missing[0]})", file=sys.stderr)
if not paths:
    sys.exit("make_dataset: none of the listed files exist")

digest = hashlib.sha256()
docs = []
for path in paths:
    with open(path, "rb") as f:
        data = f.read()
    digest.update(data)
    docs.append((path, data))
sha = digest.hexdigest()
total = sum(len(d) for _, d in docs)
summary = f"{sha}  {len(docs)} files, {total} bytes"

outputs = [os.path.join(out_dir, f"corpus_{s}_text_document.{e}")
           for s in ("train", "valid") for e in ("bin", "idx")]
sha_path = os.path.join(out_dir, "corpus.sha256")
if os.path.exists(sha_path) and all(os.path.exists(p) for p in outputs):
    with open(sha_path) as f:
        if f.read().strip() == summary:
            print(f"up-to-date {summary}")
            sys.exit(0)


def write(path, text):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


splits = {"train": [], "valid": []}
for i, (path, data) in enumerate(docs):
    text = data.decode("utf-8", errors="replace")
    splits["valid" if i % 20 == 19 else "train"].append(json.dumps({"text": text}))
for split, lines in splits.items():
    write(os.path.join(out_dir, f"corpus_{split}.jsonl"), "\n".join(lines) + "\n")
write(os.path.join(out_dir, "corpus_files.txt"),
      "".join(f"{len(data)}\t{path}\n" for path, data in docs))
print(f"build {summary}")
EOF
)"
read -r action sha rest <<<"$status"
if [ "$action" = "up-to-date" ]; then
  echo "make_dataset: $OUT_DIR is up to date; corpus sha256 $sha ($rest)"
  exit 0
fi

for split in train valid; do
  "$PREPROCESS" --input="$OUT_DIR/corpus_$split.jsonl" --output_prefix="$OUT_DIR/corpus_$split" \
    --tokenizer=byte --json_keys=text --append_eod
done
# Written last: its presence with matching outputs means the build completed.
echo "$sha  $rest" >"$OUT_DIR/corpus.sha256.tmp.$$"
mv "$OUT_DIR/corpus.sha256.tmp.$$" "$OUT_DIR/corpus.sha256"
echo "make_dataset: corpus sha256 $sha ($rest)"
echo "make_dataset: wrote $OUT_DIR/corpus_train_text_document and $OUT_DIR/corpus_valid_text_document"
