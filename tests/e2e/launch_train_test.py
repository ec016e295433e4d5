"""moe-launch -n 2 trains the tiny model: every rank's output is prefixed and
kept in its own log file, and the losses equal a plain 1-process run's
(data parallelism never changes the math; 1e-5 relative). Then the usage
errors: a missing '--', a bad -n, a program that is not there."""
import os
import subprocess
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as u

TOLERANCE = 1e-5


def main():
    bins = u.bin_dir()
    launch = os.path.join(bins, "moe-launch")
    work = u.make_temp_dir("launch")
    data = u.make_dataset(bins, os.path.join(work, "data"))
    flags = u.tiny_flags(data, train_iters=6)

    reference_log = os.path.join(work, "reference.jsonl")
    subprocess.run([os.path.join(bins, "moe-train"), *flags, f"--log_jsonl={reference_log}"],
                   check=True, stdout=subprocess.DEVNULL)
    reference = u.read_jsonl(reference_log)

    log = os.path.join(work, "launch.jsonl")
    logs = os.path.join(work, "logs")
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)  # moe-launch picks cores / ranks
    result = subprocess.run([launch, "-n", "2", f"--log_dir={logs}", "--", "moe-train", *flags,
                             f"--log_jsonl={log}"], capture_output=True, text=True, timeout=240,
                            env=env)
    print(result.stdout[-3000:], result.stderr[-3000:])
    u.check(result.returncode == 0, f"moe-launch exited {result.returncode}")
    u.check("through mpirun, OMP_NUM_THREADS=" in result.stdout, "no launch summary line")
    u.check("[rank 0] step 6/6" in result.stdout, "rank 0's output is not prefixed")
    u.check("DP 2" in result.stdout, "the ranks did not form one 2-rank job")
    for rank in (0, 1):
        path = os.path.join(logs, f"rank_{rank}.log")
        u.check(os.path.exists(path), f"no per-rank log {path}")
        text = open(path).read()
        u.check(f"moe-launch: rank {rank}: pid" in text, f"{path} lacks its header")
    u.check("step 6/6" in open(os.path.join(logs, "rank_0.log")).read(),
            "rank 0's log lacks its step lines")

    records = u.read_jsonl(log)
    u.check(len(records) == len(reference), f"{len(records)} steps logged, want {len(reference)}")
    worst = 0.0
    for got, want in zip(records, reference):
        for key in ("loss", "lm_loss", "aux_loss", "grad_norm"):
            worst = max(worst, u.relative_error(got[key], want[key]))
    print(f"2 ranks through moe-launch vs 1 process: max relative error {worst:.2e}")
    u.check(worst <= TOLERANCE, f"losses differ from the 1-process run by {worst:.2e}")

    # Usage errors: exit code and the message a user sees.
    cases = [
        ([launch, "-n", "2", "moe-train"], 2, "missing '--'"),
        ([launch, "--", "moe-train"], 2, "-n is required"),
        ([launch, "-n", "-3", "--", "moe-train"], 2, "-n must be at least 1"),
        ([launch, "-n", "2", "--"], 2, "nothing after '--'"),
        ([launch, "-n", "2", "--", "no-such-program-xyz"], 127, "not found"),
    ]
    for args, code, message in cases:
        r = subprocess.run(args, capture_output=True, text=True, timeout=30)
        u.check(r.returncode == code and message in r.stderr,
                f"{' '.join(args[1:])}: exit {r.returncode}, stderr {r.stderr!r}; want {code}, "
                f"{message!r}")
    u.cleanup(work)
    print("PASSED")


if __name__ == "__main__":
    main()
