"""A real Prometheus server scrapes a 2-rank moe-train run (through
moe-launch, --metrics_port): the series it stored equal the run's
--log_jsonl (relative 1e-9; the text format carries 16 digits), the
counters count the steps and tokens, and each rank's process series are
there. Skipped (77) when the prometheus binary is absent."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as u

STEPS = 20
TOKENS_PER_STEP = 8 * 32  # global batch x seq_length, every label counts
TOLERANCE = 1e-9


def api(port, path, **params):
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    if body.get("status") != "success":
        u.fail(f"Prometheus {path} {params}: {body}")
    return body["data"]


def instant(port, query, at):
    """{labels as a sorted tuple: value} of an instant query at time `at`."""
    result = api(port, "query", query=query, time=f"{at:.3f}")["result"]
    return {tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")):
            float(r["value"][1]) for r in result}


def single(port, query, at):
    values = instant(port, query, at)
    u.check(len(values) == 1, f"{query}: {len(values)} series, want 1: {values}")
    return next(iter(values.values()))


def main():
    bins = u.bin_dir()
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        u.skip("no prometheus binary (Debian package prometheus; scripts/install-deps.sh "
               "installs it)")
    work = u.make_temp_dir("prom")
    data = u.make_dataset(bins, os.path.join(work, "data"))
    metrics_port = u.free_port_range(2)
    prometheus_port = u.free_port()
    config = os.path.join(work, "prometheus.yml")
    with open(config, "w") as f:
        f.write(f"""global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: moe-train
    static_configs:
      - targets: ['127.0.0.1:{metrics_port}', '127.0.0.1:{metrics_port + 1}']
