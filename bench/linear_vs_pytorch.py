"""Linear forward+backward: our layer vs raw OpenBLAS vs PyTorch, same run.

Runs build/bin/linear_bench --json (our Linear and the same three GEMMs
through OpenBLAS directly), then times PyTorch's F.linear forward + autograd
backward on the same shapes with the same thread count, and prints GFLOP/s
with the ratios ours/OpenBLAS and ours/PyTorch (higher is better for us).

  python bench/linear_vs_pytorch.py [--bench build/bin/linear_bench] [--threads N] [--repeats N]
"""

import argparse
import json
import os
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F


def time_torch(tokens, d_in, d_out, repeats):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(tokens, d_in, generator=g) * 0.02).requires_grad_(True)
    w = (torch.randn(d_out, d_in, generator=g) * 0.02).requires_grad_(True)
    dy = torch.randn(tokens, d_out, generator=g) * 0.02
    samples = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        y = F.linear(x, w)
        y.backward(dy)
        elapsed = time.perf_counter() - start
        if i >= 2:  # warm-up
            samples.append(elapsed)
    return statistics.median(samples), min(samples), max(samples)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bench", default="build/bin/linear_bench")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternate ours and PyTorch this many times; medians over all")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    # Alternating rounds spread a change in machine load over both sides.
    runs, torch_runs = [], []
    for _ in range(args.rounds):
        out = subprocess.run([args.bench, "--json", f"--repeats={args.repeats}"], env=env,
                             check=True, capture_output=True, text=True).stdout
        runs.append([json.loads(line) for line in out.splitlines() if line.startswith("{")])
        torch_runs.append([time_torch(r["tokens"], r["in"], r["out"], args.repeats)
                           for r in runs[-1]])
    rows = []
    for i, first in enumerate(runs[0]):
        row = dict(first)
        for side in ("ours", "blas"):
            row[f"{side}_s"] = statistics.median(run[i][f"{side}_s"] for run in runs)
            row[f"{side}_min_s"] = min(run[i][f"{side}_min_s"] for run in runs)
            row[f"{side}_max_s"] = max(run[i][f"{side}_max_s"] for run in runs)
        row["torch"] = (statistics.median(t[i][0] for t in torch_runs),
                        min(t[i][1] for t in torch_runs), max(t[i][2] for t in torch_runs))
        rows.append(row)

    print(f"threads {args.threads}, torch {torch.__version__}; GFLOP/s of Linear forward+backward "
          f"(3 GEMMs), median of {args.rounds} rounds x {args.repeats} [min..max]")
    print(f"{'tokens x in x out':18s} {'ours':>20s} {'OpenBLAS':>20s} {'PyTorch':>20s} "
          f"{'ours/BLAS':>9s} {'ours/torch':>10s}")
    for r in rows:
        flops = 6.0 * r["tokens"] * r["in"] * r["out"]
        t_med, t_min, t_max = r["torch"]

        def fmt(med, lo, hi):
            return f"{flops / med / 1e9:6.1f} [{flops / hi / 1e9:5.1f}..{flops / lo / 1e9:5.1f}]"

        name = f"{r['tokens']}x{r['in']}x{r['out']}"
        print(f"{name:18s} {fmt(r['ours_s'], r['ours_min_s'], r['ours_max_s']):>20s} "
              f"{fmt(r['blas_s'], r['blas_min_s'], r['blas_max_s']):>20s} "
              f"{fmt(t_med, t_min, t_max):>20s} "
              f"{r['blas_s'] / r['ours_s']:9.3f} {t_med / r['ours_s']:10.3f}")


if __name__ == "__main__":
    main()
