"""The embedded default: its evidence, and the wall time of its `all_tables`.

Evidence (docs/embedded_default.md): its tiny pretrained MDLM and DUO sampled at NFE
4, 8, 16 and 64 and sampling temperatures 0.6-1.0; oracle Gen.-PPL, evaluator Gen.-PPL, sample
entropy and held-out NELBO against the entropy-rate floor. Uses the DAG's pretrained models
(results/<name>/start, evaluator), training them first if absent (each resumes after a kill).
Prints a Markdown table and writes results/<name>/evidence.json.

    python bench/embedded_default.py [--config workflow/config/default.yaml]

Wall time (`--time`, BENCHMARKS.md section 5): `snakemake --profile profiles/local all_tables`
from an empty results folder (a fresh working directory each run), for each variant in turn,
`--runs` rounds interleaved so that load on the machine hits every variant alike. Variants:
`cold` (this checkout, TOKENDRIFT_WARM=0: every job imports torch itself), `warm` (this
checkout as the local profile runs it: jobs fork from the warm-start server, tokendrift.warm)
and, with `--baseline REPO`, `baseline` (another checkout, e.g. the commit before a change, its
own Snakefile, profile, config and package). Per run: wall time, job count and job-seconds
(start to end of each job, from Snakemake's records in .snakemake/metadata) by stage
(pretraining, training, sampling, scoring, aggregation), the start-up share (each command's
start-up, timed apart, times its job count, over the job-seconds), and whether every table,
figure and score file is byte-identical to the first variant's. Writes
bench/results/embedded_default_time.json (or --out).

    python bench/embedded_default.py --time [--runs 1] [--baseline /path/to/old/checkout] [--concurrent] [--config CI_CONFIG]

Before and after in one run (`--before REF`): REF (a commit, branch or tag) is checked out into a
temporary git worktree and timed as the variant `before`, this working tree as `after`, both as
the local profile runs them (warm start) and each with its own embedded default
(workflow/config/default.yaml of its checkout, unless --config), interleaved over `--runs`
rounds. Writes bench/results/embedded_default_before_after.json and .md (or --out and its .md);
the byte comparison is then informative only where the two defaults are the same config.

    python bench/embedded_default.py --time --before 1223b81 [--runs 1]
    python bench/embedded_default.py --analyze before=/old/checkout after=/some/workdir   # runs finished elsewhere
"""

from __future__ import annotations

import argparse
import base64
import filecmp
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

from tokendrift.core.data import make_source
from tokendrift.core.utils import atomic_write_json
from tokendrift.grid.layout import Layout
from tokendrift.jobs.pretrain import pretrain_backbone, pretrain_evaluator
from tokendrift.jobs.sample import sample_checkpoint
from tokendrift.jobs.score import checkpoint_nelbo, load_evaluator, sample_entropy, score_samples

REPO = Path(__file__).resolve().parents[1]
# stage of each rule (the tables' and figures' rules are named after them: "aggregation")
STAGES = {
    "pretrain_start": "pretraining",
    "pretrain_evaluator": "pretraining",
    "entropy_rate": "pretraining",
    "train": "training",
    "sample_run": "sampling",
    "sample_start": "sampling",
    "score_run": "scoring",
    "score_start": "scoring",
}
# the command each rule runs (its start-up is timed apart); the rest run `tokendrift aggregate`/`track`
COMMANDS = {
    "pretrain_start": "pretrain",
    "pretrain_evaluator": "pretrain",
    "entropy_rate": "entropy-rate",
    "train": "train",
    "sample_run": "sample",
    "sample_start": "sample",
    "score_run": "score",
    "score_start": "score",
    "probe": "probe",
    "track": "track",
}
# what a cold job of each command imports before its work (scoring, probing and the evaluator's
# pretraining also import transformers' GPT-2 module)
GPT2 = "import transformers.models.gpt2.modeling_gpt2"
STARTUP_EXTRA = {"score": GPT2, "probe": GPT2, "pretrain": GPT2}


