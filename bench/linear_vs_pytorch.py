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
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    out = subprocess.run([args.bench, "--json", f"--repeats={args.repeats}"], env=env,
                         check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    print(f"threads {args.threads}, torch {torch.__version__}; GFLOP/s of Linear forward+backward "
          f"(3 GEMMs), median of {args.repeats} [min..max]")
    print(f"{'tokens x in x out':18s} {'ours':>20s} {'OpenBLAS':>20s} {'PyTorch':>20s} "
          f"{'ours/BLAS':>9s} {'ours/torch':>10s}")
    for r in rows:
        flops = 6.0 * r["tokens"] * r["in"] * r["out"]
        t_med, t_min, t_max = time_torch(r["tokens"], r["in"], r["out"], args.repeats)

        def fmt(med, lo, hi):
            return f"{flops / med / 1e9:6.1f} [{flops / hi / 1e9:5.1f}..{flops / lo / 1e9:5.1f}]"

        name = f"{r['tokens']}x{r['in']}x{r['out']}"
        print(f"{name:18s} {fmt(r['ours_s'], r['ours_min_s'], r['ours_max_s']):>20s} "
              f"{fmt(r['blas_s'], r['blas_min_s'], r['blas_max_s']):>20s} "
              f"{fmt(t_med, t_min, t_max):>20s} "
              f"{r['blas_s'] / r['ours_s']:9.3f} {t_med / r['ours_s']:10.3f}")


if __name__ == "__main__":
    main()
