"""Issue 6, figure 4: orchestration overhead, measured side by side in one run.

1. `snakemake -n all_tables` with the paper config (DAG of every table cell): target <= 3 s.
2. A no-op rerun of the embedded default once everything is done: target <= 5 s
   (needs a finished `snakemake --profile profiles/local all_tables`; skipped otherwise).
3. Scheduler queries per minute with 100 active jobs through the submitit executor on the real
   Slurm (sacct/squeue wrapped by counting shims on PATH): target one batched query per
   interval, not one per job.
4. Latency of a workflow of 8 trivial one-CPU jobs on the 2-CPU node: our executor (default
   and --submitit-direct-shell), snakemake-executor-plugin-slurm (`pip install
   snakemake-executor-plugin-slurm`), and a bare submitit array of the same 8 commands.
   Target for ours: <= 15 s.

    bash tests/slurm/slurm_up.sh && python bench/orchestration.py [--runs 3]
Writes bench/results/orchestration.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMK = [sys.executable, "-m", "snakemake"]


def timed(cmd, cwd=REPO, env=None, timeout=900) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return dt


def dry_run(runs: int) -> list[float]:
    with tempfile.TemporaryDirectory() as wd:
        return [timed([*SMK, "all_tables", "-n", "-q", "--snakefile", REPO / "Snakefile", "--profile",
                       REPO / "profiles/slurm", "--directory", wd]) for _ in range(runs)]


def noop(runs: int) -> list[float] | None:
    if not (REPO / "results/default/tracking/imported.json").exists():
        return None
    out = []
    for _ in range(runs):
        r = subprocess.run([*SMK, "all_tables", "--profile", "profiles/local"], cwd=REPO, capture_output=True, text=True)
        if "Nothing to be done" not in r.stdout + r.stderr:
            return None  # not finished (or stale): a no-op cannot be timed
        out.append(timed([*SMK, "all_tables", "--profile", "profiles/local"]))
    return out


TRIVIAL = """
rule all:
    input: expand("out/{i}.txt", i=range(N))
rule job:
    output: "out/{i}.txt"
    threads: 1
    resources: mem_mb=100, runtime=10
    shell: "SLEEP echo {wildcards.i} > {output}"
"""


def workflow(wd: Path, n: int, sleep: int = 0) -> None:
    wd.mkdir(parents=True, exist_ok=True)
    (wd / "Snakefile").write_text(TRIVIAL.replace("N", str(n)).replace("SLEEP", f"sleep {sleep};" if sleep else ""))


def latency(executor_args: list[str], runs: int, tag: str) -> list[float]:
    out = []
    for k in range(runs):
        wd = Path(tempfile.mkdtemp(prefix=f"orch-{tag}-"))
        workflow(wd, 8)
        env = {**os.environ, "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"}
        out.append(timed([*SMK, "--jobs", "8", *executor_args], cwd=wd, env=env))
        shutil.rmtree(wd, ignore_errors=True)
    return out


def bare_submitit(runs: int) -> list[float]:
    import submitit

    out = []
    for _ in range(runs):
        wd = Path(tempfile.mkdtemp(prefix="orch-bare-"))
        ex = submitit.AutoExecutor(folder=wd / "log", cluster="slurm")
        ex.update_parameters(timeout_min=10, cpus_per_task=1, mem_gb=0.1, slurm_array_parallelism=8)
        t0 = time.perf_counter()
        jobs = ex.map_array(lambda i: subprocess.run(f"echo {i} > {wd}/{i}.txt", shell=True, check=True).returncode,
                            list(range(8)))
        [j.result() for j in jobs]
        out.append(time.perf_counter() - t0)
        shutil.rmtree(wd, ignore_errors=True)
    return out


def queries_per_minute(seconds: float = 60.0) -> dict:
    """100 sleeping jobs through our executor; count sacct/squeue calls for ``seconds``."""
    wd = Path(tempfile.mkdtemp(prefix="orch-100-"))
    workflow(wd, 100, sleep=600)
    shims = wd / "shims"
    shims.mkdir()
    for name in ("sacct", "squeue"):
        real = shutil.which(name)
        (shims / name).write_text(f"#!/bin/sh\necho {name} >> {wd}/calls.log\nexec {real} \"$@\"\n")
        (shims / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"}
    p = subprocess.Popen([*SMK, "--jobs", "100", "--executor", "submitit", "--submitit-cluster", "slurm"], cwd=wd,
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.time()
    while time.time() - t0 < 120:  # until all 100 are submitted
        q = subprocess.run(["squeue", "-h", "-r", "-o", "%j"], capture_output=True, text=True).stdout
        if q.count("smk-job") >= 100:
            break
        time.sleep(1)
    log = wd / "calls.log"
    before = log.read_text().count("\n") if log.exists() else 0
    time.sleep(seconds)
    after = log.read_text().count("\n") if log.exists() else 0
    os.killpg(p.pid, signal.SIGINT)  # our executor cancels its jobs
    p.wait(timeout=120)
    shutil.rmtree(wd, ignore_errors=True)
    return {"active_jobs": 100, "seconds": seconds, "queries": after - before,
            "queries_per_minute": (after - before) * 60 / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip-slurm", action="store_true")
    args = ap.parse_args()
    res = {"load_avg_1m": os.getloadavg()[0], "cpus": os.cpu_count()}
    res["dry_run_paper_s"] = dry_run(args.runs)
    res["noop_rerun_default_s"] = noop(args.runs)
    if not args.skip_slurm and shutil.which("sbatch"):
        ours = ["--executor", "submitit", "--submitit-cluster", "slurm"]
        res["latency_8_jobs_s"] = {
            "ours": latency(ours, args.runs, "ours"),
            "ours_direct_shell": latency([*ours, "--submitit-direct-shell"], args.runs, "direct"),
            "bare_submitit_array": bare_submitit(args.runs),
        }
        try:
            import snakemake_executor_plugin_slurm  # noqa: F401

            res["latency_8_jobs_s"]["snakemake_executor_plugin_slurm"] = latency(
                ["--executor", "slurm", "--default-resources", "slurm_partition=debug"], args.runs, "slurmplugin")
        except ImportError:
            res["latency_8_jobs_s"]["snakemake_executor_plugin_slurm"] = "not installed"
        res["queries_100_jobs"] = queries_per_minute()
    med = lambda v: statistics.median(v) if isinstance(v, list) and v else v  # noqa: E731
    print(f"snakemake -n all_tables (paper config): {med(res['dry_run_paper_s']):.2f} s (target 3)")
    print(f"no-op rerun of the default: {med(res['noop_rerun_default_s']) if res['noop_rerun_default_s'] else 'n/a'}"
          " s (target 5)")
    for k, v in res.get("latency_8_jobs_s", {}).items():
        print(f"8 trivial jobs, {k}: {med(v) if isinstance(v, list) else v} s  (runs {v})")
    if "queries_100_jobs" in res:
        print(f"scheduler queries per minute with 100 active jobs: {res['queries_100_jobs']['queries_per_minute']:.1f}")
    out = Path(__file__).parent / "results" / "orchestration.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
