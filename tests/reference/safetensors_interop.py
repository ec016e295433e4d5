"""Our safetensors and .npy files against the Python packages, byte for byte.

Parts (one CTest test each, so a missing package skips only its part):
  numpy  our writer -> safetensors.numpy.load_file; safetensors.numpy.save_file
         -> our reader.
  torch  our writer (incl. BF16) -> safetensors.torch.load_file;
         safetensors.torch.save_file (F32, BF16, I64, I32, F64, scalars,
         empty tensors, metadata) -> our reader.
  npy    our WriteNpy -> numpy.load, and the file equals numpy.save's byte for
         byte; numpy.save (f4, f8, i4, i8, u1, i1, i2, u2, u4, big-endian,
         scalars, empty) -> our ReadNpy; float16 and Fortran order are refused.

Usage: safetensors_interop.py numpy|torch|npy TOOL WORK_DIR
Exit codes: 0 all match, 1 a mismatch, 77 the packages are missing (skipped).
"""

import json
import os
import subprocess
import sys

PART = sys.argv[1]
TOOL = sys.argv[2]
WORK = sys.argv[3]

try:
    import numpy as np

    if PART in ("numpy", "torch"):
        import safetensors
        from safetensors import safe_open
    if PART == "torch":
        import torch
        import safetensors.torch
    if PART == "numpy":
        import safetensors.numpy
except ImportError as error:  # reported as skipped by CTest
    print(f"SKIP: package missing for the {PART} part ({error}); run scripts/install-deps.sh")
    sys.exit(77)

failures = []


def check(what, ok, detail=""):
    print(f"  {'ok  ' if ok else 'FAIL'} {what}{'' if ok else ': ' + detail}")
    if not ok:
        failures.append(what)


def tool(*args, expect_ok=True):
    result = subprocess.run([TOOL, *args], capture_output=True, text=True)
    if expect_ok and result.returncode != 0:
        print(f"FAIL: {TOOL} {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        sys.exit(1)
    return result


def manifest(*args):
    return json.loads(tool(*args).stdout)


def np_bytes(array):
    return np.ascontiguousarray(array).tobytes()


def torch_bytes(tensor):
    # numpy has no bfloat16: view the bits as int16 to get the raw bytes.
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    return tensor.contiguous().numpy().tobytes()


def compare_entry(where, entry, dtype, shape, data):
    name = entry["name"]
    check(f"{where} {name}: dtype {entry['dtype']}", dtype == entry["dtype"], f"got {dtype}")
    check(f"{where} {name}: shape {entry['shape']}", list(shape) == entry["shape"],
          f"got {list(shape)}")
    check(f"{where} {name}: {len(data)} bytes identical", data.hex() == entry["hex"],
          f"\n    expected {entry['hex']}\n    got      {data.hex()}")


NP_TO_ST = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64",
            np.dtype(np.int32): "I32", np.dtype(np.int64): "I64"}


def ours_into_python(load, describe, with_bf16):
    path = os.path.join(WORK, f"ours_{PART}.safetensors")
    args = ["write-safetensors", path] + ([] if with_bf16 else ["--without-bf16"])
    written = manifest(*args)
    print(f"our writer -> {load.__module__}.{load.__name__} ({path})")
    loaded = load(path)
    names = [e["name"] for e in written["tensors"]]
    check("same tensor names", sorted(loaded) == sorted(names),
          f"{sorted(loaded)} vs {sorted(names)}")
    for entry in written["tensors"]:
        if entry["name"] in loaded:
            compare_entry("load", entry, *describe(loaded[entry["name"]]))
    with safe_open(path, framework="np" if PART == "numpy" else "pt") as f:
        check("metadata", f.metadata() == written["metadata"],
              f"{f.metadata()} vs {written['metadata']}")


def python_into_ours(save, tensors, describe):
    path = os.path.join(WORK, f"theirs_{PART}.safetensors")
    metadata = {"format": "pt", "note": "written by Python \u00e9"}
    save(tensors, path, metadata=metadata)
    print(f"{save.__module__}.{save.__name__} -> our reader ({path})")
    dumped = manifest("dump-safetensors", path)
    check("metadata", dumped["metadata"] == metadata, f"{dumped['metadata']} vs {metadata}")
    by_name = {e["name"]: e for e in dumped["tensors"]}
    check("same tensor names", sorted(by_name) == sorted(tensors), f"{sorted(by_name)}")
    for name, value in tensors.items():
        if name in by_name:
            compare_entry("read", by_name[name], *describe(value))


def part_numpy():
    describe = lambda a: (NP_TO_ST[a.dtype], a.shape, np_bytes(a))
    ours_into_python(safetensors.numpy.load_file, describe, with_bf16=False)
    rng = np.random.default_rng(0)
    python_into_ours(safetensors.numpy.save_file, {
        "w.f32": rng.standard_normal((3, 5)).astype(np.float32),
        "w.f64": rng.standard_normal((2, 2)),
        "ids.i32": np.array([0, -1, 2**31 - 1], dtype=np.int32),
        "ids.i64": np.array([[2**62 + 1], [-(2**63)]], dtype=np.int64),
        "scalar": np.array(1.25, dtype=np.float32),
        "empty": np.zeros((0, 7), dtype=np.float32),
    }, describe)