def job_records(wd: Path) -> list[dict]:
    """One record per job (rule, start, end) from Snakemake's metadata of its outputs."""
    jobs = {}
    for f in (wd / ".snakemake" / "metadata").iterdir():
        m = json.loads(f.read_text())
        if m.get("starttime") is None or m.get("endtime") is None:
            continue
        key = (m["rule"], json.dumps(m.get("log")) if m.get("log") else f.name)  # every job has its own log
        if key in jobs:  # the job's outputs: its start is the earliest record, its end the latest
            jobs[key]["start"] = min(jobs[key]["start"], m["starttime"])
            jobs[key]["end"] = max(jobs[key]["end"], m["endtime"])
            continue
        jobs[key] = {
            "rule": m["rule"],
            "start": m["starttime"],
            "end": m["endtime"],
            "output": base64.b64decode(f.name.replace("@", "/")).decode(errors="replace"),
        }
    return list(jobs.values())


def startup_seconds(variant: dict, command: str, reps: int = 3) -> float:
    """Median wall time of a job's start-up: a cold process importing what the command imports,
    or for a warm variant, `tokendrift COMMAND --help` through the warm-start server (a checkout
    from before warm start, without tokendrift/warm.py, starts every job cold)."""
    warm = variant["warm"] and (Path(variant["repo"]) / "tokendrift" / "warm.py").exists()
    if warm:
        cmd = [sys.executable, "-m", "tokendrift.cli", command, "--help"]
    else:
        code = f"import tokendrift.cli as c; c.tune_allocator(); c.command_module({command!r}); {STARTUP_EXTRA.get(command, '')}"
        cmd = [sys.executable, "-c", code]
    if warm:  # start the server for this environment and wait for it
        where = [sys.executable, "-c", "from tokendrift.warm import socket_path; print(socket_path())"]
        sock = Path(
            subprocess.run(
                where, env=variant["env"], cwd=variant["repo"], capture_output=True, text=True, check=True
            ).stdout.strip()
        )
        subprocess.run(cmd, env=variant["env"], cwd=variant["repo"], capture_output=True, check=True)
        deadline = time.monotonic() + 120
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=variant["env"], cwd=variant["repo"], capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[-reps:])


def result_files(wd: Path) -> list[Path]:
    """The files that must not change: every table, figure and score file."""
    root = wd / "results"
    return sorted(
        p.relative_to(wd) for sub in ("tables", "figures", "scores") for p in root.glob(f"*/{sub}/**/*") if p.is_file()
    )


def launch(variant: dict, config: Path | None, keep: Path | None) -> dict:
    """Start `all_tables` for one variant in a fresh working directory."""
    wd = Path(tempfile.mkdtemp(prefix=f"td-bench-{variant['name']}-", dir=keep))
    repo = variant["repo"]
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(repo / "Snakefile"),
        "all_tables",
        "--profile",
        str(repo / "profiles" / "local"),
        "--configfile",
        str(config or repo / "workflow" / "config" / "default.yaml"),
        "--directory",
        str(wd),
    ]
    log = open(wd / "snakemake.log", "w")  # noqa: SIM115 (closed by finish)
    # run in the working directory: `python -m` puts its folder first on sys.path, before PYTHONPATH,
    # so a run started from another checkout would import that checkout's package
    proc = subprocess.Popen(cmd, env=variant["env"], cwd=wd, stdout=log, stderr=subprocess.STDOUT)
    return {"variant": variant, "wd": wd, "proc": proc, "log": log, "t0": time.perf_counter()}


def finish(run: dict) -> dict:
    """Wait for a launched run; its figures (wall time, jobs and job-seconds by stage, start-up share)."""
    run["proc"].wait()
    wall = time.perf_counter() - run["t0"]
    run["log"].close()
    variant, wd = run["variant"], run["wd"]
    if run["proc"].returncode != 0:
        raise SystemExit(f"{variant['name']}: snakemake failed, see {wd / 'snakemake.log'}")
    return {"variant": variant["name"], "wall_s": wall, **breakdown(wd, variant)}


