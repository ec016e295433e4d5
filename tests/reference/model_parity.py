"""Our whole model against Hugging Face's MixtralForCausalLM on the CPU.

Runs model_parity_dump, which writes, for several small random Mixtral
configs, our fp32 weights (Hugging Face on-disk names), input ids, labels,
logits, router logits, losses and every parameter gradient. For each config
this script:

  1. saves the weights as a checkpoint (config.json + model.safetensors) and
     loads it with MixtralForCausalLM.from_pretrained (eager attention, eager
     experts, float32): no key may be missing, unexpected or mismatched, and
     every loaded weight must equal ours under the mapping below;
  2. compares logits, router logits (and the top-k choices they imply);
  3. runs forward with labels and backward: loss and every gradient against
     ours for scales {lm = 1/tokens};
  4. again with output_router_logits=True: aux_loss against ours, and the
     gradients of Hugging Face's total loss (lm + coef * aux) against ours
     for scales {lm = 1/tokens, aux = 1, z = 0}.

Labels: ours are already shifted (labels[b, s] is the token position s must
predict, -100 ignored, the last position always -100); Hugging Face shifts
its labels itself, so it gets hf_labels[:, 1:] = ours[:, :-1] (position 0 is
never read). Both losses are then the mean over the same next-token targets.

Weight mapping (transformers 5 renames block_sparse_moe to mlp and fuses the
experts in memory; on disk, and in our Parameters, they are per expert):
  block_sparse_moe.gate.weight [E, H]            -> mlp.gate.weight
  block_sparse_moe.experts.{e}.w1.weight [I, H]  -> mlp.experts.gate_up_proj[e, :I]
  block_sparse_moe.experts.{e}.w3.weight [I, H]  -> mlp.experts.gate_up_proj[e, I:]
  block_sparse_moe.experts.{e}.w2.weight [H, I]  -> mlp.experts.down_proj[e]
  everything else                                -> the same name

Error measure: max |ours - reference| / max |reference| per tensor. Logits
and router logits within 1e-4, loss and aux loss within 1e-5, gradients
within 1e-4: both sides are fp32 and sum in different orders. A gradient that
is mathematically zero (the gates' for the LM loss under top-1 routing, where
the renormalised weight p / p is 1) is rounding noise in PyTorch: there both
sides must stay below 1e-6 of the run's largest gradient.

Usage: model_parity.py DUMP_BINARY OUT_DIR
Exit codes: 0 all match, 1 a mismatch, 77 the reference packages are missing.
"""

import glob
import os
import re
import subprocess
import sys

try:
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import MixtralConfig, MixtralForCausalLM
    from transformers.utils import logging as hf_logging
except ImportError as error:  # reported as skipped by CTest
    print(f"SKIP: reference packages missing ({error}); run scripts/install-deps.sh")
    sys.exit(77)

LOGITS_TOLERANCE = 1e-4
LOSS_TOLERANCE = 1e-5
GRAD_TOLERANCE = 1e-4
# Our top-k choices must be stable under fp32 rounding to compare routing.
MIN_ROUTING_MARGIN = 1e-4
# A gradient that is mathematically zero must stay below this fraction of the
# run's largest gradient.
ZERO_GRADIENT = 1e-6
EXPERT = re.compile(r"model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight")
GATE = re.compile(r"model\.layers\.(\d+)\.block_sparse_moe\.gate\.weight")

failures = []
worst = {}


def relative_error(ours, reference):
    ours, reference = ours.double(), reference.detach().double()
    if ours.shape != reference.shape:
        return float("inf")
    scale = reference.abs().max().item()
    return (ours - reference).abs().max().item() / max(scale, 1e-300)


def compare(case, kind, name, ours, reference, tolerance, verbose=True):
    error = relative_error(ours, reference)
    worst[kind] = max(worst.get(kind, 0.0), error)
    if error > tolerance:
        failures.append(f"{case} {name}: relative error {error:.3e} > {tolerance}")
    if verbose or error > tolerance:
        verdict = "ok" if error <= tolerance else "FAIL"
        print(f"  {name:48s} rel err {error:.2e} ({verdict})")


