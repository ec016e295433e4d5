"""One MoE layer forward+backward on the CPU: ours (build/bin/moe_layer_bench) vs PyTorch.

Ours: MoeLayer::Forward + Backward (fp32, dropless, all-to-all dispatcher),
run by moe_layer_bench --serve, which also times the split of the layer's
time. PyTorch: transformers' MixtralSparseMoeBlock (softmax top-k router
renormalised over the k chosen, SwiGLU experts, router jitter off), once per
experts implementation (grouped_mm is what a transformers model picks on the
CPU; eager is its per-expert loop), on the same threads, shapes and input
distribution (x, dy ~ N(0, 1), every weight ~ N(0, 0.02), so routing is near
uniform on both sides):

    x.grad = None; y = block(x); y.backward(dy)

Both sides accumulate parameter gradients over the repeats and compute the
input gradient fresh. The sides alternate repeat by repeat (ours, then each
PyTorch implementation, and again), so that load from other processes on a
shared machine falls on all of them alike; the ratio is taken per repeat
(median [min..max] over the repeats), with the ratio of the medians beside.

Prints s/layer for both, the ratio ours/PyTorch (lower is better for us)
against each implementation and against the faster one, and our split of the
layer's time between routing, permutation, communication and expert GEMMs.
Spreads are [min..max] over the timed repeats.

  python bench/moe_layer_vs_pytorch.py [--bench build/bin/moe_layer_bench] [--threads N]
      [--repeats N] [--configs small,large] [--ep N [--mpirun mpirun]]

--ep N (N > 1) also runs our layer with expert parallelism over N MPI ranks
on this machine (mpirun -n N, threads / N OpenMP threads per rank, tokens / N
per rank: the same total work on the same cores), in the same alternation.
"""

import argparse
import errno
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time

import torch

# Kept in sync with kConfigs in moe_layer.cc.
CONFIGS = {
    "small": dict(hidden=256, ffn=896, experts=8, top_k=2, tokens=1024),
    "large": dict(hidden=1024, ffn=3584, experts=8, top_k=2, tokens=2048),
    "tiny": dict(hidden=32, ffn=48, experts=8, top_k=2, tokens=64),
}


def make_torch_layer(c, experts_implementation):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    config = MixtralConfig(hidden_size=c["hidden"], intermediate_size=c["ffn"],
                           num_local_experts=c["experts"], num_experts_per_tok=c["top_k"],
                           router_jitter_noise=0.0)
    config._experts_implementation = experts_implementation
    torch.manual_seed(0)
    block = MixtralSparseMoeBlock(config).float().train()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, 0.02)
    x = torch.randn(1, c["tokens"], c["hidden"], requires_grad=True)
    dy = torch.randn(1, c["tokens"], c["hidden"])

    def step():
        x.grad = None
        y = block(x)
        y.backward(dy)

    return step


class Ours:
    """moe_layer_bench --serve for one config: one repeat per request.

    Every rank reads its requests from its own FIFO, so that a rank waiting
    for the next repeat sleeps instead of polling MPI beside PyTorch.
    """

    def __init__(self, args, name, ep):
        self.dir = tempfile.mkdtemp(prefix="moe_layer_bench.")
        prefix = os.path.join(self.dir, "requests")
        cmd = [args.bench, f"--serve={prefix}", f"--config={name}", f"--warmup={args.warmup}"]
        threads = args.threads
        if ep > 1:
            threads = max(1, args.threads // ep)
            cmd = [args.mpirun, "--oversubscribe", "--allow-run-as-root", "--bind-to", "none",
                   "-x", f"OMP_NUM_THREADS={threads}", "-n", str(ep)] + cmd + [f"--ep={ep}"]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        paths = [f"{prefix}.{rank}" for rank in range(ep)]
        for path in paths:
            os.mkfifo(path)
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, text=True)
        self.requests = [self._open(path) for path in paths]

    def _open(self, path):
        # A FIFO opens for writing once its reader has: after the setup.
        while True:
            try:
                return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                if e.errno != errno.ENXIO:
                    raise
            if self.proc.poll() is not None:
                raise RuntimeError(f"moe_layer_bench exited with {self.proc.returncode}")
            time.sleep(0.05)

    def repeat(self):
        for fd in self.requests:
            os.write(fd, b"go\n")
        line = self.proc.stdout.readline()
        if not line.startswith("{"):
            raise RuntimeError(f"moe_layer_bench stopped: {line!r}")
        return json.loads(line)["layer_s"]

    def finish(self):
        for fd in self.requests:
            os.close(fd)
        out, _ = self.proc.communicate()
        shutil.rmtree(self.dir)
        if self.proc.returncode != 0:
            raise RuntimeError(f"moe_layer_bench exited with {self.proc.returncode}")
        return json.loads(out.strip().splitlines()[-1])


