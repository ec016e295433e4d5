"""Hugging Face Mixtral checkpoints in both directions, against transformers on the CPU.

import  MixtralForCausalLM (random small config, eager attention, fp32) saved with
        save_pretrained as one file and as shards, with a transformers 5 config.json
        (rope_parameters.rope_theta) and a transformers 4 one (top-level rope_theta):
        moe-eval's logits and loss on int64, int32 and 1-D ids, whole and in batch
        chunks, equal transformers' `model(ids, labels=ids)` (logits 1e-4, loss 1e-5
        relative); bad ids end moe-eval with a one-line error and nothing on stdout.
export  hf_export_dump writes our randomly initialised model with SaveHfModel (one
        file and shards); MixtralForCausalLM.from_pretrained loads it with no missing,
        unexpected or mismatched keys, and its logits and loss equal moe-eval's.

Relative error = max |ours - theirs| / max |theirs|.
Usage: hf_roundtrip.py MOE_EVAL HF_EXPORT_DUMP WORK_DIR
Exit codes: 0 all match, 1 a mismatch, 77 a package is missing (skipped).
"""

import json
import os
import shutil
import subprocess
import sys

MOE_EVAL, EXPORT_DUMP, WORK = sys.argv[1:4]

try:
    import numpy as np
    import torch
    import transformers
    from transformers import MixtralConfig, MixtralForCausalLM
except ImportError as error:  # reported as skipped by CTest
    print(f"SKIP: package missing ({error}); run scripts/install-deps.sh")
    sys.exit(77)

LOGITS_TOL = 1e-4
LOSS_TOL = 1e-5
VOCAB = 97
MAX_POSITIONS = 64
SHARD_BYTES = 20_000  # the tiny model is ~200 KB: about ten shards

failures = []
torch.set_num_threads(2)


def check(what, ok, detail=""):
    print(f"  {'ok  ' if ok else 'FAIL'} {what}{'' if ok else ': ' + detail}")
    if not ok:
        failures.append(what)


