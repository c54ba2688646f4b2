"""`tokendrift status` on the paper's grid: how long the one-command status of a study takes.

Builds a synthetic results tree for workflow/config/paper.yaml's grid in a temporary folder
(an empty completion record at each path tokendrift.grid.layout.Layout names, as a job writes it, so
that status checks each record; Snakemake's incomplete markers and a lock
for the running jobs): every shared job done, and per checkpoint about 75% done, 10% failed at
scoring, 5% running (sampling), 10% missing, and every checkpoint of a tenth of the
training jobs failed at training. Then times the command as a user
types it (a fresh process: Python start-up, imports, config validation, the scan) and the scan
alone in this process, and checks the counts against the tree it built.

    python bench/status.py [--runs 5]
Writes bench/results/status.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tokendrift.core.config import load_file  # noqa: E402  # noqa: E402
from tokendrift.core.records import record_text  # noqa: E402  # noqa: E402
from tokendrift.grid.layout import Layout  # noqa: E402
from tokendrift.report.status import chain, study_status  # noqa: E402  # noqa: E402

EMPTY_RECORD = record_text({})

PAPER = REPO / "workflow" / "config" / "paper.yaml"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def touch(wd: Path, p) -> None:
    f = wd / p
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(EMPTY_RECORD)


def build(g: Layout, wd: Path) -> dict:
    """The tree; returns how many checkpoints it made done, failed, running and missing."""
    intended = {"done": 0, "failed": 0, "running": 0, "missing": 0}
    runs = sorted(g.runs)
    failed_runs = {(bb, rid, s) for i, (bb, rid) in enumerate(runs) for s in g.seeds if (i + s) % 10 == 3}
    for i, u in enumerate(g.units):
        jobs = chain(g, u)
        names = [j.name for j in jobs]
        if (u.backbone, u.model, u.seed) in failed_runs:  # a failed training job fails all its checkpoints
            state, at = "failed", names.index("train")
        else:
            k = i % 20
            state, at = (
                ("done", len(jobs))
                if k < 15
                else ("failed", names.index("score"))
                if k < 17
                else ("running", names.index("sample"))
                if k == 17
                else ("missing", names.index("sample"))
            )
        for j in jobs[:at]:
            for o in j.outputs:
                touch(wd, o)
            touch(wd, j.log)
        if state == "failed":
            touch(wd, jobs[at].log)
        if state == "running":
            d = wd / ".snakemake" / "incomplete"
            d.mkdir(parents=True, exist_ok=True)
            (d / base64.urlsafe_b64encode(str(jobs[at].outputs[0]).encode()).decode()).write_text("{}")
        intended[state] += 1
    (wd / ".snakemake" / "locks").mkdir(parents=True, exist_ok=True)
    (wd / ".snakemake" / "locks" / "0.output.lock").write_text("x\n")
    return intended


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    g = Layout(load_file(PAPER), SCHEMA)
    summary = g.summary()
    jobs = {j for u in g.units for j in chain(g, u)}
    with tempfile.TemporaryDirectory() as tmp:
        wd = Path(tmp)
        intended = build(g, wd)
        files = sum(1 for p in wd.rglob("*") if p.is_file())
        st = study_status(g, wd)
        counts = {s: st["counts"].get(s, 0) for s in ("done", "failed", "running", "missing")}
        assert counts == intended, (counts, intended)
        scan = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            study_status(g, wd)
            scan.append(time.perf_counter() - t0)
        cmd = [
            str(Path(sys.executable).parent / "tokendrift"),
            "status",
            str(PAPER),
            "--schema",
            str(SCHEMA),
            "--directory",
            str(wd),
        ]
        wall = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            wall.append(time.perf_counter() - t0)
            if r.returncode != 0:
                raise RuntimeError(r.stderr[-2000:])
        last = r.stdout.strip().splitlines()
    out = {
        "grid": "workflow/config/paper.yaml",
        "summary": summary,
        "compute_jobs": sum(summary[k] for k in ("start", "evaluator", "train", "sample", "score")),
        "jobs_examined": len(jobs),
        "checkpoints": len(g.units),
        "files_in_tree": files,
        "intended": intended,
        "classified": counts,
        "command": "tokendrift status workflow/config/paper.yaml --directory <tree>",
        "command_wall_s": {"median": statistics.median(wall), "runs": wall},
        "scan_s": {"median": statistics.median(scan), "runs": scan},
        "summary_line": last[-3:],
        "machine": f"{platform.node()} {platform.machine()}, {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(out, indent=2))
    res = REPO / "bench" / "results"
    res.mkdir(exist_ok=True)
    (res / "status.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
