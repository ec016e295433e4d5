"""moe-train checkpoints and Hugging Face Mixtral, both ways, against transformers on the CPU.

export  moe-train trains a tiny byte-vocabulary model for 3 steps and saves a checkpoint;
        moe-convert --to_hf writes it as one model.safetensors and as shards with an index;
        MixtralForCausalLM.from_pretrained loads each with no missing, unexpected or
        mismatched keys, and its logits equal the checkpoint's own (checkpoint_logits)
        within 1e-4 relative.
import  a random MixtralForCausalLM (weights of order one, so that every tensor shapes the
        logits) saved with save_pretrained, one file and shards; moe-convert --from_hf
        makes a checkpoint of it whose logits equal transformers' within 1e-4.

Relative error = max |ours - theirs| / max |theirs|.
Usage: hf_checkpoint_roundtrip.py MOE_TRAIN MOE_CONVERT MOE_PREPROCESS CHECKPOINT_LOGITS WORK
Exit codes: 0 all match, 1 a mismatch, 77 a package is missing (skipped).
"""

import os
import shutil
import subprocess
import sys

MOE_TRAIN, MOE_CONVERT, MOE_PREPROCESS, CHECKPOINT_LOGITS, WORK = sys.argv[1:6]

try:
    import numpy as np
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM
except ImportError as error:  # reported as skipped by CTest
    print(f"SKIP: package missing ({error}); run scripts/install-deps.sh")
    sys.exit(77)

LOGITS_TOL = 1e-4
SHARD_BYTES = 20_000
failures = []
torch.set_num_threads(2)


def check(what, ok, detail=""):
    print(f"  {'ok  ' if ok else 'FAIL'} {what}{'' if ok else ': ' + detail}")
    if not ok:
        failures.append(what)


def run(*args):
    result = subprocess.run(list(args), capture_output=True, text=True)
    if result.returncode != 0:
        check(" ".join(os.path.basename(a) for a in args[:2]), False,
              f"exit {result.returncode}: {result.stdout}{result.stderr}")
    return result.returncode == 0


def fresh_dir(name):
    path = os.path.join(WORK, name)
    shutil.rmtree(path, ignore_errors=True)
    return path


def rel_error(ours, theirs):
    return float(np.max(np.abs(ours.astype(np.float64) - theirs)) / np.max(np.abs(theirs)))


def checkpoint_logits(ckpt, ids):
    ids_path = os.path.join(WORK, "ids.npy")
    out_path = os.path.join(WORK, "logits.npy")
    np.save(ids_path, ids)
    if not run(CHECKPOINT_LOGITS, ckpt, ids_path, out_path):
        return None
    return np.load(out_path)


def hf_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids)).logits.float().numpy()


def compare(what, ours, theirs):
    if ours is None:
        return
    err = rel_error(ours, theirs)
    check(f"{what}: logits {list(ours.shape)} rel err {err:.2e} <= {LOGITS_TOL}",
          ours.shape == theirs.shape and err <= LOGITS_TOL)


def export_part():
    print("export: moe-train checkpoint -> moe-convert --to_hf -> transformers")
    text = os.path.join(WORK, "text.txt")
    rng = np.random.default_rng(3)
    words = ["expert", "router", "token", "layer", "mixture", "of", "the", "a", "gate"]
    with open(text, "w") as f:
        f.write(" ".join(rng.choice(words, size=6000)))
    prefix = os.path.join(WORK, "data")
    if not run(MOE_PREPROCESS, f"--input={text}", f"--output_prefix={prefix}"):
        return
    ckpt = fresh_dir("trained")
    if not run(MOE_TRAIN, "--num_layers=2", "--hidden_size=32", "--ffn_hidden_size=48",
               "--num_attention_heads=4", "--num_query_groups=2", "--num_experts=4",
               "--moe_router_topk=2", "--moe_aux_loss_coeff=0.01", "--vocab_size=257",
               "--seq_length=32",
               "--global_batch_size=4", "--train_iters=3", "--lr=1e-2", "--threads=2",
               "--init_method_std=0.3", f"--data_path={prefix}_text_document", f"--save={ckpt}"):
        return
    ids = np.random.default_rng(5).integers(0, 257, size=(3, 20), dtype=np.int64)
    ours = checkpoint_logits(ckpt, ids)
    for label, extra in (("single file", []), ("shards", [f"--max_shard_bytes={SHARD_BYTES}"])):
        out = fresh_dir(f"export_{'sharded' if extra else 'single'}")
        if not run(MOE_CONVERT, "--to_hf", f"--load={ckpt}", f"--out={out}", *extra):
            continue
        names = os.listdir(out)
        check(f"{label}: {len(names)} files, index {'model.safetensors.index.json' in names}",
              ("model.safetensors.index.json" in names) == bool(extra))
        model, info = MixtralForCausalLM.from_pretrained(out, output_loading_info=True,
                                                         attn_implementation="eager",
                                                         dtype=torch.float32)
        problems = {k: v for k, v in info.items() if v}
        check(f"{label}: from_pretrained with no missing/unexpected/mismatched keys",
              not problems, str(problems))
        compare(f"{label}: checkpoint vs transformers", ours, hf_logits(model.eval(), ids))


def import_part():
    print("import: transformers save_pretrained -> moe-convert --from_hf -> checkpoint")
    config = MixtralConfig(vocab_size=97, hidden_size=32, intermediate_size=48,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           num_local_experts=4, num_experts_per_tok=2,
                           max_position_embeddings=64, rope_theta=5000.0, rms_norm_eps=1e-6,
                           tie_word_embeddings=False)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = MixtralForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.3 if p.dim() > 1 and "embed" not in name else 1.0)
    ids = np.random.default_rng(9).integers(0, 97, size=(3, 16), dtype=np.int64)
    theirs = hf_logits(model, ids)
    for label, kwargs in (("single file", {}), ("shards", {"max_shard_size": SHARD_BYTES})):
        hf = fresh_dir(f"import_{'sharded' if kwargs else 'single'}")
        model.save_pretrained(hf, **kwargs)
        ckpt = fresh_dir(f"imported_{'sharded' if kwargs else 'single'}")
        if run(MOE_CONVERT, "--from_hf", f"--hf_dir={hf}", f"--save={ckpt}"):
            compare(f"{label}: transformers vs imported checkpoint", checkpoint_logits(ckpt, ids),
                    theirs)


def main():
    for binary in (MOE_TRAIN, MOE_CONVERT, MOE_PREPROCESS, CHECKPOINT_LOGITS):
        if not os.access(binary, os.X_OK):
            print(f"FAIL: {binary} is not built")
            return 1
    os.makedirs(WORK, exist_ok=True)
    export_part()
    import_part()
    if failures:
        print(f"FAILED: {len(failures)} checks")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
