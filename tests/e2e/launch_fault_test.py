"""A dead rank ends the job, and signals reach every rank.

1. kill -9 of one of 4 moe-train ranks in mid-run: moe-launch exits non-zero
   within 60 s, names the rank, and leaves no process of the job behind.
2. SIGTERM, then SIGINT, to moe-launch reach every rank of a program that
   traps them (each rank writes which signal it got), and moe-launch exits
   with the ranks' code (0).
3. SIGTERM to moe-launch running 2 moe-train ranks with --save: the ranks
   finish their step, save a checkpoint of the last logged step, and the job
   exits 0."""
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as u


def pids_of_rank(log_path):
    try:
        text = open(log_path).read()
    except FileNotFoundError:
        return None
    match = re.search(r"moe-launch: rank \d+: pid (\d+)", text)
    return int(match.group(1)) if match else None


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def kill_one_of_four(bins, work):
    data = u.make_dataset(bins, os.path.join(work, "data"))
    logs = os.path.join(work, "kill_logs")
    jsonl = os.path.join(work, "kill.jsonl")
    # Long enough never to finish on its own (about 5 ms a step on 2 cores).
    args = [os.path.join(bins, "moe-launch"), "-n", "4", f"--log_dir={logs}", "--", "moe-train",
            *u.tiny_flags(data, train_iters=100000), "--log_interval=1000",
            f"--log_jsonl={jsonl}"]
    with u.Processes() as processes:
        launch = processes.start(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        pids = {}
        for rank in range(4):
            pids[rank] = u.wait_for(lambda: pids_of_rank(os.path.join(logs, f"rank_{rank}.log")),
                                    60, f"rank {rank} to start")
        # Mid-run: a few steps logged.
        u.wait_for(lambda: os.path.exists(jsonl) and len(open(jsonl).readlines()) >= 5, 60,
                   "5 steps")
        killed_at = time.time()
        os.kill(pids[2], signal.SIGKILL)
        try:
            out, err = launch.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            u.fail("moe-launch did not end within 60 s of kill -9 of rank 2")
        elapsed = time.time() - killed_at
    print(err[-3000:])
    print(f"kill -9 of rank 2: moe-launch exited {launch.returncode} after {elapsed:.1f} s")
    u.check(launch.returncode != 0, "moe-launch exited 0 after a rank was killed")
    u.check(launch.returncode == 128 + signal.SIGKILL,
            f"exit code {launch.returncode}, want 137 (the killed rank's)")
    u.check("moe-launch: rank 2 failed first" in err and "killed by signal 9" in err,
            "moe-launch did not name rank 2 and its signal")
    time.sleep(1)
    leftovers = [r for r, pid in pids.items() if alive(pid)]
    u.check(not leftovers, f"ranks {leftovers} still run after the job ended")


TRAP_SCRIPT = textwrap.dedent("""\
    #!/bin/bash
    rank=${OMPI_COMM_WORLD_RANK:-${SLURM_PROCID:-x}}
    trap 'echo TERM > "$1/got_$rank"; exit 0' TERM
    trap 'echo INT > "$1/got_$rank"; exit 0' INT
    echo ready
    touch "$1/ready_$rank"
    while :; do sleep 0.05; done
    """)


def signal_is_forwarded(bins, work, sig, name):
    out_dir = os.path.join(work, f"signal_{name}")
    os.makedirs(out_dir)
    script = os.path.join(work, "trap.sh")
    with open(script, "w") as f:
        f.write(TRAP_SCRIPT)
    os.chmod(script, 0o755)
    with u.Processes() as processes:
        launch = processes.start([os.path.join(bins, "moe-launch"), "-n", "2", "--", script,
                                  out_dir], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        u.wait_for(lambda: all(os.path.exists(os.path.join(out_dir, f"ready_{r}"))
                               for r in (0, 1)), 60, "both ranks to start")
        launch.send_signal(sig)
        try:
            out, err = launch.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            u.fail(f"moe-launch did not end within 60 s of {name}")
    print(out[-1000:], err[-1000:])
    for rank in (0, 1):
        path = os.path.join(out_dir, f"got_{rank}")
        u.check(os.path.exists(path), f"rank {rank} never got {name}")
        got = open(path).read().strip()
        u.check(got == name, f"rank {rank} got {got}, want {name}")
    u.check(launch.returncode == 0, f"moe-launch exited {launch.returncode} after the ranks "
                                    f"exited 0 on {name}")
    print(f"{name}: forwarded to both ranks, exit 0")


def sigterm_saves(bins, work):
    data = os.path.join(work, "data", "tiny_text_document")
    ckpt = os.path.join(work, "ckpt")
    jsonl = os.path.join(work, "sigterm.jsonl")
    args = [os.path.join(bins, "moe-launch"), "-n", "2", "--", "moe-train",
            *u.tiny_flags(data, train_iters=100000), "--log_interval=100000", f"--save={ckpt}",
            f"--log_jsonl={jsonl}"]
    with u.Processes() as processes:
        launch = processes.start(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        u.wait_for(lambda: os.path.exists(jsonl) and len(open(jsonl).readlines()) >= 5, 60,
                   "5 steps")
        launch.send_signal(signal.SIGTERM)
        try:
            out, err = launch.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            u.fail("moe-launch did not end within 60 s of SIGTERM")
    print(out[-1500:], err[-1500:])
    u.check(launch.returncode == 0, f"moe-launch exited {launch.returncode} after SIGTERM")
    last = u.read_jsonl(jsonl)[-1]["step"]
    latest = open(os.path.join(ckpt, "latest")).read().strip()
    u.check(latest == f"iter_{last:07d}", f"latest is {latest}, the last step logged {last}")
    print(f"SIGTERM: the ranks saved {latest} and exited 0")


def main():
    bins = u.bin_dir()
    work = u.make_temp_dir("fault")
    kill_one_of_four(bins, work)
    signal_is_forwarded(bins, work, signal.SIGTERM, "TERM")
    signal_is_forwarded(bins, work, signal.SIGINT, "INT")
    sigterm_saves(bins, work)
    u.cleanup(work)
    print("PASSED")


if __name__ == "__main__":
    main()
