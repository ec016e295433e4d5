"""Forward (and backward) of every core layer against PyTorch on the CPU.

Runs layer_reference_dump, which writes our fp32 inputs, outputs and gradients
per layer, recomputes each layer in float64 with PyTorch (autograd for the
gradients; Hugging Face Mixtral's own functions where it has them), and
compares. Error measure: max |ours - reference| / max |reference| per tensor.
Forward must be within 1e-5 (fp32 against the exact value); gradients too.

Usage: check_layers.py DUMP_BINARY OUT_DIR
Exit codes: 0 all match, 1 a mismatch, 77 the reference packages are missing.
"""

import subprocess
import sys

try:
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file
    from transformers.models.mixtral import modeling_mixtral as hf
except ImportError as error:  # reported as skipped by CTest
    print(f"SKIP: reference packages missing ({error}); run scripts/install-deps.sh")
    sys.exit(77)

TOLERANCE = 1e-5
failures = []


def compare(layer, name, ours, reference):
    ours = ours.double()
    reference = reference.detach().double()
    if ours.shape != reference.shape:
        failures.append(f"{layer}.{name}: shape {tuple(ours.shape)} vs {tuple(reference.shape)}")
        print(f"  {name:10s} SHAPE MISMATCH")
        return
    scale = reference.abs().max().item()
    error = (ours - reference).abs().max().item() / max(scale, 1e-300)
    verdict = "ok" if error <= TOLERANCE else "FAIL"
    print(f"  {name:10s} rel err {error:.2e} ({verdict})")
    if error > TOLERANCE:
        failures.append(f"{layer}.{name}: relative error {error:.3e} > {TOLERANCE}")


def leaf(t):
    return t.double().clone().requires_grad_(True)


def check_linear(d):
    x, w = leaf(d["x"]), leaf(d["weight"])
    y = F.linear(x, w)
    y.backward(d["dy"].double())
    compare("linear", "y", d["y"], y)
    compare("linear", "dx", d["dx"], x.grad)
    compare("linear", "dweight", d["dweight"], w.grad)


def check_embedding(d):
    w = leaf(d["weight"])
    y = F.embedding(d["ids"].long(), w)
    y.backward(d["dy"].double())
    compare("embedding", "y", d["y"], y)
    compare("embedding", "dweight", d["dweight"], w.grad)


def check_rmsnorm(d):
    x, w = leaf(d["x"]), leaf(d["weight"])
    eps = 1e-5
    y = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
    y.backward(d["dy"].double())
    compare("rmsnorm", "y", d["y"], y)
    compare("rmsnorm", "dx", d["dx"], x.grad)
    compare("rmsnorm", "dweight", d["dweight"], w.grad)
    # Hugging Face's own module, in fp32 as Mixtral runs it.
    norm = hf.MixtralRMSNorm(d["x"].shape[-1], eps=eps)
    norm.weight.data.copy_(d["weight"])
    compare("rmsnorm", "y(HF fp32)", d["y"], norm(d["x"]))


def check_rope(d):
    x = leaf(d["x"])  # [batch, seq, heads, head_dim]
    batch, seq, _, head_dim = x.shape
    theta = d["theta"].item()
    offset = int(d["pos_offset"].item())
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    positions = torch.arange(offset, offset + seq, dtype=torch.float64)
    freqs = torch.outer(positions, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)  # HF MixtralRotaryEmbedding layout
    cos = emb.cos().expand(batch, seq, head_dim)
    sin = emb.sin().expand(batch, seq, head_dim)
    y, _ = hf.apply_rotary_pos_emb(x, x, cos, sin, unsqueeze_dim=2)
    y.backward(d["dy"].double())
    compare("rope", "y", d["y"], y)
    compare("rope", "dx", d["dx"], x.grad)


def check_swiglu(d):
    gate, up = leaf(d["gate"]), leaf(d["up"])
    y = F.silu(gate) * up
    y.backward(d["dy"].double())
    compare("swiglu", "y", d["y"], y)
    compare("swiglu", "dgate", d["dgate"], gate.grad)
    compare("swiglu", "dup", d["dup"], up.grad)


def check_attention(d):
    q, k, v = leaf(d["q"]), leaf(d["k"]), leaf(d["v"])  # [batch, seq, heads, dim]
    groups = q.shape[2] // k.shape[2]
    qt = q.transpose(1, 2)
    kt = hf.repeat_kv(k.transpose(1, 2), groups)
    vt = hf.repeat_kv(v.transpose(1, 2), groups)
    y = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True).transpose(1, 2)
    y.backward(d["dy"].double())
    compare("attention", "y", d["y"], y)
    compare("attention", "dq", d["dq"], q.grad)
    compare("attention", "dk", d["dk"], k.grad)
    compare("attention", "dv", d["dv"], v.grad)


def check_cross_entropy(d):
    hidden, w = leaf(d["hidden"]), leaf(d["weight"])
    labels = d["labels"].long()
    labels = torch.where(labels < 0, torch.full_like(labels, -100), labels)
    loss_sum = F.cross_entropy(hidden @ w.T, labels, ignore_index=-100, reduction="sum")
    tokens = int((labels >= 0).sum())
    (loss_sum / tokens).backward()
    if int(d["tokens"].item()) != tokens:
        failures.append(f"cross_entropy.tokens: {int(d['tokens'].item())} vs {tokens}")
    compare("cross_entropy", "loss_sum", d["loss_sum"], loss_sum)
    compare("cross_entropy", "dhidden", d["dhidden"], hidden.grad)
    compare("cross_entropy", "dweight", d["dweight"], w.grad)


CHECKS = {
    "linear": check_linear,
    "embedding": check_embedding,
    "rmsnorm": check_rmsnorm,
    "rope": check_rope,
    "swiglu": check_swiglu,
    "attention": check_attention,
    "cross_entropy": check_cross_entropy,
}


def main():
    dump, out_dir = sys.argv[1], sys.argv[2]
    subprocess.run(["mkdir", "-p", out_dir], check=True)
    subprocess.run([dump, out_dir], check=True)
    for layer, check in CHECKS.items():
        print(f"{layer}:")
        check(load_file(f"{out_dir}/{layer}.safetensors"))
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print(f"all {len(CHECKS)} layers match PyTorch within {TOLERANCE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
