"""Helpers of the end-to-end tests: a small real data set, free ports, the
tiny model's flags, step logs, and processes that are always cleaned up.

Each test is a script that CTest runs with the binaries' directory as its
first argument; it exits 0 (pass), 1 (fail) or 77 (skipped: a component of
the machine it needs is absent).
"""
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

SKIP = 77


def skip(reason):
    print(f"SKIPPED: {reason}")
    sys.exit(SKIP)


def fail(message):
    print(f"FAILED: {message}")
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def bin_dir():
    if len(sys.argv) < 2:
        fail(f"usage: {sys.argv[0]} BUILD_BIN_DIR")
    return os.path.abspath(sys.argv[1])


def make_temp_dir(name):
    # Under /tmp with a short name: munge and Slurm socket paths must stay short.
    return tempfile.mkdtemp(prefix=f"moe-{name}-")


def make_dataset(bin_directory, directory, documents=200, seed=1):
    """A byte-tokenized Megatron data set from random words (moe-preprocess)."""
    os.makedirs(directory, exist_ok=True)
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "expert", "router", "token", "layer", "moe"]
    jsonl = os.path.join(directory, "docs.jsonl")
    with open(jsonl, "w") as f:
        for _ in range(documents):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(60))}) + "\n")
    prefix = os.path.join(directory, "tiny")
    subprocess.run([os.path.join(bin_directory, "moe-preprocess"), f"--input={jsonl}",
                    f"--output_prefix={prefix}", "--append_eod"], check=True,
                   stdout=subprocess.DEVNULL)
    return prefix + "_text_document"


def tiny_flags(data, train_iters=8):
    """A Mixtral-shaped model small enough for 2 cores (global batch 8 in
    micro-batches of 1, so that 1, 2, 4 and 8 data-parallel ranks all fit)."""
    return ["--num_layers=2", "--hidden_size=32", "--ffn_hidden_size=48",
            "--num_attention_heads=4", "--num_query_groups=2", "--num_experts=4",
            "--moe_router_topk=2", "--moe_aux_loss_coeff=1e-2", "--vocab_size=257",
            "--seq_length=32", "--rotary_base=10000", "--micro_batch_size=1",
            "--global_batch_size=8", f"--train_iters={train_iters}", "--lr=1e-3",
            "--lr_decay_style=constant", "--seed=7", "--log_interval=1", "--threads=1",
            f"--data_path={data}"]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def relative_error(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_range(count):
    """A base port whose next `count` ports are free now."""
    for _ in range(50):
        base = free_port()
        if base + count >= 65535:
            continue
        ok = True
        for p in range(base, base + count):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("0.0.0.0", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    fail(f"no {count} consecutive free ports")


class Processes:
    """Started processes, each in its own process group, killed on exit."""

    def __init__(self):
        self.started = []

    def __enter__(self):
        return self

    def start(self, args, **kwargs):
        process = subprocess.Popen(args, start_new_session=True, **kwargs)
        self.started.append(process)
        return process

    def __exit__(self, *exc):
        for process in reversed(self.started):
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 10
        for process in reversed(self.started):
            try:
                process.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait()
        return False


def wait_for(predicate, timeout, what, interval=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    fail(f"timed out after {timeout} s waiting for {what}")


def finite(x):
    return x is not None and math.isfinite(x)


def cleanup(directory):
    shutil.rmtree(directory, ignore_errors=True)
