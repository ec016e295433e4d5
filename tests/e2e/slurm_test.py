"""examples/slurm/train.sbatch on a one-node Slurm cluster started here from
Debian's slurm-wlm: munged first (its own key and socket), then slurmctld
and slurmd with a slurm.conf generated for localhost (free ports, state in
a temporary directory). The job runs 2 ranks through moe-launch (srun
--mpi=pmix inside the allocation); its loss log must hold every step and
equal a plain 1-process run (1e-5 relative). Then the job is submitted again
as a requeued job would start, with more --train_iters: the script finds the
checkpoint's `latest`, adds --load, and the whole loss log (first job +
resumed one) equals an uninterrupted 1-process run. Skipped (77) when the
Slurm or munge binaries are absent."""
import os
import shutil
import subprocess
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as u

STEPS = 6
RESUMED_STEPS = 9  # the "requeued" job trains on to this step from the checkpoint
TOLERANCE = 1e-5
REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def find(name):
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)


def main():
    bins = u.bin_dir()
    tools = {name: find(name) for name in ("munged", "slurmctld", "slurmd", "sbatch", "sinfo")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        u.skip(f"no {', '.join(missing)} (Debian packages slurm-wlm and munge; "
               "scripts/install-deps.sh installs them)")
    if os.geteuid() != 0:
        u.skip("a local Slurm cluster needs root (slurmd starts jobs as their user)")
    work = u.make_temp_dir("slurm")
    os.chmod(work, 0o755)
    munge_dir = os.path.join(work, "munge")
    os.makedirs(munge_dir, mode=0o700)
    key = os.path.join(munge_dir, "munge.key")
    with open(key, "wb") as f:
        f.write(os.urandom(1024))
    os.chmod(key, 0o400)
    socket_path = os.path.join(munge_dir, "munge.sock")
    for sub in ("state", "spool", "log"):
        os.makedirs(os.path.join(work, sub))
    ctld_port, slurmd_port = u.free_port(), u.free_port()
    while slurmd_port == ctld_port:
        slurmd_port = u.free_port()
    conf = os.path.join(work, "slurm.conf")
    cpus = os.cpu_count() or 1
    with open(conf, "w") as f:
        f.write(f"""ClusterName=moetest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket_path}
StateSaveLocation={work}/state
SlurmdSpoolDir={work}/spool
SlurmctldPidFile={work}/slurmctld.pid
SlurmdPidFile={work}/slurmd.pid
SlurmctldLogFile={work}/log/slurmctld.log
SlurmdLogFile={work}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
NodeName=localhost NodeAddr=127.0.0.1 NodeHostname={os.uname().nodename} CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
""")
    env = dict(os.environ, SLURM_CONF=conf)
    env.pop("SLURM_JOB_ID", None)
    data = u.make_dataset(bins, os.path.join(work, "data"))
    reference_log = os.path.join(work, "reference.jsonl")
    subprocess.run([os.path.join(bins, "moe-train"), *u.tiny_flags(data, RESUMED_STEPS),
                    f"--log_jsonl={reference_log}"], check=True, stdout=subprocess.DEVNULL)
    reference = u.read_jsonl(reference_log)

    with u.Processes() as processes:
        processes.start([tools["munged"], "--foreground", "--force", f"--socket={socket_path}",
                         f"--key-file={key}", f"--log-file={work}/log/munged.log",
                         f"--pid-file={munge_dir}/munged.pid", f"--seed-file={munge_dir}/seed"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        u.wait_for(lambda: os.path.exists(socket_path), 30, "munged's socket")
        processes.start([tools["slurmctld"], "-D", "-i", "-f", conf], env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes.start([tools["slurmd"], "-D", "-f", conf, "-N", "localhost"], env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def idle():
            r = subprocess.run([tools["sinfo"], "-h", "-o", "%T"], env=env, capture_output=True,
                               text=True)
            return r.returncode == 0 and r.stdout.strip() == "idle"
        u.wait_for(idle, 60, "the Slurm node to be idle (logs in " + work + "/log)")

        run_dir = os.path.join(work, "run")
        ckpt_dir = os.path.join(run_dir, "checkpoints")
        recipe = os.path.join(work, "empty.flags")
        open(recipe, "w").close()

        def submit(steps, name):
            job_env = dict(env, MOE_HOME=REPO, MOE_BIN=bins, RUN_DIR=run_dir, CKPT_DIR=ckpt_dir,
                           SAVE_INTERVAL="3", RECIPE=recipe,
                           EXTRA_FLAGS=" ".join(u.tiny_flags(data, train_iters=steps)))
            output = os.path.join(work, f"{name}.out")
            result = subprocess.run(
                [tools["sbatch"], "--wait", "--parsable", "--nodes=1", "--ntasks=2",
                 "--cpus-per-task=1", "--time=00:05:00", f"--output={output}",
                 os.path.join(REPO, "examples", "slurm", "train.sbatch")],
                env=job_env, capture_output=True, text=True, timeout=300)
            job_output = open(output).read() if os.path.exists(output) else "(no job output)"
            print(job_output[-4000:])
            u.check(result.returncode == 0,
                    f"{name}: sbatch --wait exited {result.returncode}: {result.stderr}\n"
                    + open(f"{work}/log/slurmd.log").read()[-2000:])
            return job_output

        first = submit(STEPS, "first")
        u.check("through srun" in first, "moe-launch did not use srun inside the allocation")
        u.check(os.path.exists(os.path.join(run_dir, "logs", "rank_1.log")), "rank 1 never ran")
        u.check(os.path.exists(os.path.join(ckpt_dir, "latest")), "the job saved no checkpoint")
        u.check(len(u.read_jsonl(os.path.join(run_dir, "train_log.jsonl"))) == STEPS,
                f"the first job did not log {STEPS} steps")
        resumed = submit(RESUMED_STEPS, "resumed")
        u.check("train.sbatch: resuming from" in resumed,
                "the second job did not find the checkpoint and add --load")

    records = u.read_jsonl(os.path.join(run_dir, "train_log.jsonl"))
    u.check([r["step"] for r in records] == list(range(1, RESUMED_STEPS + 1)),
            f"the jobs logged steps {[r['step'] for r in records]}, want 1..{RESUMED_STEPS}")
    worst = max(u.relative_error(g[k], w[k]) for g, w in zip(records, reference)
                for k in ("loss", "lm_loss", "aux_loss", "grad_norm"))
    print(f"Slurm jobs (2 tasks, resumed at step {STEPS}) vs 1 uninterrupted process: "
          f"max relative error {worst:.2e}")
    u.check(worst <= TOLERANCE, f"the jobs' losses differ from a 1-process run by {worst:.2e}")
    u.cleanup(work)
    print("PASSED")


if __name__ == "__main__":
    main()