""")
    jsonl = os.path.join(work, "train.jsonl")
    with u.Processes() as processes:
        server = processes.start(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={work}/tsdb",
             f"--web.listen-address=127.0.0.1:{prometheus_port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "prometheus.log"), "w"))

        def ready():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{prometheus_port}/-/ready",
                                            timeout=2) as r:
                    return r.status == 200
            except OSError:
                return server.poll() is not None and u.fail("prometheus exited: " + open(
                    os.path.join(work, "prometheus.log")).read()[-2000:])
        u.wait_for(ready, 60, "Prometheus to be ready")

        # Slow enough steps are not needed: the run lingers until scraped.
        train = processes.start(
            [os.path.join(bins, "moe-launch"), "-n", "2", "--", "moe-train",
             *u.tiny_flags(data, train_iters=STEPS), f"--log_jsonl={jsonl}",
             f"--metrics_port={metrics_port}", "--metrics_linger_s=20", "--mfu_peak_tflops=1"],
            stdout=open(os.path.join(work, "train.out"), "w"), stderr=subprocess.STDOUT)

        def scraped_final():
            if train.poll() is not None:
                u.fail(f"training exited {train.returncode} before Prometheus scraped its last "
                       f"step: " + open(os.path.join(work, "train.out")).read()[-3000:])
            now = time.time()
            try:
                steps = instant(prometheus_port, "moe_train_steps_total", now)
                up = instant(prometheus_port, "moe_train_up", now)
            except OSError:
                return None
            done = steps and next(iter(steps.values())) == STEPS and len(up) == 2
            return now if done else None
        at = u.wait_for(scraped_final, 60, "Prometheus to scrape the last step of both ranks",
                        interval=0.5)

        records = u.read_jsonl(jsonl)
        u.check(len(records) == STEPS, f"{len(records)} steps in the log, want {STEPS}")
        last = records[-1]
        compared = {"moe_train_loss": last["loss"], "moe_train_lm_loss": last["lm_loss"],
                    "moe_train_aux_loss": last["aux_loss"], "moe_train_z_loss": last["z_loss"],
                    "moe_train_learning_rate": last["lr"], "moe_train_grad_norm": last["grad_norm"],
                    "moe_train_step_seconds": last["step_s"],
                    "moe_train_tokens_per_second": last["tokens_per_s"],
                    "moe_train_step": STEPS,
                    "moe_train_steps_total": STEPS,
                    "moe_train_skipped_steps_total": 0,
                    "moe_train_tokens_total": STEPS * TOKENS_PER_STEP,
                    "moe_train_step_seconds_total": sum(r["step_s"] for r in records)}
        for query, want in compared.items():
            got = single(prometheus_port, query, at)
            error = abs(got - want) / max(abs(want), 1e-30) if want else abs(got)
            print(f"{query:36s} Prometheus {got:.10g}  log {want:.10g}  rel. error {error:.1e}")
            u.check(error <= TOLERANCE, f"{query}: Prometheus has {got}, the log {want}")

        # Per-expert load: each counter is the log's expert_tokens summed over the steps.
        tokens = instant(prometheus_port, "moe_train_expert_tokens_total", at)
        for layer, row in enumerate(records[0]["expert_tokens"]):
            for expert in range(len(row)):
                want = sum(r["expert_tokens"][layer][expert] for r in records)
                got = [v for k, v in tokens.items()
                       if ("layer", str(layer)) in k and ("expert", str(expert)) in k]
                u.check(len(got) == 1 and got[0] == want,
                        f"layer {layer} expert {expert}: Prometheus has {got}, the log {want}")
        print(f"moe_train_expert_tokens_total        {len(tokens)} series equal the log's sums")
        # Communication time (rank 0's, a 2-rank run): the counters are the log's sums.
        for query, key in (("moe_train_communication_exposed_seconds_total", "comm_exposed_s"),
                           ("moe_train_communication_hidden_seconds_total", "comm_hidden_s")):
            want = sum(r.get(key, 0.0) for r in records)
            got = single(prometheus_port, query, at)
            u.check(want > 0 and abs(got - want) <= TOLERANCE * want,
                    f"{query}: Prometheus has {got}, the log's sum is {want}")
            print(f"{query:36s} Prometheus {got:.6g}  log {want:.6g}")

        # Model FLOP/s and MFU follow from the logged step time.
        flops = single(prometheus_port, "moe_train_model_flops_per_second", at)
        mfu = single(prometheus_port, "moe_train_mfu_ratio", at)
        u.check(flops > 0 and abs(mfu - flops / (1e12 * 2)) <= 1e-9 * mfu,
                f"MFU {mfu} is not model FLOP/s {flops} / (1 TFLOP/s x 2 ranks)")
        # Every loss Prometheus stored during the run is one the log has.
        series = api(prometheus_port, "query_range", query="moe_train_loss",
                     start=f"{at - 120:.3f}", end=f"{at:.3f}", step="1")["result"]
        logged = [r["loss"] for r in records]
        for _, value in series[0]["values"]:
            u.check(min(abs(float(value) - w) / abs(w) for w in logged) <= TOLERANCE,
                    f"Prometheus stored a loss {value} that no step logged")
        # Process series of each rank: rank 1 on the next port.
        for rank in (0, 1):
            labels = (("instance", f"127.0.0.1:{metrics_port + rank}"), ("job", "moe-train"),
                      ("rank", str(rank)))
            rss = instant(prometheus_port, "moe_train_resident_memory_bytes", at)
            u.check(rss.get(labels, 0) > 1e6, f"rank {rank}: resident memory {rss}")
            u.check(instant(prometheus_port, "moe_train_up", at).get(labels) == 1,
                    f"rank {rank}: moe_train_up is not 1")
        u.check(not instant(prometheus_port, f'moe_train_loss{{instance="127.0.0.1:'
                                             f'{metrics_port + 1}"}}', at),
                "rank 1 serves job series; only rank 0 should")
        # The shipped dashboard asks only for series that exist (or that appear at
        # their first observation), and the shipped scrape config is valid.
        names = set(api(prometheus_port, "label/__name__/values"))
        lazy = {"moe_train_validation_loss", "moe_train_checkpoint_save_seconds",
                "moe_train_expert_tokens_total", "moe_train_expert_dropped_tokens_total",
                "moe_train_communication_exposed_seconds_total",
                "moe_train_communication_hidden_seconds_total"}
        monitoring = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                  "examples", "monitoring")
        dashboard = open(os.path.join(monitoring, "grafana-dashboard.json")).read()
        for name in set(re.findall(r"moe_train_[a-z_]+", dashboard)):
            u.check(name in names or name in lazy, f"the dashboard uses {name}, which no rank "
                                                   "serves")
    promtool = shutil.which("promtool")
    if promtool:
        subprocess.run([promtool, "check", "config", os.path.join(monitoring, "prometheus.yml")],
                       check=True, stdout=subprocess.DEVNULL)
    u.cleanup(work)
    print("PASSED")


if __name__ == "__main__":
    main()