def rel_error(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def fresh_dir(name):
    path = os.path.join(WORK, name)
    shutil.rmtree(path, ignore_errors=True)
    return path


def run_eval(hf_dir, ids_path, *extra, logits=True):
    """Runs moe-eval; returns (exit code, parsed stdout JSON or None, logits or None, stderr)."""
    logits_path = os.path.join(WORK, "logits.npy")
    if os.path.exists(logits_path):
        os.remove(logits_path)
    args = [MOE_EVAL, f"--hf_dir={hf_dir}", f"--input_ids={ids_path}", *extra]
    if logits:
        args.append(f"--logits_out={logits_path}")
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        return result.returncode, result.stdout, None, result.stderr
    lines = result.stdout.splitlines()
    check(f"moe-eval {os.path.basename(hf_dir)} prints exactly one stdout line", len(lines) == 1,
          repr(result.stdout))
    out = json.loads(lines[0]) if lines else None
    return 0, out, np.load(logits_path) if logits else None, result.stderr


def compare_eval(what, hf_dir, ids_path, ids, ref_logits, ref_loss, *extra):
    code, out, logits, stderr = run_eval(hf_dir, ids_path, *extra)
    if code != 0:
        check(what, False, f"moe-eval exited {code}: {stderr.strip()}")
        return
    err = rel_error(logits, ref_logits)
    check(f"{what}: logits {list(logits.shape)} rel err {err:.2e} <= {LOGITS_TOL}",
          logits.shape == tuple(ref_logits.shape) and logits.dtype == np.float32
          and err <= LOGITS_TOL)
    loss_err = abs(out["loss"] - ref_loss) / abs(ref_loss)
    check(f"{what}: loss {out['loss']:.8f} vs {ref_loss:.8f} rel err {loss_err:.2e} <= {LOSS_TOL}",
          loss_err <= LOSS_TOL)
    expected_tokens = ids.shape[0] * (ids.shape[1] - 1) if ids.ndim == 2 else ids.shape[0] - 1
    check(f"{what}: tokens {out['tokens']} = batch * (seq - 1)", out["tokens"] == expected_tokens)


def hf_reference(model, ids):
    ids_t = torch.from_numpy(np.atleast_2d(ids).astype(np.int64))
    with torch.no_grad():
        out = model(input_ids=ids_t, labels=ids_t)
    return out.logits.float().numpy(), float(out.loss)


def small_config(**overrides):
    fields = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                  num_experts_per_tok=2, max_position_embeddings=MAX_POSITIONS,
                  rope_theta=5000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
    fields.update(overrides)
    config = MixtralConfig(**fields)
    config._attn_implementation = "eager"
    return config


def write_v4_config(src_dir, dst_dir):
    """A copy of src_dir whose config.json is laid out as transformers 4 writes it."""
    shutil.copytree(src_dir, dst_dir)
    path = os.path.join(dst_dir, "config.json")
    with open(path) as f:
        config = json.load(f)
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope["rope_theta"]
    config["torch_dtype"] = config.pop("dtype")
    config["transformers_version"] = "4.57.0"
    with open(path, "w") as f:
        json.dump(config, f, indent=2)


def import_part(ids, ids_paths):
    print(f"import: transformers {transformers.__version__} -> moe-eval")
    torch.manual_seed(0)
    model = MixtralForCausalLM(small_config()).eval()
    # Weights of order one (norm weights away from 1) so that every tensor visibly shapes
    # the logits, and routing decisions are far from ties.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.3 if p.dim() > 1 and "embed" not in name else 1.0)
    ref_logits, ref_loss = hf_reference(model, ids)

    single = fresh_dir("import_single")
    model.save_pretrained(single)
    with open(os.path.join(single, "config.json")) as f:
        v5 = json.load(f)
    check("transformers 5 config.json keeps theta in rope_parameters only",
          v5.get("rope_parameters", {}).get("rope_theta") == 5000.0 and "rope_theta" not in v5,
          json.dumps(v5))
    sharded = fresh_dir("import_sharded")
    model.save_pretrained(sharded, max_shard_size=SHARD_BYTES)
    shards = [f for f in os.listdir(sharded) if f.startswith("model-")]
    check(f"save_pretrained wrote {len(shards)} shards and an index",
          len(shards) > 1 and os.path.exists(os.path.join(sharded, "model.safetensors.index.json")))
    v4 = fresh_dir("import_v4_config")
    write_v4_config(single, v4)

    for label, hf_dir in (("single file", single), ("shards", sharded), ("v4 config", v4)):
        for kind, path in ids_paths.items():
            compare_eval(f"{label}, {kind} ids", hf_dir, path, ids, ref_logits, ref_loss)
    compare_eval("single file, --batch_chunk=2", single, ids_paths["int64"], ids, ref_logits,
                 ref_loss, "--batch_chunk=2")

    one = ids[1]
    one_path = os.path.join(WORK, "ids_1d.npy")
    np.save(one_path, one)
    one_logits, one_loss = hf_reference(model, one)
    compare_eval("single file, 1-D ids (batch 1)", single, one_path, one, one_logits, one_loss)
    return single


def expect_eval_error(what, hf_dir, ids_path, fragment):
    code, stdout, _, stderr = run_eval(hf_dir, ids_path)
    lines = stderr.strip().splitlines()
    check(f"{what}: exit {code} != 0, one-line error naming {fragment!r}, empty stdout",
          code != 0 and stdout == "" and len(lines) >= 1 and fragment in lines[-1]
          and lines[-1].startswith("moe-eval: ") and "\n" not in lines[-1],
          f"exit {code}, stdout {stdout!r}, stderr {stderr!r}")


def error_part(hf_dir, ids):
    print("errors: moe-eval refuses bad input")
    bad = ids.copy()
    bad[2, 5] = VOCAB
    path = os.path.join(WORK, "ids_bad_vocab.npy")
    np.save(path, bad)
    expect_eval_error("id == vocab_size", hf_dir, path, "outside the vocabulary")
    bad[2, 5] = -1
    np.save(path, bad)
    expect_eval_error("negative id", hf_dir, path, "outside the vocabulary")
    path = os.path.join(WORK, "ids_too_long.npy")
    np.save(path, np.zeros((1, MAX_POSITIONS + 1), np.int64))
    expect_eval_error("seq > max_position_embeddings", hf_dir, path, "max_position_embeddings")
    path = os.path.join(WORK, "ids_float.npy")
    np.save(path, ids.astype(np.float32))
    expect_eval_error("float ids", hf_dir, path, "must be integers")
    expect_eval_error("missing checkpoint", os.path.join(WORK, "no_such_dir"),
                      os.path.join(WORK, "ids_int64.npy"), "does not exist")


def export_part(ids, ids_path):
    print("export: SaveHfModel -> transformers from_pretrained")
    config_path = os.path.join(WORK, "export_config.json")
    small_config(initializer_range=0.3).to_json_file(config_path, use_diff=False)
    exported = {}
    for label, extra in (("single file", []), ("shards", [str(SHARD_BYTES)])):
        out_dir = fresh_dir(f"export_{'sharded' if extra else 'single'}")
        result = subprocess.run([EXPORT_DUMP, config_path, "1234", out_dir, *extra],
                                capture_output=True, text=True)
        if result.returncode != 0:
            check(f"{label}: hf_export_dump", False, result.stderr.strip())
            continue
        names = sorted(os.listdir(out_dir))
        sharded = "model.safetensors.index.json" in names
        check(f"{label}: files {names if len(names) < 5 else str(len(names)) + ' files'}",
              sharded == bool(extra) and ("model.safetensors" in names) != sharded)
        model, info = MixtralForCausalLM.from_pretrained(out_dir, output_loading_info=True,
                                                         attn_implementation="eager",
                                                         dtype=torch.float32)
        model.eval()
        problems = {k: v for k, v in info.items() if v}
        check(f"{label}: from_pretrained with no missing/unexpected/mismatched keys",
              not problems, str(problems))
        ref_logits, ref_loss = hf_reference(model, ids)
        compare_eval(f"{label}: ours vs transformers", out_dir, ids_path, ids, ref_logits,
                     ref_loss)
        exported[label] = {k: v.clone() for k, v in model.state_dict().items()}
    if len(exported) == 2:
        a, b = exported.values()
        check("single-file and sharded exports load identical tensors",
              a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a))


def main():
    for binary in (MOE_EVAL, EXPORT_DUMP):
        if not os.access(binary, os.X_OK):
            print(f"FAIL: {binary} is not built (cmake --build BUILD --target moe-eval hf_export_dump)")
            return 1
    os.makedirs(WORK, exist_ok=True)
    rng = np.random.default_rng(7)
    ids = rng.integers(0, VOCAB, size=(3, 16), dtype=np.int64)
    ids_paths = {"int64": os.path.join(WORK, "ids_int64.npy"),
                 "int32": os.path.join(WORK, "ids_int32.npy")}
    np.save(ids_paths["int64"], ids)
    np.save(ids_paths["int32"], ids.astype(np.int32))
    single = import_part(ids, ids_paths)
    error_part(single, ids)
    export_part(ids, ids_paths["int64"])
    if failures:
        print(f"FAILED: {len(failures)} checks")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
