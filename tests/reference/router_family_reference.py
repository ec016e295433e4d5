"""The router family against PyTorch, in float64.

Runs router_family_dump, which writes each variant's options, inputs and our
logits, choices, weights, six loss values and gradients, then recomputes them
with torch ops and autograd from Megatron-Core's rules
(topk_routing_with_score_function, group_limited_topk,
compute_routing_scores_for_aux_loss, switch_load_balancing_loss_func, the
seq_aux_loss reshape, z_loss_func) and, for top-p, from "Harder Tasks Need
More Experts" (smallest prefix of the sorted probabilities reaching P).

Differences from Megatron-Core that we keep on purpose: tokens are
batch-major (rows [b*S, (b+1)*S) form sequence b) where Megatron's are
sequence-major; K in the aux losses is the mean number of picks per row
(top_k exactly for top-k routing); no 1e-20 guard in the sigmoid
normalisations.

Checks: ids identical; logits, weights and losses within 1e-12 relative;
dx and dgate of <weights, g> + sum_i c_i loss_i within 1e-10 relative.

Usage: router_family_reference.py DUMP_BINARY OUT_DIR
Exit codes: 0 all match, 1 a mismatch, 77 the reference packages are missing.
"""

import subprocess
import sys

try:
    import torch
    from safetensors.torch import load_file
except ImportError as error:  # reported as skipped by CTest
    print(f"SKIP: reference packages missing ({error}); run scripts/install-deps.sh")
    sys.exit(77)

VARIANTS = ["mixtral", "pre_softmax", "sigmoid", "sigmoid_top1", "group_limited",
            "group_limited_sigmoid_bias", "topp", "topp_capped"]
LOSSES = ["hf_aux", "switch_aux", "seq_aux", "global_aux", "z", "entropy"]
FORWARD_TOLERANCE = 1e-12
GRAD_TOLERANCE = 1e-10
failures = []


def compare(group, name, ours, reference, tolerance):
    ours, reference = ours.double(), reference.detach().double()
    scale = reference.abs().max().item()
    error = (ours - reference).abs().max().item() / max(scale, 1e-300)
    verdict = "ok" if error <= tolerance else "FAIL"
    print(f"  {name:12s} rel err {error:.2e} ({verdict})")
    if error > tolerance:
        failures.append(f"{group}.{name}: relative error {error:.3e} > {tolerance}")


def group_limited_topk(scores, k, num_groups, group_topk):
    tokens, experts = scores.shape
    grouped = scores.view(tokens, num_groups, experts // num_groups)
    group_scores = grouped.topk(k // group_topk, dim=-1).values.sum(dim=-1)
    groups = group_scores.topk(group_topk, dim=-1).indices
    mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter(1, groups, True)
    mask = mask.unsqueeze(-1).expand_as(grouped).reshape(tokens, experts)
    return scores.masked_fill(~mask, float("-inf")).topk(k, dim=-1)


def topk(scores, k, num_groups, group_topk):
    if group_topk:
        return group_limited_topk(scores, k, num_groups, group_topk)
    return scores.topk(k, dim=-1)


def route(d, logits):
    """Megatron-Core's topk_routing_with_score_function, or top-p."""
    k, groups, group_topk = int(d["top_k"]), int(d["num_groups"]), int(d["group_topk"])
    topp, cap = float(d["topp"]), int(d["topp_max_experts"])
    if topp > 0:
        probs = torch.softmax(logits, dim=-1)
        sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the earlier experts
        used = before < topp  # keep going until the mass reaches P
        width = cap if cap > 0 else probs.shape[1]
        used = used[:, :width]
        ids = torch.where(used, order[:, :width], -1)
        weights = torch.where(used, sorted_probs[:, :width], 0.0)
        return ids, weights
    if int(d["sigmoid"]):
        scores = torch.sigmoid(logits)
        key = scores + d["expert_bias"].double()
        ids = topk(key.detach(), k, groups, group_topk).indices
        chosen = scores.gather(1, ids)
        weights = chosen / chosen.sum(dim=-1, keepdim=True) if k > 1 else chosen
        return ids, weights
    if int(d["pre_softmax"]):
        weights, ids = topk(torch.softmax(logits, dim=-1), k, groups, group_topk)
        return ids, weights
    chosen, ids = topk(logits, k, groups, group_topk)
    return ids, torch.softmax(chosen, dim=-1)


def losses(d, logits, ids):
    experts, k = int(d["num_experts"]), int(d["top_k"])
    tokens, seq = logits.shape[0], int(d["seq_length"])
    if int(d["sigmoid"]):
        q = torch.sigmoid(logits)
        q = q / q.sum(dim=-1, keepdim=True)
    else:
        q = torch.softmax(logits, dim=-1)
    if float(d["topp"]) > 0:  # the counts are the top-p sets
        valid = ids >= 0
        picks = torch.zeros(tokens, experts, dtype=torch.float64)
        picks.scatter_add_(1, ids.clamp(min=0).long(), valid.double())
    else:  # the plain top-k of the scores: no groups, no bias
        picks = torch.zeros(tokens, experts, dtype=torch.float64)
        picks.scatter_(1, q.detach().topk(k, dim=-1).indices, 1.0)
    counts = picks.sum(dim=0)
    k_mean = counts.sum() / tokens
    hf_aux = experts * ((counts / tokens) * q.mean(dim=0)).sum()
    switch = (q.sum(dim=0) * counts).sum() * experts / (k_mean * tokens * tokens)
    b = tokens // seq
    q_seq, c_seq = q.view(b, seq, experts).sum(dim=1), picks.view(b, seq, experts).sum(dim=1)
    seq_aux = (q_seq * c_seq).sum() * experts / (k_mean * seq * seq) / b
    total = tokens + float(d["other_rows"])
    global_counts = counts + d["other_counts"]
    global_aux = (q.sum(dim=0) * global_counts).sum() * experts / (k_mean * total * total)
    z = torch.logsumexp(logits, dim=-1).square().mean()
    entropy = -(q * q.log()).sum(dim=-1).mean()
    return [hf_aux, switch, seq_aux, global_aux, z, entropy]


def check(name, d):
    x = d["x"].clone().requires_grad_(True)
    gate = d["gate"].clone().requires_grad_(True)
    logits = x @ gate.T
    ids, weights = route(d, logits)
    same = torch.equal(ids.int(), d["ids"])
    print(f"  {'ids':12s} {'identical' if same else 'DIFFER'}")
    if not same:
        failures.append(f"{name}.ids: choices differ")
        return
    values = losses(d, logits, ids)
    objective = (weights * d["g"]).sum()
    for c, v in zip(d["coefficients"].tolist(), values):
        objective = objective + c * v
    objective.backward()
    compare(name, "logits", d["logits"], logits, FORWARD_TOLERANCE)
    compare(name, "weights", d["weights"], weights, FORWARD_TOLERANCE)
    for i, loss in enumerate(LOSSES):
        compare(name, loss, d["losses"][i], values[i], FORWARD_TOLERANCE)
    compare(name, "dx", d["dx"], x.grad, GRAD_TOLERANCE)
    compare(name, "dgate", d["dgate"], gate.grad, GRAD_TOLERANCE)


def main():
    dump, out_dir = sys.argv[1], sys.argv[2]
    subprocess.run(["mkdir", "-p", out_dir], check=True)
    subprocess.run([dump, out_dir], check=True)
    for name in VARIANTS:
        print(f"{name}:")
        check(name, load_file(f"{out_dir}/{name}.safetensors"))
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("every router variant matches its PyTorch reference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