def hf_config(d):
    def i(key):
        return int(d[f"config.{key}"])

    def f(key):
        return d[f"config.{key}"].item()

    return MixtralConfig(
        vocab_size=i("vocab_size"),
        hidden_size=i("hidden_size"),
        intermediate_size=i("intermediate_size"),
        num_hidden_layers=i("num_hidden_layers"),
        num_attention_heads=i("num_attention_heads"),
        num_key_value_heads=i("num_key_value_heads"),
        head_dim=i("head_dim"),
        num_local_experts=i("num_local_experts"),
        num_experts_per_tok=i("num_experts_per_tok"),
        max_position_embeddings=i("max_position_embeddings"),
        rope_parameters={"rope_type": "default", "rope_theta": f("rope_theta")},
        rms_norm_eps=f("rms_norm_eps"),
        router_aux_loss_coef=f("router_aux_loss_coef"),
        router_jitter_noise=0.0,
        attention_dropout=0.0,
        sliding_window=None,
        tie_word_embeddings=False,
        output_router_logits=False,
    )


def hf_slot(model, name, intermediate):
    """The in-memory parameter and index holding on-disk tensor `name`."""
    if m := EXPERT.fullmatch(name):
        layer, expert, kind = int(m[1]), int(m[2]), m[3]
        experts = model.model.layers[layer].mlp.experts
        if kind == "w1":
            return experts.gate_up_proj, (expert, slice(0, intermediate))
        if kind == "w3":
            return experts.gate_up_proj, (expert, slice(intermediate, None))
        return experts.down_proj, (expert,)
    if m := GATE.fullmatch(name):
        return model.model.layers[int(m[1])].mlp.gate.weight, ()
    return dict(model.named_parameters())[name], ()


def load_reference(d, names, out_dir, case):
    config = hf_config(d)
    checkpoint = os.path.join(out_dir, f"{case}_hf")
    os.makedirs(checkpoint, exist_ok=True)
    config.save_pretrained(checkpoint)
    save_file({n: d[n].contiguous() for n in names}, os.path.join(checkpoint, "model.safetensors"),
              metadata={"format": "pt"})
    model, info = MixtralForCausalLM.from_pretrained(
        checkpoint, dtype=torch.float32, attn_implementation="eager",
        experts_implementation="eager", output_loading_info=True)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        if info.get(key):
            failures.append(f"{case} from_pretrained {key}: {sorted(info[key])}")
            print(f"  from_pretrained {key}: {sorted(info[key])} (FAIL)")
    model.eval()  # no jitter, no dropout (both are 0 anyway)
    intermediate = config.intermediate_size
    slots = {n: hf_slot(model, n, intermediate) for n in names}
    mismatched = [n for n, (p, index) in slots.items() if not torch.equal(p.detach()[index], d[n])]
    if mismatched:
        failures.append(f"{case} loaded weights differ from ours: {mismatched}")
    print(f"  {'checkpoint loads by from_pretrained':48s} "
          f"{'identical weights' if not mismatched else 'WEIGHTS DIFFER'}")
    return model, slots


def check_routing(case, d, router_logits, top_k):
    for i, reference in enumerate(router_logits):
        ours = d[f"router_logits.{i}"]
        compare(case, "router_logits", f"router_logits.{i}", ours, reference, LOGITS_TOLERANCE)
        if top_k < ours.shape[1]:
            top = ours.double().topk(top_k + 1, dim=-1).values
            margin = (top[:, top_k - 1] - top[:, top_k]).min().item()
            if margin < MIN_ROUTING_MARGIN:
                failures.append(f"{case} layer {i}: routing near-tie (margin {margin:.1e}); "
                                "change the case's seed")
                continue
        same = torch.equal(ours.topk(top_k, dim=-1).indices.sort(dim=-1).values,
                           reference.detach().topk(top_k, dim=-1).indices.sort(dim=-1).values)
        if not same:
            failures.append(f"{case} layer {i}: top-{top_k} choices differ from Hugging Face")
        print(f"  {'top-k choices layer ' + str(i):48s} {'identical' if same else 'DIFFER'}")


