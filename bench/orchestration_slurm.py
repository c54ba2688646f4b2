"""Orchestration overhead on the real single-node Slurm (the Slurm half of BENCHMARKS.md section 4).

1. Latency of a workflow of 8 trivial one-CPU jobs, side by side in one run (the variants take
   turns, `--runs` rounds): our submitit executor (default, and --submitit-direct-shell),
   snakemake-executor-plugin-slurm with its default settings, and a bare submitit array of the
   same 8 commands (a Python process, like Snakemake's). Target for ours: <= 15 s. For our runs
   the Slurm timeline (sacct) splits the time into start-up, queue, jobs and tail.
2. Scheduler queries per minute with 100 active jobs through our executor: sacct and squeue are
   wrapped by counting shims on Snakemake's PATH. Target: one batched query per interval.

    bash tests/slurm/slurm_up.sh && python bench/orchestration_slurm.py [--runs 3] [--seconds 60]
Writes bench/results/orchestration_slurm.json. The cluster may be shared: foreign jobs in the
queue and the load average are recorded with every run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMK = [sys.executable, "-m", "snakemake", "--nocolor"]
# The reference plugin and what it needs beyond Snakemake's own dependencies (pandas, numpy, pyyaml).
SLURM_PLUGIN = ["snakemake-executor-plugin-slurm==2.8.0", "snakemake-executor-plugin-slurm-jobstep==0.6.1", "throttler"]
OURS = ["--executor", "submitit", "--submitit-cluster", "slurm"]
SQUEUE = shutil.which("squeue") or "squeue"

SNAKEFILE = """
rule all:
    input: expand("out/{i}.txt", i=range(N))
rule RULE:
    output: "out/{i}.txt"
    threads: 1
    resources: mem_mb=100, runtime=20
    shell: "SLEEPecho {wildcards.i} > {output}"
"""

BARE = """
import sys
import submitit
from submitit.helpers import CommandFunction
wd = sys.argv[1]
ex = submitit.AutoExecutor(folder=f"{wd}/log", cluster="slurm")
ex.update_parameters(name="bare-array", timeout_min=20, cpus_per_task=1, mem_gb=100 / 1024,
                     slurm_array_parallelism=8)
with ex.batch():
    jobs = [ex.submit(CommandFunction(["/bin/sh", "-c", f"echo {i} > {wd}/out/{i}.txt"])) for i in range(8)]
for j in jobs:
    j.result()
"""


def env(path_prefix: str | None = None, extra_path: Path | None = None) -> dict:
    paths = [str(extra_path) if extra_path else None, str(REPO), os.environ.get("PYTHONPATH")]
    e = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    if path_prefix:
        e["PATH"] = f"{path_prefix}:{e['PATH']}"
    return e


def workdir(tag: str, n: int = 8, rule: str = "job", sleep: int = 0) -> Path:
    wd = Path(tempfile.mkdtemp(prefix=f"orch-{tag}-"))
    text = SNAKEFILE.replace("N", str(n)).replace("RULE", rule).replace("SLEEP", f"sleep {sleep}; " if sleep else "")
    (wd / "Snakefile").write_text(text)
    (wd / "out").mkdir()
    return wd


def foreign_jobs() -> int:
    out = subprocess.run([SQUEUE, "-h", "-r", "-o", "%i"], capture_output=True, text=True).stdout
    return len(out.split())


def timeline(array_id: str) -> dict:
    """Seconds from the array's submission to its first start, first start to last end, and
    the jobs' summed run time (sacct, 1 s resolution)."""
    text = ""
    for _ in range(20):  # accounting lags the job's end by a moment
        text = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "Submit,Start,End,State", "-j", array_id], capture_output=True, text=True
        ).stdout
        rows = [line.split("|") for line in text.splitlines() if line.strip()]
        if rows and all(r[3] == "COMPLETED" for r in rows):
            break
        time.sleep(0.5)

    def ts(s):
        return datetime.fromisoformat(s).timestamp()

    sub, start, end = min(ts(r[0]) for r in rows), min(ts(r[1]) for r in rows), max(ts(r[2]) for r in rows)
    return {
        "queue_s": start - sub,
        "jobs_span_s": end - start,
        "job_seconds_sum": sum(ts(r[2]) - ts(r[1]) for r in rows),
        "jobs": len(rows),
    }