def breakdown(wd: Path, variant: dict | None) -> dict:
    """Jobs and job-seconds by stage of a finished run in ``wd``; with ``variant``, the start-up share."""
    jobs = job_records(wd)
    by_stage: dict[str, dict] = {}
    commands = sorted({COMMANDS[j["rule"]] for j in jobs if j["rule"] in COMMANDS})
    startups = {c: startup_seconds(variant, c) for c in commands} if variant else {}
    startup_total = 0.0
    for j in jobs:
        stage = STAGES.get(j["rule"], "aggregation")
        d = by_stage.setdefault(stage, {"jobs": 0, "job_s": 0.0})
        d["jobs"] += 1
        d["job_s"] += j["end"] - j["start"]
        startup_total += startups.get(COMMANDS.get(j["rule"], ""), 0.0)
    job_s = sum(d["job_s"] for d in by_stage.values())
    return {
        "workdir": str(wd),
        "jobs": len(jobs),
        "job_s": job_s,
        "stages": by_stage,
        "startup_s_per_command": startups,
        "startup_job_s": startup_total,
        "startup_share": startup_total / job_s if variant else None,
        "loadavg_at_end": os.getloadavg()[0],
        "span_s": max(j["end"] for j in jobs) - min(j["start"] for j in jobs),
    }


def analyze_main(args) -> None:
    """--analyze LABEL=DIR ...: the breakdown of runs finished elsewhere (wall time: Snakemake's
    "Elapsed time" in its last log there, else the span from the first job's start to the last's end)."""
    runs = []
    for item in args.analyze:
        label, wd = item.split("=", 1)
        res = {"variant": label, "round": 0, **breakdown(Path(wd), None)}
        logs = sorted((Path(wd) / ".snakemake" / "log").glob("*.snakemake.log"))
        elapsed = (
            [line for line in logs[-1].read_text().splitlines() if line.startswith("Elapsed time:")] if logs else []
        )
        if elapsed:
            h, m, sec = elapsed[-1].split(": ", 1)[1].split(":")
            res["wall_s"] = int(h) * 3600 + int(m) * 60 + float(sec)
        else:
            res["wall_s"] = res["span_s"]
        runs.append(res)
    compare_and_write(args, runs, rounds=1)


def before_worktree(ref: str) -> Path:
    """A detached git worktree of ``ref`` in a temporary folder (removed by ``drop_worktree``)."""
    where = Path(tempfile.mkdtemp(prefix="td-bench-before-")) / "checkout"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), ref],
        check=True,
        capture_output=True,
        text=True,
    )
    return where


def drop_worktree(where: Path) -> None:
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(where)], capture_output=True)
    shutil.rmtree(where.parent, ignore_errors=True)


def time_main(args) -> None:
    base_env = {k: v for k, v in os.environ.items() if k not in ("TOKENDRIFT_WARM", "PYTHONPATH")}
    if args.before:  # before (REF) and after (this working tree), both as the local profile runs them
        where = before_worktree(args.before)
        try:
            commit = subprocess.run(
                ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
            ).stdout.strip()
            variants = [
                {
                    "name": "before",
                    "ref": args.before,
                    "commit": commit,
                    "repo": where,
                    "warm": True,
                    "env": {**base_env, "PYTHONPATH": str(where), "TOKENDRIFT_WARM": "1"},
                },
                {
                    "name": "after",
                    "repo": REPO,
                    "warm": True,
                    "ref": "working tree",
                    "commit": subprocess.run(
                        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
                    ).stdout.strip(),
                    "env": {**base_env, "PYTHONPATH": str(REPO), "TOKENDRIFT_WARM": "1"},
                },
            ]
            run_rounds(args, variants)
        finally:
            drop_worktree(where)
        return
    variants = []
    if args.baseline:
        repo = Path(args.baseline).resolve()
        variants.append({"name": "baseline", "repo": repo, "warm": False, "env": {**base_env, "PYTHONPATH": str(repo)}})
    here = {**base_env, "PYTHONPATH": str(REPO)}
    variants.append({"name": "cold", "repo": REPO, "warm": False, "env": {**here, "TOKENDRIFT_WARM": "0"}})
    variants.append({"name": "warm", "repo": REPO, "warm": True, "env": {**here, "TOKENDRIFT_WARM": "1"}})
    variants = [v for v in variants if v["name"] in args.variants or (v["name"] == "baseline" and args.baseline)]
    run_rounds(args, variants)


