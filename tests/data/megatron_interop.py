"""Our indexed datasets against megatron-core's, both ways and byte for byte.

  1. Files written by our IndexedDatasetWriter (every integer dtype; empty
     documents; documents of several sequences) read by
     megatron.core.datasets.indexed_dataset.IndexedDataset: same dtype,
     sequences, lengths, pointers and document indices.
  2. Files written by megatron-core's IndexedDatasetBuilder (add_item +
     end_document, and add_document with several lengths) read by ours.
  3. For the same documents, both writers produce identical .bin and .idx bytes.

Usage: megatron_interop.py DATA_TOOL WORK_DIR
Exit codes: 0 all match, 1 a mismatch, 77 megatron-core or torch is missing (skipped).
"""

import json
import logging
import os
import subprocess
import sys
import warnings

TOOL, WORK = sys.argv[1], sys.argv[2]

try:
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder
except ImportError as error:
    print(f"SKIP: megatron-core is not importable ({error}); run scripts/install-deps.sh")
    sys.exit(77)

failures = []


def check(what, ok, detail=""):
    print(f"  {'ok  ' if ok else 'FAIL'} {what}{'' if ok else ': ' + detail}")
    if not ok:
        failures.append(what)


def tool(*args):
    result = subprocess.run([TOOL, *args], capture_output=True, text=True)
    if result.returncode != 0:
        print(f"FAIL: data_tool {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        sys.exit(1)
    return result.stdout


def documents(low, high, seed):
    """Documents (lists of sequences) with tokens in [low, high]."""
    rng = np.random.default_rng(seed)
    docs = []
    for d in range(9):
        if d == 3:
            docs.append([])  # no sequences
            continue
        sequences = 3 if d in (1, 6) else 1
        docs.append(
            [rng.integers(low, high, size=int(rng.integers(1, 40)), endpoint=True).tolist()
             for _ in range(sequences)]
        )
    # The extremes of the dtype.
    docs.append([[low, high, low, high]])
    return docs


def expected_layout(docs):
    sequences = [seq for doc in docs for seq in doc]
    doc_indices = [0]
    for doc in docs:
        doc_indices.append(doc_indices[-1] + len(doc))
    return sequences, doc_indices


CASES = [  # (code, numpy dtype, low, high)
    (1, np.uint8, 0, 255),
    (2, np.int8, -128, 127),
    (3, np.int16, -32768, 32767),
    (4, np.int32, -(2**31), 2**31 - 1),
    (5, np.int64, -(2**31), 2**31 - 1),
    (8, np.uint16, 0, 65535),
]

os.makedirs(WORK, exist_ok=True)

print("our writer -> megatron-core IndexedDataset")
for code, dtype, low, high in CASES:
    name = np.dtype(dtype).name
    docs = documents(low, high, code)
    sequences, doc_indices = expected_layout(docs)
    docs_path = os.path.join(WORK, f"docs_{name}.json")
    with open(docs_path, "w") as f:
        json.dump(docs, f)
    prefix = os.path.join(WORK, f"ours_{name}")
    tool("write", prefix, str(code), docs_path)
    ds = IndexedDataset(prefix)
    check(f"{name}: dtype", ds.index.dtype == dtype, f"{ds.index.dtype}")
    check(f"{name}: sequence count", len(ds) == len(sequences), f"{len(ds)} vs {len(sequences)}")
    check(f"{name}: document indices", ds.document_indices.tolist() == doc_indices,
          f"{ds.document_indices.tolist()} vs {doc_indices}")
    check(f"{name}: lengths", ds.sequence_lengths.tolist() == [len(s) for s in sequences])
    itemsize = np.dtype(dtype).itemsize
    pointers = np.cumsum([0] + [len(s) * itemsize for s in sequences[:-1]]).tolist()
    check(f"{name}: pointers", ds.index.sequence_pointers.tolist() == pointers)
    check(f"{name}: tokens",
          all(ds[i].tolist() == seq for i, seq in enumerate(sequences)))
    check(f"{name}: get(offset, length)",
          all(ds.get(i, 1, len(seq) - 1).tolist() == seq[1:]
              for i, seq in enumerate(sequences) if len(seq) > 1))

print("megatron-core IndexedDatasetBuilder -> our reader, byte-identical files")
for code, dtype, low, high in CASES:
    name = np.dtype(dtype).name
    docs = documents(low, high, 100 + code)
    sequences, doc_indices = expected_layout(docs)
    theirs = os.path.join(WORK, f"theirs_{name}")
    builder = IndexedDatasetBuilder(theirs + ".bin", dtype=dtype)
    for d, doc in enumerate(docs):
        if d % 2 == 0:
            for seq in doc:
                builder.add_item(torch.tensor(seq, dtype=torch.int64))
            builder.end_document()
        else:
            flat = [t for seq in doc for t in seq]
            builder.add_document(np.array(flat, dtype=np.int64), [len(seq) for seq in doc])
    builder.finalize(theirs + ".idx")
    check(f"{name}: megatron's dtype code is {code}", DType.code_from_dtype(dtype) == code)
    dump = json.loads(tool("dump", theirs))
    check(f"{name}: dtype", dump["dtype"] == code, f"{dump['dtype']}")
    check(f"{name}: sequences", dump["sequences"] == sequences)
    check(f"{name}: document indices", dump["document_indices"] == doc_indices,
          f"{dump['document_indices']} vs {doc_indices}")
    check(f"{name}: lengths", dump["lengths"] == [len(s) for s in sequences])

    docs_path = os.path.join(WORK, f"docs_theirs_{name}.json")
    with open(docs_path, "w") as f:
        json.dump(docs, f)
    ours = os.path.join(WORK, f"same_{name}")
    tool("write", ours, str(code), docs_path)
    for ext in (".bin", ".idx"):
        with open(theirs + ext, "rb") as f:
            a = f.read()
        with open(ours + ext, "rb") as f:
            b = f.read()
        check(f"{name}: {ext} identical to megatron-core's ({len(a)} bytes)", a == b,
              f"{len(b)} vs {len(a)} bytes")

if failures:
    print(f"FAILED: {len(failures)} check(s): {failures}")
    sys.exit(1)
print("all checks passed")