def run_snakemake(tag: str, args: list[str], extra_path: Path | None = None) -> dict:
    wd = workdir(tag)
    t0 = time.perf_counter()
    r = subprocess.run(
        [*SMK, "--jobs", "8", *args],
        cwd=wd,
        env=env(extra_path=extra_path),
        capture_output=True,
        text=True,
        timeout=900,
    )
    dt = time.perf_counter() - t0
    out = r.stdout + r.stderr
    if r.returncode != 0 or len(list((wd / "out").iterdir())) != 8:
        raise RuntimeError(f"{tag} failed in {wd}:\n{out[-3000:]}")
    res = {"seconds": dt}
    m = re.search(r"submitted as submitit slurm job (\d+)_", out)
    if m:  # ours: where the time went
        res.update(timeline(m.group(1)))
        res["outside_slurm_s"] = dt - res["queue_s"] - res["jobs_span_s"]
    shutil.rmtree(wd, ignore_errors=True)
    return res


def run_bare() -> dict:
    wd = workdir("bare")
    (wd / "bare.py").write_text(BARE)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, wd / "bare.py", wd], capture_output=True, text=True, timeout=900)
    dt = time.perf_counter() - t0
    if r.returncode != 0 or len(list((wd / "out").iterdir())) != 8:
        raise RuntimeError(f"bare submitit failed in {wd}:\n{r.stderr[-3000:]}")
    shutil.rmtree(wd, ignore_errors=True)
    return {"seconds": dt}


def slurm_plugin(folder: Path) -> Path | None:
    """snakemake-executor-plugin-slurm installed into its own folder, put on PYTHONPATH only for
    its runs: Snakemake imports every executor plugin it finds at start-up, and this one asks
    sacct for the job age limit while being imported, which would slow every other run."""
    marker = folder / "snakemake_executor_plugin_slurm" / "__init__.py"
    if not marker.exists():
        r = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(folder), *SLURM_PLUGIN],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            print(f"snakemake-executor-plugin-slurm could not be installed: {r.stderr.strip()[-500:]}")
            return None
    return folder