def part_torch():
    st_name = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float64: "F64",
               torch.int32: "I32", torch.int64: "I64"}
    describe = lambda t: (st_name[t.dtype], tuple(t.shape), torch_bytes(t))
    ours_into_python(safetensors.torch.load_file, describe, with_bf16=True)
    gen = torch.Generator().manual_seed(0)
    python_into_ours(safetensors.torch.save_file, {
        "model.embed_tokens.weight": torch.randn(7, 4, generator=gen),
        "model.norm.weight": torch.randn(3, generator=gen).to(torch.bfloat16),
        "lm_head.weight": torch.randn(2, 3, generator=gen, dtype=torch.float64),
        "ids": torch.tensor([[1, -2, 2**40]], dtype=torch.int64),
        "ids32": torch.tensor([5, 6, 7], dtype=torch.int32),
        "scalar.f32": torch.tensor(-3.5),
        "scalar.bf16": torch.tensor(0.1, dtype=torch.bfloat16),
        "scalar.i64": torch.tensor(2**53 + 1),
        "empty.bf16": torch.zeros(0, 3, dtype=torch.bfloat16),
    }, describe)


def as_we_load(dtype):
    """ReadNpy keeps f4, f8, i4, i8 and widens smaller integers to int32, u4 and u8 to int64."""
    if dtype.kind == "f":
        return dtype.newbyteorder("<")
    if dtype.itemsize <= 2 or (dtype.kind == "i" and dtype.itemsize == 4):
        return np.dtype("<i4")
    return np.dtype("<i8")


def part_npy():
    written = manifest("write-npy", WORK)
    print("our WriteNpy -> numpy.load, and against numpy.save's bytes")
    for entry in written["tensors"]:
        array = np.load(entry["file"])
        compare_entry("np.load", entry, NP_TO_ST[array.dtype], array.shape, np_bytes(array))
        again = entry["file"] + ".numpy.npy"
        np.save(again, array)
        with open(entry["file"], "rb") as ours, open(again, "rb") as theirs:
            a, b = ours.read(), theirs.read()
        check(f"{entry['name']}: our file == numpy.save's file ({len(a)} bytes)", a == b,
              f"\n    ours   {a[:128]!r}\n    theirs {b[:128]!r}")

    print("numpy.save -> our ReadNpy")
    cases = {
        "f4": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
        "f8": np.array([[1e-300, -0.0], [np.inf, 2.5]]),
        "i4": np.array([-(2**31), 0, 2**31 - 1], dtype=np.int32),
        "i8": np.array([-(2**63), 2**53 + 1], dtype=np.int64),
        "scalar": np.array(7.0, dtype=np.float64),
        "empty": np.zeros((2, 0), dtype=np.int64),
        "u1": np.array([0, 255], dtype=np.uint8),
        "i1": np.array([-128, 127], dtype=np.int8),
        "i2": np.array([-32768, 32767], dtype=np.int16),
        "u2": np.array([0, 50000, 65535], dtype=np.uint16),
        "u4": np.array([0, 2**32 - 1], dtype=np.uint32),
        "big_endian_f4": np.array([1.5, -2.0], dtype=">f4"),
        "big_endian_i8": np.array([[-2, 2**40]], dtype=">i8"),
    }
    for name, array in cases.items():
        path = os.path.join(WORK, f"numpy_{name}.npy")
        np.save(path, array)
        entry = manifest("dump-npy", path)["tensors"][0]
        entry["name"] = name
        expected = array.astype(as_we_load(array.dtype))
        compare_entry("ReadNpy", entry, NP_TO_ST[expected.dtype], expected.shape,
                      np_bytes(expected))

    print("numpy files we refuse")
    for name, array, words in [
        ("float16", np.ones(3, dtype=np.float16), "numpy dtype '<f2'"),
        ("fortran", np.asfortranarray(np.ones((2, 3), dtype=np.float32)), "Fortran"),
    ]:
        path = os.path.join(WORK, f"refused_{name}.npy")
        np.save(path, array)
        result = tool("dump-npy", path, expect_ok=False)
        check(f"{name}: refused with an error naming {words!r}",
              result.returncode == 1 and words in result.stderr and path in result.stderr,
              f"exit {result.returncode}, stderr {result.stderr!r}")


os.makedirs(WORK, exist_ok=True)
print(f"versions: numpy {np.__version__}" +
      (f", safetensors {safetensors.__version__}" if PART != "npy" else "") +
      (f", torch {torch.__version__}" if PART == "torch" else ""))
{"numpy": part_numpy, "torch": part_torch, "npy": part_npy}[PART]()
if failures:
    print(f"FAILED: {len(failures)} mismatches: {failures}")
    sys.exit(1)
print("all files match")