def spread(values):
    return f"{statistics.median(values):.4f} [{min(values):.4f}..{max(values):.4f}]"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bench", default="build/bin/moe_layer_bench")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--configs", default="small,large")
    parser.add_argument("--experts_implementations", default="grouped_mm,eager",
                        help="transformers' MoE experts kernels to time (grouped_mm, eager, "
                        "batched_mm)")
    parser.add_argument("--ep", type=int, default=1,
                        help="also run ours with expert parallelism over this many MPI ranks")
    parser.add_argument("--mpirun", default="mpirun")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    impls = args.experts_implementations.split(",")
    eps = [1] + ([args.ep] if args.ep > 1 else [])
    rows = []
    load_before = os.getloadavg()[0]
    for name in args.configs.split(","):
        c = CONFIGS[name]
        ours = {ep: Ours(args, name, ep) for ep in eps}
        steps = {impl: make_torch_layer(c, impl) for impl in impls}
        for step in steps.values():
            for _ in range(args.warmup):
                step()
        ours_s = {ep: [] for ep in eps}
        theirs_s = {impl: [] for impl in impls}
        for _ in range(args.repeats):
            for ep in eps:
                ours_s[ep].append(ours[ep].repeat())
            for impl in impls:
                start = time.perf_counter()
                steps[impl]()
                theirs_s[impl].append(time.perf_counter() - start)
        summaries = {ep: ours[ep].finish() for ep in eps}
        del steps
        rows.append((name, c, ours_s, summaries, theirs_s))

    print(f"threads {args.threads}, torch {torch.__version__}; s per MoE layer forward+backward "
          f"(fp32, dropless), median of {args.repeats} alternating repeats [min..max]; "
          f"1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    for name, c, ours_s, summaries, theirs_s in rows:
        print(f"\n{name}: hidden {c['hidden']}, ffn {c['ffn']}, {c['experts']} experts top-"
              f"{c['top_k']}, {c['tokens']} tokens")
        t_med = {impl: statistics.median(theirs_s[impl]) for impl in impls}
        best = min(impls, key=lambda i: t_med[i])
        for impl in impls:
            print(f"  PyTorch {impl:10s} {spread(theirs_s[impl])}")
        for ep, samples in ours_s.items():
            r = summaries[ep]
            o_med = statistics.median(samples)
            print(f"  ours EP={ep} ({r['threads']} threads/rank) {spread(samples)}")
            # The ratio of each repeat's pair (taken back to back, so under the
            # same load) is the headline; the ratio of the medians beside it.
            for impl in impls:
                paired = [o / t for o, t in zip(samples, theirs_s[impl])]
                print(f"    ours/{impl} per repeat {spread(paired)}; of the medians "
                      f"{o_med / t_med[impl]:.3f}{'  <- the faster PyTorch' if impl == best else ''}")
            total = sum(r[k] for k in ("routing_s", "permutation_s", "communication_s",
                                       "experts_s", "other_s"))
            pct = {k: 100 * r[k] / total for k in r if k.endswith("_s")}
            print(f"    split: routing {pct['routing_s']:.1f}%, permutation "
                  f"{pct['permutation_s']:.1f}%, communication {pct['communication_s']:.1f}%, "
                  f"expert GEMMs {pct['expert_gemm_s']:.1f}% (+ SwiGLU {pct['swiglu_s']:.1f}%), "
                  f"other {pct['other_s']:.1f}%")
            # The expert GEMMs alone at this machine's sgemm rate: no layer is faster.
            floor = r["expert_flops"] / (r["sgemm_gflops"] * 1e9)
            print(f"    experts (GEMMs + SwiGLU) at {r['expert_gflops']:.1f} GFLOP/s = "
                  f"{r['expert_gflops'] / r['sgemm_gflops']:.2f} of the sgemm rate "
                  f"({r['sgemm_gflops']:.0f} GFLOP/s per rank, same repeats); GEMM floor "
                  f"{floor:.4f} s = ratio {floor / t_med[best]:.3f} against {best}")


if __name__ == "__main__":
    main()
