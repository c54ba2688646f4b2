"""Issue 6, figure 4 (the DAG half): Snakemake's own overhead on our workflow.

1. `snakemake -n all_tables` with the paper config (DAG of every table cell): target <= 3 s.
2. A no-op rerun of the embedded default once everything is done: target <= 5 s
   (needs a finished `snakemake --profile profiles/local all_tables`; reported n/a otherwise).
3. Per-job overhead of the local profile: N trivial jobs through `profiles/local` (submitit
   local processes, two at a time) with Snakemake's ILP scheduler (its default: a CBC solver
   subprocess at every selection while more jobs are ready than slots) and with the greedy
   scheduler the profiles set, beside Snakemake's built-in local executor; interleaved.

The Slurm half (8-job latency against snakemake-executor-plugin-slurm and a bare submitit
array; scheduler queries with 100 active jobs) is bench/orchestration_slurm.py.

    python bench/orchestration.py [--runs 3]
Writes bench/results/orchestration.json.
"""

from __future__ import annotations

import argparse
import json
import os
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
        return [
            timed(
                [
                    *SMK,
                    "all_tables",
                    "-n",
                    "-q",
                    "--snakefile",
                    REPO / "Snakefile",
                    "--profile",
                    REPO / "profiles/slurm",
                    "--directory",
                    wd,
                ]
            )
            for _ in range(runs)
        ]


def noop(runs: int) -> list[float] | None:
    if not (REPO / "results/default/tracking/imported.json").exists():
        return None
    out = []
    for _ in range(runs):
        r = subprocess.run(
            [*SMK, "all_tables", "--profile", "profiles/local"], cwd=REPO, capture_output=True, text=True
        )
        if "Nothing to be done" not in r.stdout + r.stderr:
            return None  # not finished (or stale): a no-op cannot be timed
        out.append(timed([*SMK, "all_tables", "--profile", "profiles/local"]))
    return out


TRIVIAL = """
rule all:
    input: expand("out/{i}.txt", i=range(%d))

rule one:
    output: "out/{i}.txt"
    shell: "echo {wildcards.i} > {output}"
"""


def local_overhead(n_jobs: int, runs: int) -> dict[str, list[float]]:
    """Wall time of n_jobs trivial jobs per way of running them (fresh folder each run)."""
    ways = {
        "local_profile_ilp": ["--profile", REPO / "profiles/local", "--scheduler", "ilp"],
        "local_profile_greedy": ["--profile", REPO / "profiles/local", "--scheduler", "greedy"],
        "builtin_local_greedy": ["--cores", "2", "--scheduler", "greedy"],
    }
    out: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(runs):
        for name, opts in ways.items():
            with tempfile.TemporaryDirectory() as wd:
                (Path(wd) / "Snakefile").write_text(TRIVIAL % n_jobs)
                out[name].append(timed([*SMK, "-q", "--snakefile", Path(wd) / "Snakefile", "--directory", wd, *opts]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--trivial-jobs", type=int, default=40)
    args = ap.parse_args()
    res = {"load_avg_1m": os.getloadavg()[0], "cpus": os.cpu_count()}
    res["dry_run_paper_s"] = dry_run(args.runs)
    res["noop_rerun_default_s"] = noop(args.runs)
    res["trivial_jobs"] = args.trivial_jobs
    res["local_overhead_s"] = local_overhead(args.trivial_jobs, args.runs)
    med = lambda v: statistics.median(v) if isinstance(v, list) and v else v  # noqa: E731
    print(f"snakemake -n all_tables (paper config): {med(res['dry_run_paper_s']):.2f} s (target 3)")
    print(
        f"no-op rerun of the default: {med(res['noop_rerun_default_s']) if res['noop_rerun_default_s'] else 'n/a'}"
        " s (target 5)"
    )
    for name, v in res["local_overhead_s"].items():
        print(f"{args.trivial_jobs} trivial jobs, {name}: {med(v):.2f} s ({med(v) / args.trivial_jobs:.3f} s per job)")
    out = Path(__file__).parent / "results" / "orchestration.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
