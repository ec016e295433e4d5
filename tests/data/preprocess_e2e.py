"""moe-preprocess end to end, read back with megatron-core.

  - JSONL with two keys (one output per key, named {prefix}_{key}_document),
    an empty text (a document with no sequences, no EOD, as Megatron), a list
    of sentences (one sequence each, EOD on the last), non-ASCII text;
    plain-text files (one document each) mixed with JSONL; byte tokenizer and
    a BPE tokenizer.json trained here (ids from the `tokenizers` package).
  - Errors: a missing file, a bad JSON line (its number), a missing key, a
    non-string value, invalid UTF-8, a plain-text file with two keys. Each is
    reported, the exit code is non-zero, and neither new files nor temporary
    files appear; an existing output is left as it was.

Usage: preprocess_e2e.py MOE_PREPROCESS WORK_DIR
Exit codes: 0 all pass, 1 a failure, 77 megatron-core is missing (skipped).
"""

import glob
import json
import logging
import os
import shutil
import subprocess
import sys
import warnings

PREPROCESS, WORK = sys.argv[1], sys.argv[2]

try:
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDataset
except ImportError as error:
    print(f"SKIP: megatron-core is not importable ({error}); run scripts/install-deps.sh")
    sys.exit(77)

failures = []


def check(what, ok, detail=""):
    print(f"  {'ok  ' if ok else 'FAIL'} {what}{'' if ok else ': ' + detail}")
    if not ok:
        failures.append(what)


def run(*flags):
    return subprocess.run([PREPROCESS, *flags], capture_output=True, text=True)


def read(prefix):
    ds = IndexedDataset(prefix)
    return ([ds[i].tolist() for i in range(len(ds))], ds.document_indices.tolist(),
            ds.index.dtype)


def byte_ids(text):
    return list(text.encode("utf-8"))


shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
DOCS = [
    {"text": "Hello, world!\n", "title": "greeting"},
    {"text": "", "title": "empty text"},
    {"text": ["First sentence. ", "", "Second sentence, café 日本 😀."], "title": "sentences"},
    {"text": "  indented\n\ttabbed\n", "title": ""},
]
jsonl = os.path.join(WORK, "docs.jsonl")
with open(jsonl, "w", encoding="utf-8") as f:
    for doc in DOCS:
        f.write(json.dumps(doc, ensure_ascii=False) + "\n")
plain = os.path.join(WORK, "plain.txt")
PLAIN_TEXT = "A plain text file.\nSecond line — ünïcödé.\n"
with open(plain, "w", encoding="utf-8") as f:
    f.write(PLAIN_TEXT)


def expected(texts_per_doc, encode, eod):
    """Sequences and document indices as Megatron's preprocess_data.py writes them."""
    sequences, doc_indices = [], [0]
    for texts in texts_per_doc:
        ids = [encode(t) for t in (texts if isinstance(texts, list) else [texts])]
        ids = [s for s in ids if s]
        if ids and eod is not None:
            ids[-1] = ids[-1] + [eod]
        sequences += ids
        doc_indices.append(len(sequences))
    return sequences, doc_indices


print("byte tokenizer, JSONL with two keys, --append_eod")
prefix = os.path.join(WORK, "two_keys")
result = run(f"--input={jsonl}", f"--output_prefix={prefix}", "--json_keys=text,title",
             "--append_eod")
check("exit code 0", result.returncode == 0, result.stderr)
check("prints the output paths", f"{prefix}_text_document.bin" in result.stdout, result.stdout)
for key in ("text", "title"):
    seqs, docs, dtype = read(f"{prefix}_{key}_document")
    want_seqs, want_docs = expected([d[key] for d in DOCS], byte_ids, 256)
    check(f"{key}: sequences", seqs == want_seqs, f"{seqs} vs {want_seqs}")
    check(f"{key}: document indices", docs == want_docs, f"{docs} vs {want_docs}")
    check(f"{key}: dtype uint16", dtype == np.uint16, str(dtype))

