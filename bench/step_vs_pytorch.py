"""One training step on the CPU: ours (build/bin/step_bench) vs PyTorch eager, same run.

For each config, alternating rounds: run step_bench for that config (our
Model::ForwardBackward + AdamW::Step, fp32), then time the same step in
PyTorch: transformers' MixtralForCausalLM (eager attention, fp32,
output_router_logits=True with the same aux coefficient) and
torch.optim.AdamW with the same hyperparameters, on the same threads, batch
and random token ids' shape:

    loss = model(input_ids, labels=input_ids).loss; loss.backward(); opt.step(); opt.zero_grad()

Prints s/step for both, the ratio ours/PyTorch (lower is better for us), our
GFLOP/s and its fraction of the sgemm peak that step_bench measures in the
same run. Spreads are [min..max] over every timed step of every round.

  python bench/step_vs_pytorch.py [--bench build/bin/step_bench] [--threads N]
                                  [--repeats N] [--rounds N] [--configs A,B,C]
"""

import argparse
import json
import os
import statistics
import subprocess
import time

import torch

# Kept in sync with kConfigs in step_bench.cc: vocab 257 (bytes), hidden / 64
# heads of head_dim 64 with 2 query groups, RoPE base 1e4, aux coefficient 0.01.
CONFIGS = {
    "A": dict(hidden=256, ffn=512, layers=4, experts=8, top_k=2, seq=256, batch=4),
    "B": dict(hidden=256, ffn=512, layers=4, experts=32, top_k=4, seq=256, batch=4),
    "C": dict(hidden=128, ffn=256, layers=2, experts=8, top_k=2, seq=256, batch=4),
}
AUX_COEF = 0.01
LR, BETAS, EPS, WEIGHT_DECAY = 1e-4, (0.9, 0.999), 1e-8, 0.1


def make_torch_step(c, experts_implementation=None):
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(
        vocab_size=257, hidden_size=c["hidden"], intermediate_size=c["ffn"],
        num_hidden_layers=c["layers"], num_attention_heads=c["hidden"] // 64,
        num_key_value_heads=2, head_dim=64, num_local_experts=c["experts"],
        num_experts_per_tok=c["top_k"], max_position_embeddings=c["seq"], rope_theta=1e4,
        router_aux_loss_coef=AUX_COEF, output_router_logits=True, tie_word_embeddings=False,
        attn_implementation="eager")
    if experts_implementation:
        config._experts_implementation = experts_implementation
    torch.manual_seed(0)
    model = MixtralForCausalLM(config).float().train()
    # Megatron's (and our) no-decay rule: 1-D parameters are not decayed.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, betas=BETAS, eps=EPS)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 257, (c["batch"], c["seq"]), generator=g)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    experts = getattr(model.config, "_experts_implementation", "eager")
    return step, experts


def time_torch(c, warmup, repeats, experts_implementation):
    step, experts = make_torch_step(c, experts_implementation)
    for _ in range(warmup):
        step()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        samples.append(time.perf_counter() - start)
    return samples, experts


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bench", default="build/bin/step_bench")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternate ours and PyTorch this many times per config")
    parser.add_argument("--configs", default="A,B,C")
    parser.add_argument("--experts_implementation", default=None,
                        help="transformers' MoE experts kernel (eager, grouped_mm, batched_mm); "
                        "default: what transformers picks")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    rows = []
    for name in args.configs.split(","):
        c = CONFIGS[name]
        ours, theirs, experts = [], [], None
        # Alternating rounds spread a change in machine load over both sides.
        for _ in range(args.rounds):
            out = subprocess.run(
                [args.bench, "--json", f"--config={name}", f"--warmup={args.warmup}",
                 f"--repeats={args.repeats}"],
                env=env, check=True, capture_output=True, text=True).stdout
            ours += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            samples, experts = time_torch(c, args.warmup, args.repeats, args.experts_implementation)
            theirs.append(samples)
        rows.append((name, ours, theirs, experts))

    print(f"threads {args.threads}, torch {torch.__version__}; s/step of forward+backward+AdamW "
          f"(fp32), median over {args.rounds} rounds x {args.repeats} steps [min..max]")
    print(f"{'config':6s} {'ours s/step':>24s} {'PyTorch s/step':>24s} {'ours/torch':>10s} "
          f"{'our GFLOP/s':>11s} {'of sgemm peak':>13s}")
    for name, ours, theirs, experts in rows:
        o_med = statistics.median(r["step_s"] for r in ours)
        o_min = min(r["step_min_s"] for r in ours)
        o_max = max(r["step_max_s"] for r in ours)
        t_med = statistics.median(statistics.median(s) for s in theirs)
        t_min = min(min(s) for s in theirs)
        t_max = max(max(s) for s in theirs)
        gflops = ours[0]["flops"] / o_med / 1e9
        peak = statistics.median(r["sgemm_gflops"] for r in ours)
        print(f"{name:6s} {o_med:8.4f} [{o_min:.4f}..{o_max:.4f}] "
              f"{t_med:8.4f} [{t_min:.4f}..{t_max:.4f}] {o_med / t_med:10.3f} "
              f"{gflops:11.1f} {gflops / peak:8.2f} of {peak:.0f}")
    print(f"PyTorch experts_implementation: {rows[0][3]}; attention: eager")


if __name__ == "__main__":
    main()