def run_rounds(args, variants: list[dict]) -> None:
    """``args.runs`` rounds of every variant (in turn, or at once with --concurrent), then the comparison."""
    keep = Path(args.keep) if args.keep else None
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    runs = []
    config = Path(args.config).resolve() if args.config else None
    for i in range(args.runs):
        order = variants if i % 2 == 0 else variants[::-1]  # alternate which variant goes first
        if args.concurrent:  # every variant at once: the same load on all of them
            launched = [launch(v, config, keep) for v in order]
            results = [finish(r) for r in launched]
        else:
            results = (finish(launch(v, config, keep)) for v in order)
        for v, res in sorted(zip(order, results), key=lambda vr: variants.index(vr[0])):
            res["round"] = i
            res["concurrent"] = args.concurrent
            res.update({k: v[k] for k in ("ref", "commit") if k in v})
            res["config"] = str(config or "workflow/config/default.yaml")
            print(
                f"round {i} {v['name']}: {res['wall_s']:.0f} s wall, {res['jobs']} jobs, {res['job_s']:.0f} job-s, "
                f"start-up {100 * res['startup_share']:.0f}%",
                flush=True,
            )
            runs.append(res)
    compare_and_write(args, runs, rounds=args.runs, remove=not keep)


def compare_and_write(args, runs: list[dict], rounds: int, remove: bool = False) -> None:
    """Byte identity of every table, figure and score file against each round's first run; the
    JSON and the Markdown table."""
    for i in range(rounds):
        first, *others = [r for r in runs if r["round"] == i]
        ref = Path(first["workdir"])
        files = result_files(ref)
        for r in others:
            wd = Path(r["workdir"])
            same = [f for f in files if (wd / f).exists() and filecmp.cmp(ref / f, wd / f, shallow=False)]
            r["identical_to"] = first["variant"]
            r["files_compared"] = len(files)
            r["files_identical"] = len(same)
            r["files_differing"] = [str(f) for f in files if f not in same]
            r["files_extra"] = [str(f) for f in result_files(wd) if f not in files]
    if remove:
        for r in runs:
            shutil.rmtree(r["workdir"], ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "config": args.config or "workflow/config/default.yaml",
        "cpus": os.cpu_count(),
        "loadavg_after": os.getloadavg(),
        "runs": runs,
    }
    out.write_text(json.dumps(meta, indent=2) + "\n")
    stages = ["pretraining", "training", "sampling", "scoring", "aggregation"]
    lines = [
        "| run | wall | jobs | job-s | " + " | ".join(stages) + " | start-up share | identical files |",
        "|---|---|---|---|" + "---|" * len(stages) + "---|---|",
    ]
    for r in runs:
        cells = [
            f"{r['stages'].get(s, {}).get('job_s', 0):.0f} s ({r['stages'].get(s, {}).get('jobs', 0)})" for s in stages
        ]
        ident = f"{r['files_identical']}/{r['files_compared']}" if "files_compared" in r else "reference"
        share = f"{100 * r['startup_share']:.1f}%" if r.get("startup_share") is not None else "n/a"
        name = (
            f"{r['variant']} ({r['commit'][:7]}{'+' if r.get('ref') == 'working tree' else ''})"
            if r.get("commit")
            else r["variant"]
        )
        lines.append(
            f"| {r['round']} {name} | {r['wall_s']:.0f} s | {r['jobs']} | {r['job_s']:.0f} | "
            + " | ".join(cells)
            + f" | {share} | {ident} |"
        )
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    out.with_suffix(".md").write_text(
        f"{meta['date']}, {meta['cpus']} CPUs, load average after {meta['loadavg_after'][0]:.1f}; "
        "job-seconds by stage (jobs)\n\n" + table
    )
    print(f"wrote {out} and {out.with_suffix('.md')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time", action="store_true", help="time all_tables instead (module docstring)")
    ap.add_argument("--runs", type=int, default=1, help="--time: rounds of every variant")
    ap.add_argument(
        "--variants",
        nargs="+",
        default=["cold", "warm"],
        choices=["cold", "warm"],
        help="--time: variants of this checkout (baseline comes with --baseline)",
    )
    ap.add_argument("--baseline", help="--time: another checkout to time as the variant 'baseline'")
    ap.add_argument(
        "--before",
        metavar="REF",
        help="--time: time git REF (checked out to a temporary worktree) as 'before' and this working "
        "tree as 'after', side by side (module docstring)",
    )
    ap.add_argument(
        "--concurrent",
        action="store_true",
        help="--time: run a round's variants at the same time (each with its 2 job slots) instead of in turn",
    )
    ap.add_argument(
        "--analyze",
        nargs="+",
        metavar="LABEL=DIR",
        help="the breakdown of runs finished in these working directories (no timing run)",
    )
    ap.add_argument("--keep", help="--time: keep each run's working directory under this folder")
    ap.add_argument(
        "--out",
        default=None,
        help="the JSON to write (default: bench/results/embedded_default_time.json, "
        "with --before embedded_default_before_after.json)",
    )
    ap.add_argument("--config", default=None, help="the config (default: workflow/config/default.yaml)")
    ap.add_argument("--nfe", type=int, nargs="+", default=[4, 8, 16, 64])
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.6, 0.7, 0.8, 0.9, 1.0])
    ap.add_argument("--n-samples", type=int, default=256, help="samples per (NFE, temperature) cell")
    args = ap.parse_args()
    name = "embedded_default_before_after.json" if args.before else "embedded_default_time.json"
    args.out = args.out or str(REPO / "bench" / "results" / name)
    if args.analyze:
        return analyze_main(args)
    if args.time:
        return time_main(args)
    args.config = args.config or "workflow/config/default.yaml"
    g = Layout(yaml.safe_load(Path(args.config).read_text()), "workflow/schemas/config.schema.yaml")
    out, smp = g.root, g.config["sample"]
    source = make_source(g.config["source"])
    timings = {}  # wall seconds of pretraining done here (0 when the DAG already did it)

    t0 = time.time()
    pretrain_evaluator(g.evaluator_config(), str(Path(g.evaluator()).parent))
    timings["pretrain_evaluator_s"] = time.time() - t0
    for backbone in ("mdlm", "duo"):
        t0 = time.time()
        pretrain_backbone(backbone, g.pretrain_config(backbone), str(g.start_model(backbone).parents[1]))
        timings[f"pretrain_{backbone}_s"] = time.time() - t0

    evaluator = load_evaluator(g.evaluator())
    rows = []
    for backbone in ("mdlm", "duo"):
        ckpt = g.start_model(backbone)
        nelbo = checkpoint_nelbo(str(ckpt), str(out / f"evidence/{backbone}_nelbo.json"))["nelbo"]
        for nfe in args.nfe:
            for temp in args.temperatures:
                sdir = out / f"evidence/{backbone}/nfe{nfe}_T{temp}"
                score_file = sdir.parent / f"{sdir.name}.json"
                if not score_file.exists():
                    sample_checkpoint(
                        str(ckpt),
                        str(sdir),
                        nfe=nfe,
                        n_samples=args.n_samples,
                        seed=0,
                        temperature=temp,
                        batch_size=smp["batch_size"],
                    )
                    score_samples(str(sdir), evaluator, str(score_file), evaluator_name=g.evaluator())
                r = json.loads(score_file.read_text())
                rows.append(
                    {
                        "backbone": backbone,
                        "nfe": nfe,
                        "temperature": temp,
                        "oracle_gen_ppl": r["oracle_gen_ppl"],
                        "gen_ppl": r["gen_ppl"],
                        "entropy": r["entropy"],
                        "nelbo": nelbo,
                    }
                )

    floor = math.exp(source.entropy_rate)
    data_entropy = sample_entropy(source.batch("valid", 0, 256))
    result = {
        "entropy_rate": source.entropy_rate,
        "entropy_rate_se": source.entropy_rate_se,
        "oracle_floor": floor,
        "data_sample_entropy": data_entropy,
        "timings": timings,
        "rows": rows,
    }
    atomic_write_json(out / "evidence.json", result)
    print(
        f"entropy rate {source.entropy_rate:.3f} ± {source.entropy_rate_se:.3f} nats/token -> oracle Gen.-PPL floor "
        f"{floor:.1f}; data sample entropy {data_entropy:.2f}"
    )
    print("pretraining wall time: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    print("\n| backbone | T | " + " | ".join(f"NFE {n} oracle / AR / entropy" for n in args.nfe) + " | NELBO |")
    print("|---|---|" + "---|" * len(args.nfe) + "---|")
    for backbone in ("mdlm", "duo"):
        for temp in args.temperatures:
            cells = [
                next(r for r in rows if r["backbone"] == backbone and r["nfe"] == n and r["temperature"] == temp)
                for n in args.nfe
            ]
            print(
                f"| {backbone} | {temp} | "
                + " | ".join(f"{c['oracle_gen_ppl']:.1f} / {c['gen_ppl']:.1f} / {c['entropy']:.2f}" for c in cells)
                + f" | {cells[0]['nelbo']:.3f} |"
            )


if __name__ == "__main__":
    main()
