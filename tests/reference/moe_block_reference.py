"""Our MoE block and router losses against Hugging Face Mixtral on the CPU.

Runs moe_block_dump, which writes our fp32 inputs, parameters, outputs and
gradients, then recomputes them in float32 with transformers' own modules:

  block: MixtralSparseMoeBlock forward (y, router logits, top-k choices) and
         autograd of <y, dy> for x, the gate and every expert weight.
  aux:   load_balancing_loss_func over the router logits of two layers
         (pooled, as MixtralForCausalLM does), plus the z-loss
         mean(logsumexp(logits)^2) per layer; autograd of
         c_aux * aux + c_z * (z0 + z1) for both inputs and both gates.

Weight mapping (transformers 5 fuses the experts in memory; on disk, and in
our Parameters, they are per expert, see its conversion_mapping "mixtral"):
  gate.weight [E, H]              -> gate.weight
  experts.{e}.w1.weight [I, H]    -> experts.gate_up_proj[e, :I]   (through silu)
  experts.{e}.w3.weight [I, H]    -> experts.gate_up_proj[e, I:]   (up)
  experts.{e}.w2.weight [H, I]    -> experts.down_proj[e]
Error measure: max |ours - reference| / max |reference| per tensor. Forward
(y, logits, aux, z) within 1e-5, gradients within 1e-4: both sides are fp32
and sum in different orders.

Usage: moe_block_reference.py DUMP_BINARY OUT_DIR
Exit codes: 0 all match, 1 a mismatch, 77 the reference packages are missing.
"""

import subprocess
import sys

try:
    import torch
    from safetensors.torch import load_file
    from transformers import MixtralConfig
    from transformers.models.mixtral import modeling_mixtral as hf
except ImportError as error:  # reported as skipped by CTest
    print(f"SKIP: reference packages missing ({error}); run scripts/install-deps.sh")
    sys.exit(77)

FORWARD_TOLERANCE = 1e-5
GRAD_TOLERANCE = 1e-4
PREFIX = "model.layers.0.block_sparse_moe"
failures = []


def compare(group, name, ours, reference, tolerance):
    ours = ours.double()
    reference = reference.detach().double()
    if ours.shape != reference.shape:
        failures.append(f"{group}.{name}: shape {tuple(ours.shape)} vs {tuple(reference.shape)}")
        print(f"  {name:44s} SHAPE MISMATCH")
        return
    scale = reference.abs().max().item()
    error = (ours - reference).abs().max().item() / max(scale, 1e-300)
    verdict = "ok" if error <= tolerance else "FAIL"
    print(f"  {name:44s} rel err {error:.2e} ({verdict})")
    if error > tolerance:
        failures.append(f"{group}.{name}: relative error {error:.3e} > {tolerance}")


def config(hidden, intermediate, experts, top_k):
    return MixtralConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_local_experts=experts,
        num_experts_per_tok=top_k,
        router_jitter_noise=0.0,
        experts_implementation="eager",
    )


def check_block(d):
    hidden, inter = int(d["hidden_size"]), int(d["intermediate_size"])
    experts, top_k = int(d["num_experts"]), int(d["top_k"])
    block = hf.MixtralSparseMoeBlock(config(hidden, inter, experts, top_k)).float()
    with torch.no_grad():
        block.gate.weight.copy_(d[f"{PREFIX}.gate.weight"])
        for e in range(experts):
            name = f"{PREFIX}.experts.{e}"
            block.experts.gate_up_proj[e, :inter].copy_(d[f"{name}.w1.weight"])
            block.experts.gate_up_proj[e, inter:].copy_(d[f"{name}.w3.weight"])
            block.experts.down_proj[e].copy_(d[f"{name}.w2.weight"])
    x = d["x"].clone().requires_grad_(True)
    y = block(x)
    (y * d["dy"]).sum().backward()
    logits, scores, indices = block.gate(x.detach())

    same_choices = torch.equal(indices.int(), d["ids"])
    print(f"  {'top-k choices':44s} {'identical' if same_choices else 'DIFFER'}")
    if not same_choices:
        failures.append("block.ids: top-k choices differ from MixtralTopKRouter")
    compare("block", "y", d["y"], y, FORWARD_TOLERANCE)
    compare("block", "router_logits", d["router_logits"], logits, FORWARD_TOLERANCE)
    compare("block", "weights", d["weights"], scores, FORWARD_TOLERANCE)
    compare("block", "dx", d["dx"], x.grad, GRAD_TOLERANCE)
    compare("block", "gate.weight", d[f"grad.{PREFIX}.gate.weight"], block.gate.weight.grad,
            GRAD_TOLERANCE)
    gate_up, down = block.experts.gate_up_proj.grad, block.experts.down_proj.grad
    for e in range(experts):
        name = f"{PREFIX}.experts.{e}"
        compare("block", f"experts.{e}.w1", d[f"grad.{name}.w1.weight"], gate_up[e, :inter],
                GRAD_TOLERANCE)
        compare("block", f"experts.{e}.w3", d[f"grad.{name}.w3.weight"], gate_up[e, inter:],
                GRAD_TOLERANCE)
        compare("block", f"experts.{e}.w2", d[f"grad.{name}.w2.weight"], down[e], GRAD_TOLERANCE)


def check_aux(d):
    experts, top_k = int(d["num_experts"]), int(d["top_k"])
    c_aux, c_z = d["c_aux"].item(), d["c_z"].item()
    hidden = d["x0"].shape[-1]
    routers, inputs, logits = [], [], []
    for i in range(2):
        router = hf.MixtralTopKRouter(config(hidden, 1, experts, top_k)).float()
        with torch.no_grad():
            router.weight.copy_(d[f"gate{i}"])
        x = d[f"x{i}"].clone().requires_grad_(True)
        routers.append(router)
        inputs.append(x)
        logits.append(router(x)[0])
    aux = hf.load_balancing_loss_func(tuple(logits), experts, top_k)
    z = [torch.logsumexp(l.float(), dim=-1).square().mean() for l in logits]
    (c_aux * aux + c_z * (z[0] + z[1])).backward()
    compare("aux", "aux (load_balancing_loss_func)", d["aux"], aux, FORWARD_TOLERANCE)
    for i in range(2):
        compare("aux", f"logits{i}", d[f"logits{i}"], logits[i], FORWARD_TOLERANCE)
        compare("aux", f"z{i}", d[f"z{i}"], z[i], FORWARD_TOLERANCE)
        compare("aux", f"dx{i}", d[f"dx{i}"], inputs[i].grad, GRAD_TOLERANCE)
        compare("aux", f"dgate{i}", d[f"dgate{i}"], routers[i].weight.grad, GRAD_TOLERANCE)


def main():
    dump, out_dir = sys.argv[1], sys.argv[2]
    subprocess.run(["mkdir", "-p", out_dir], check=True)
    subprocess.run([dump, out_dir], check=True)
    torch.manual_seed(0)
    for name, check in (("block", check_block), ("aux", check_aux)):
        print(f"{name}:")
        check(load_file(f"{out_dir}/{name}.safetensors"))
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("MoE block and router losses match Hugging Face Mixtral")
    return 0


if __name__ == "__main__":
    sys.exit(main())