def queries_per_minute(seconds: float) -> dict:
    """100 sleeping one-CPU jobs through our executor (2 run, 98 wait): count sacct/squeue calls."""
    wd = workdir("q100", n=100, rule="sleeper", sleep=900)
    shims, calls = wd / "shims", wd / "calls.log"
    shims.mkdir()
    for name in ("sacct", "squeue"):
        (shims / name).write_text(f'#!/bin/sh\necho {name} >> {calls}\nexec {shutil.which(name)} "$@"\n')
        (shims / name).chmod(0o755)
    log = open(wd / "snakemake.log", "w")
    p = subprocess.Popen(
        [*SMK, "--jobs", "100", *OURS],
        cwd=wd,
        env=env(str(shims)),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def count():
        return calls.read_text().count("\n") if calls.exists() else 0

    try:
        t0 = time.time()
        while time.time() - t0 < 300 and (wd / "snakemake.log").read_text().count("submitted as submitit") < 100:
            time.sleep(0.5)
        submitted = (wd / "snakemake.log").read_text().count("submitted as submitit")
        time.sleep(2)  # let the first status cycle after the submission pass
        before, t1 = count(), time.time()
        time.sleep(seconds)
        n, span = count() - before, time.time() - t1
    finally:
        os.killpg(p.pid, signal.SIGINT)  # Ctrl-C: our executor cancels its 100 jobs
        p.wait(timeout=300)
        log.close()
    text = (wd / "snakemake.log").read_text()
    ids = sorted(set(re.findall(r"submitted as submitit slurm job (\d+)_", text)))
    t0 = time.time()
    while True:  # cancelled jobs pass through COMPLETING (KillWait) before they leave the queue
        queue = subprocess.run([SQUEUE, "-h", "-r", "-o", "%i %t"], capture_output=True, text=True).stdout
        left = [line for line in queue.splitlines() if line.split("_")[0] in ids]
        if not left or time.time() - t0 > 30:
            break
        time.sleep(0.5)
    gone_after = time.time() - t0
    if left:
        subprocess.run(["scancel", *ids])
    own = re.search(r"submitit executor: (\d+) scheduler status queries in (\d+) s", text)
    shutil.rmtree(wd, ignore_errors=True)
    return {
        "active_jobs": submitted,
        "seconds": round(span, 1),
        "queries": n,
        "queries_per_minute": n * 60 / span,
        "left_in_queue_after_ctrl_c": left,
        "queue_empty_after_s": round(gone_after, 1),
        "plugin_reported": own.group(0) if own else None,
    }


def machine() -> dict:
    cpuinfo, meminfo = Path("/proc/cpuinfo").read_text(), Path("/proc/meminfo").read_text()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?")
    mem = int(next(line.split()[1] for line in meminfo.splitlines() if line.startswith("MemTotal"))) // 1024
    slurm = subprocess.run(["sinfo", "-V"], capture_output=True, text=True).stdout.strip()
    node = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%N cpus=%c mem=%m partition=%P"], capture_output=True, text=True
    ).stdout.strip()
    versions = {}
    for pkg in ("snakemake", "submitit"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "mem_mb": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
        "slurm": slurm,
        "node": node,
        "versions": {**versions, "snakemake-executor-plugin-slurm": SLURM_PLUGIN[0].split("==")[1]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=60.0, help="counting window for the 100-job query rate")
    ap.add_argument(
        "--plugin-dir",
        default=str(REPO / "bench" / ".slurm-plugin"),
        help="where snakemake-executor-plugin-slurm is installed for its runs (pip --target)",
    )
    args = ap.parse_args()
    if not shutil.which("sbatch"):
        sys.exit("no Slurm here: run `bash tests/slurm/slurm_up.sh` first")
    variants = {
        "ours": lambda: run_snakemake("ours", OURS),
        "ours_direct_shell": lambda: run_snakemake("direct", [*OURS, "--submitit-direct-shell"]),
        "bare_submitit_array": run_bare,
    }
    plugin = slurm_plugin(Path(args.plugin_dir))
    if plugin:
        variants["snakemake_executor_plugin_slurm"] = lambda: run_snakemake(
            "slurmplugin", ["--executor", "slurm"], plugin
        )
    runs: dict[str, list] = {k: [] for k in variants}
    for k in range(args.runs):
        for name, fn in variants.items():  # side by side: the variants take turns
            context = {"round": k, "load_1m": os.getloadavg()[0], "other_jobs_in_queue": foreign_jobs()}
            res = fn()
            runs[name].append({**res, **context})
            print(
                f"round {k + 1}/{args.runs} {name}: {res['seconds']:.1f} s  (load {context['load_1m']:.1f}, "
                f"{context['other_jobs_in_queue']} other jobs queued)",
                flush=True,
            )
    latency = {}
    for name, rs in runs.items():
        secs = [r["seconds"] for r in rs]
        latency[name] = {"median_s": statistics.median(secs), "runs_s": secs, "runs": rs}
    if not plugin:
        latency["snakemake_executor_plugin_slurm"] = "could not be installed"
    q = queries_per_minute(args.seconds)
    res = {
        "machine": machine(),
        "when": datetime.now().isoformat(timespec="seconds"),
        "latency_8_jobs": latency,
        "target_ours_s": 15.0,
        "queries_100_jobs": q,
    }

    print(f"\n8 trivial one-CPU jobs on {res['machine']['node']} ({args.runs} runs each, taking turns)")
    print(f"{'variant':34s} {'median s':>9s}   runs s")
    for name, v in latency.items():
        if isinstance(v, dict):
            print(f"{name:34s} {v['median_s']:9.1f}   {', '.join(f'{s:.1f}' for s in v['runs_s'])}")
        else:
            print(f"{name:34s} {v}")
    for name in ("ours", "ours_direct_shell"):
        rs = [r for r in runs.get(name, []) if "queue_s" in r]
        if rs:
            med = {
                key: statistics.median(r[key] for r in rs)
                for key in ("outside_slurm_s", "queue_s", "jobs_span_s", "job_seconds_sum")
            }
            print(
                f"  {name}: outside Slurm {med['outside_slurm_s']:.1f} s, queue {med['queue_s']:.1f} s, "
                f"first start to last end {med['jobs_span_s']:.1f} s ({med['job_seconds_sum']:.0f} job-seconds "
                f"on {res['machine']['cpus']} CPUs)"
            )
    print(
        f"ours <= 15 s: {'yes' if latency['ours']['median_s'] <= 15 else 'no'}; "
        f"with --submitit-direct-shell: {'yes' if latency['ours_direct_shell']['median_s'] <= 15 else 'no'}"
    )
    print(
        f"\nscheduler queries with {q['active_jobs']} active jobs through ours: {q['queries']} in {q['seconds']} s "
        f"= {q['queries_per_minute']:.1f}/min (one per --submitit-query-interval, 10 s: 6/min); "
        f"in the queue 30 s after Ctrl-C: {q['left_in_queue_after_ctrl_c'] or 'none'}"
    )
    out = Path(__file__).parent / "results" / "orchestration_slurm.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