def check_grads(case, prefix, d, slots, top_k):
    grads = {name: param.grad[index] for name, (param, index) in slots.items()}
    largest = max(g.abs().max().item() for g in grads.values())
    errors = []
    for name, reference in grads.items():
        ours = d[f"{prefix}{name}"]
        if top_k == 1 and prefix == "grad." and GATE.fullmatch(name):
            # Mathematically zero (the renormalised weight p / p is 1): PyTorch
            # leaves rounding noise, so both must be noise-sized instead.
            noise = max(ours.abs().max().item(), reference.abs().max().item()) / largest
            worst["zero_gate_grad"] = max(worst.get("zero_gate_grad", 0.0), noise)
            if noise > ZERO_GRADIENT:
                failures.append(f"{case} {prefix}{name}: should be zero under top-1 routing, "
                                f"max {noise:.2e} of the largest gradient")
            continue
        compare(case, "grad", f"{prefix}{name}", ours, reference, GRAD_TOLERANCE, verbose=False)
        errors.append(relative_error(ours, reference))
    label = f"every {prefix}* ({len(grads)} tensors)"
    print(f"  {label:48s} worst rel err {max(errors):.2e}")


def check_case(path, out_dir):
    case = os.path.basename(path).removesuffix(".safetensors")
    d = load_file(path)
    names = [n for n in d if not n.startswith(("grad.", "grad_aux.", "config.", "router_logits."))
             and n.endswith(".weight")]
    c = {k.removeprefix("config."): int(v) for k, v in d.items()
         if k.startswith("config.") and v.dtype == torch.int64}
    print(f"{case}: {c['num_hidden_layers']} layers, "
          f"{c['num_attention_heads']}/{c['num_key_value_heads']} heads, "
          f"{c['num_local_experts']} experts top-{c['num_experts_per_tok']}, "
          f"vocab {c['vocab_size']}, ids {tuple(d['input_ids'].shape)}")
    model, slots = load_reference(d, names, out_dir, case)
    ids = d["input_ids"].long()
    ours_labels = d["labels"].long()
    assert (ours_labels[:, -1] == -100).all(), "the dump must ignore the last position"
    hf_labels = ids.clone()
    hf_labels[:, 1:] = ours_labels[:, :-1]

    # Language-model loss only.
    out = model(input_ids=ids, labels=hf_labels)
    compare(case, "logits", "logits", d["logits"], out.logits, LOGITS_TOLERANCE)
    compare(case, "loss", "loss", d["loss"], out.loss, LOSS_TOLERANCE)
    out.loss.backward()
    check_grads(case, "grad.", d, slots, c["num_experts_per_tok"])

    # Plus coef * aux, as Hugging Face adds it with output_router_logits.
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=hf_labels, output_router_logits=True)
    check_routing(case, d, out.router_logits, c["num_experts_per_tok"])
    compare(case, "aux_loss", "aux_loss (load_balancing_loss_func)", d["aux_loss"], out.aux_loss,
            LOSS_TOLERANCE)
    out.loss.backward()
    check_grads(case, "grad_aux.", d, slots, c["num_experts_per_tok"])


def main():
    dump, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    subprocess.run([dump, out_dir], check=True)
    torch.manual_seed(0)
    hf_logging.disable_progress_bar()
    paths = sorted(glob.glob(os.path.join(out_dir, "case*.safetensors")))
    if not paths:
        print(f"FAILED: {dump} wrote no case*.safetensors into {out_dir}")
        return 1
    for path in paths:
        check_case(path, out_dir)
    print("worst relative errors: " + ", ".join(f"{k} {v:.2e}" for k, v in sorted(worst.items())))
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print(f"the model matches Hugging Face MixtralForCausalLM on {len(paths)} configs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