print("byte tokenizer, plain text + JSONL, no EOD")
prefix = os.path.join(WORK, "mixed")
result = run(f"--input={plain},{jsonl}", f"--output_prefix={prefix}", "--tokenizer=byte")
check("exit code 0", result.returncode == 0, result.stderr)
seqs, docs, _ = read(f"{prefix}_text_document")
want_seqs, want_docs = expected([PLAIN_TEXT] + [d["text"] for d in DOCS], byte_ids, None)
check("sequences", seqs == want_seqs)
check("document indices", docs == want_docs, f"{docs} vs {want_docs}")

try:
    from tokenizers import ByteLevelBPETokenizer

    print("BPE tokenizer.json")
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator([PLAIN_TEXT * 5] + [str(d) for d in DOCS], vocab_size=300,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    tok_path = os.path.join(WORK, "tokenizer.json")
    tok.save(tok_path)
    prefix = os.path.join(WORK, "bpe")
    result = run(f"--input={jsonl},{plain}", f"--output_prefix={prefix}",
                 f"--tokenizer={tok_path}", "--append_eod")
    check("exit code 0", result.returncode == 0, result.stderr)
    seqs, docs, _ = read(f"{prefix}_text_document")
    eod = tok.token_to_id("<|endoftext|>")
    want_seqs, want_docs = expected([d["text"] for d in DOCS] + [PLAIN_TEXT],
                                    lambda t: tok.encode(t).ids, eod)
    check("sequences equal tokenizers' ids + EOD", seqs == want_seqs)
    check("document indices", docs == want_docs)
except ImportError:
    print("  skip the BPE part: the tokenizers package is missing")

print("errors: reported, nothing written")


def write_file(name, data):
    path = os.path.join(WORK, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


bad_line = write_file("bad_line.jsonl", b'{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n')
no_key = write_file("no_key.jsonl", b'{"text": "ok"}\n{"body": "no text"}\n')
not_string = write_file("not_string.jsonl", b'{"text": 42}\n')
not_utf8 = write_file("latin1.txt", "caf\u00e9".encode("latin-1"))
ERRORS = [
    ("missing file", [f"--input={jsonl},{WORK}/nope.jsonl"], ["nope.jsonl"]),
    ("bad JSON line", [f"--input={bad_line}"], ["bad_line.jsonl line 3"]),
    ("missing key", [f"--input={no_key}"], ["no_key.jsonl line 2", 'no key "text"']),
    ("non-string value", [f"--input={not_string}"], ["must be a string or a list of strings"]),
    ("invalid UTF-8", [f"--input={not_utf8}"], ["latin1.txt is not valid UTF-8"]),
    ("plain text with two keys", [f"--input={plain}", "--json_keys=text,title"],
     ["fits only one --json_keys"]),
    ("missing tokenizer file", [f"--input={jsonl}", f"--tokenizer={WORK}/none.json"],
     ["none.json"]),
    ("no output prefix", [f"--input={jsonl}", "--output_prefix="], ["--output_prefix"]),
]
existing = os.path.join(WORK, "existing")
result = run(f"--input={plain}", f"--output_prefix={existing}")
check("writes the output that the failing runs must leave alone", result.returncode == 0,
      result.stderr)
with open(f"{existing}_text_document.idx", "rb") as f:
    existing_idx = f.read()
for what, flags, parts in ERRORS:
    before = set(os.listdir(WORK))
    if not any(flag.startswith("--output_prefix") for flag in flags):
        flags = flags + [f"--output_prefix={existing}"]
    result = run(*flags)
    after = set(os.listdir(WORK))
    check(f"{what}: non-zero exit", result.returncode != 0, f"exit {result.returncode}")
    missing = [p for p in parts if p not in result.stderr]
    check(f"{what}: message names {parts}", not missing, result.stderr.strip())
    check(f"{what}: no files created", after == before, f"{sorted(after - before)}")
    with open(f"{existing}_text_document.idx", "rb") as f:
        check(f"{what}: existing output unchanged", f.read() == existing_idx)
check("no temporary files left", not glob.glob(os.path.join(WORK, "*.tmp.*")))

if failures:
    print(f"FAILED: {len(failures)} check(s): {failures}")
    sys.exit(1)
print("all checks passed")
