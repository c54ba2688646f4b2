"""`tokendrift status` on a small synthetic results tree (the CI grid): which seeds of each row are
done, failed (with the log), running or missing, by the rules in tokendrift/report/status.py; and the
log paths it names are the ones the rules write (a dry run of the DAG lists them).
"""

import base64
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import CI, SCHEMA
from tokendrift import cli
from tokendrift.core.config import load_file
from tokendrift.core.records import record_text
from tokendrift.grid.layout import Layout
from tokendrift.grid.sheet import Unit
from tokendrift.report.figures import FIGURES
from tokendrift.report.status import chain, drivers_dir, study_status


@pytest.fixture
def grid():
    return Layout(load_file(CI), SCHEMA)  # results/ci/..., relative to the working directory


def touch(wd: Path, p, mtime=None):
    f = wd / p
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(record_text({}))  # an empty completion record (tokendrift.core.records)
    if mtime is not None:
        os.utime(f, (mtime, mtime))


def finish(g, wd, u, upto=None):
    """Write the outputs and logs of u's jobs, up to (not including) the job named `upto`."""
    for job in chain(g, u):
        if job.name == upto:
            return job
        for o in job.outputs:
            touch(wd, o)
        touch(wd, job.log)


def mark_incomplete(wd, path):
    """What Snakemake writes when it starts a job: .snakemake/incomplete/<urlsafe base64 of the output>."""
    d = wd / ".snakemake" / "incomplete"
    d.mkdir(parents=True, exist_ok=True)
    (d / base64.urlsafe_b64encode(str(path).encode()).decode()).write_text('{"external_jobid": null}')


def lock(wd):
    d = wd / ".snakemake" / "locks"
    d.mkdir(parents=True, exist_ok=True)
    (d / "0.output.lock").write_text("results/ci/x\n")


@pytest.fixture
def tree(grid, tmp_path):
    g, wd = grid, tmp_path
    now = time.time()
    for s in g.seeds:
        finish(g, wd, Unit("mdlm", "start", s, 0))
    finish(g, wd, Unit("mdlm", "tokendrift", 0, g.long))
    # seed 1's training job failed: its log exists, its done.json does not
    train = finish(g, wd, Unit("mdlm", "tokendrift", 1, g.long), upto="train")
    touch(wd, train.log)
    # continuation seed 0: sampling started (marked incomplete), its log written just now
    sample = finish(g, wd, Unit("mdlm", "continuation", 0, g.long), upto="sample")
    mark_incomplete(wd, sample.outputs[0])
    touch(wd, sample.log, now - 5)
    # continuation seed 1: scoring marked incomplete, its log an hour old (a Snakemake killed mid-job)
    score = finish(g, wd, Unit("mdlm", "continuation", 1, g.long), upto="score")
    mark_incomplete(wd, score.outputs[-1])
    touch(wd, score.log, now - 3600)
    return g, wd, now


def states(st, *units):
    return [st["units"][u]["state"] for u in units]


def test_classification_without_a_running_snakemake(tree):
    g, wd, now = tree
    st = study_status(g, wd, recent=600, now=now)
    L = g.long
    assert states(st, Unit("mdlm", "start", 0, 0), Unit("mdlm", "start", 1, 0)) == ["done", "done"]
    assert st["units"][Unit("mdlm", "tokendrift", 0, L)] == {"state": "done"}
    assert st["units"][Unit("mdlm", "tokendrift", 1, L)] == {
        "state": "failed",
        "job": "train",
        "log": "results/ci/logs/train/mdlm/tokendrift/seed1.log",
    }
    assert st["units"][Unit("mdlm", "continuation", 0, L)] == {"state": "running", "job": "sample"}  # fresh log
    # marked incomplete, no lock, stale log: interrupted, so failed, naming the scoring log
    assert st["units"][Unit("mdlm", "continuation", 1, L)] == {
        "state": "failed",
        "job": "score",
        "log": f"results/ci/logs/score/mdlm/continuation/seed1_step{L}.log",
    }
    # nothing of DUO started: missing, waiting for its starting checkpoint
    assert st["units"][Unit("duo", "tokendrift", 0, L)] == {"state": "missing", "job": "start duo"}
    # a row never trained whose start is done: missing at its training job
    assert st["units"][Unit("mdlm", "hard_lift", 0, L)] == {"state": "missing", "job": "train"}
    # the failed training fails every checkpoint of that run and seed (Figure 2's steps, Table 5's)
    steps = g.model_steps("mdlm", "tokendrift")
    assert len(steps) > 1 and all(st["units"][Unit("mdlm", "tokendrift", 1, k)]["state"] == "failed" for k in steps)
    c = st["counts"]
    assert c["done"] == 3 and c["failed"] == len(steps) + 1 and c["running"] == 1
    assert sum(c.values()) == len(g.units)


def test_a_lock_makes_every_marked_job_running(tree):
    g, wd, now = tree
    lock(wd)
    st = study_status(g, wd, recent=600, now=now)
    assert states(st, Unit("mdlm", "continuation", 0, g.long), Unit("mdlm", "continuation", 1, g.long)) == [
        "running",
        "running",
    ]
    assert st["units"][Unit("mdlm", "tokendrift", 1, g.long)]["state"] == "failed"  # not marked: still failed


def test_an_output_marked_incomplete_is_not_done(grid, tmp_path):
    g, wd = grid, tmp_path
    u = Unit("mdlm", "start", 0, 0)
    finish(g, wd, u)
    mark_incomplete(wd, g.nelbo_file(u))  # written, but by a job that never finished
    assert study_status(g, wd, now=time.time() + 3600)["units"][u] == {
        "state": "failed",
        "job": "score",
        "log": "results/ci/logs/score/mdlm/start/seed0.log",
    }


def test_the_command_prints_rows_and_the_rerun_command(tree, capsys):
    g, wd, _ = tree
    assert cli.main(["status", str(CI), "--schema", str(SCHEMA), "--directory", str(wd)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^table1 \(mdlm, step \d+\)$", out, re.M)
    assert re.search(r"^  start +seeds done 0 1$", out, re.M)
    assert "  tokendrift    seeds done 0; FAILED 1 (train: results/ci/logs/train/mdlm/tokendrift/seed1.log)" in out
    assert "running 0 (sample)" in out
    assert re.search(r"^  continuation +seeds missing 0 \(start duo\), 1 \(start duo\)$", out, re.M)
    last = out.strip().splitlines()[-1]
    assert last == f"  snakemake all_tables --configfile {CI} --rerun-triggers mtime --directory {wd}"


def test_a_finished_study_has_nothing_to_rerun(grid, tmp_path, capsys):
    g, wd = grid, tmp_path
    for u in g.units:
        finish(g, wd, u)
    for f in g.all_outputs() + [str(g.root / "tracking" / "imported.json")]:
        touch(wd, f)
    assert (
        cli.main(["status", str(CI), "--schema", str(SCHEMA), "--directory", str(wd), "--profile", "profiles/local"])
        == 0
    )
    out = capsys.readouterr().out
    assert f"{len(g.units)} checkpoints: {len(g.units)} done, 0 failed, 0 running, 0 missing" in out
    assert out.strip().endswith("nothing to rerun")


def test_the_logs_status_names_are_the_rules_logs(grid, ci_dry_run):
    """Every log of a dry run of the CI DAG is one that Layout.log_file names (Layout.log for the jobs after
    the scores: the entropy rate, tables, figures and the MLflow import), and the reverse."""
    g = grid
    planned = set(re.findall(r"^\s+log: (\S+)", ci_dry_run, re.M))
    named = {str(j.log) for u in g.units for j in chain(g, u)}
    named |= {str(g.log_file("probe", bb=bb)) for bb in g.backbones}
    named |= {g.log("aggregate", name=n) for n in [*g.tables, *FIGURES]} | {g.log("entropy_rate"), g.log("track")}
    assert planned == named


def test_a_damaged_record_makes_its_job_failed_naming_the_file(tree, capsys):
    g, wd, now = tree
    u = Unit("mdlm", "tokendrift", 0, g.long)
    f = g.score_file(u, 1.0, g.nfes[0])
    data = bytearray((wd / f).read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of the score file
    (wd / f).write_bytes(bytes(data))
    st = study_status(g, wd, now=now)
    assert st["units"][u]["state"] == "failed" and st["units"][u]["job"] == "score"
    assert str(f) in st["units"][u]["damaged"] and "record_sha256" in st["units"][u]["damaged"]
    assert cli.main(["status", str(CI), "--schema", str(SCHEMA), "--directory", str(wd)]) == 0
    assert f"FAILED 0 (score: damaged {f}" in capsys.readouterr().out


def driver(wd, pid, create_time, stops=True, beat=None):
    import json
    import socket

    d = drivers_dir(wd)
    d.mkdir(parents=True, exist_ok=True)
    f = d / f"{socket.gethostname()}-{pid}.json"
    f.write_text(
        json.dumps(
            {
                "pid": pid,
                "host": socket.gethostname(),
                "create_time": create_time,
                "started": time.time() - 60,
                "stops_jobs": stops,
            }
        )
    )
    if beat is not None:
        os.utime(f, (beat, beat))


def test_a_killed_driver_is_gone_and_its_local_jobs_are_not_running(tree, capsys):
    g, wd, now = tree
    lock(wd)  # left behind by the killed Snakemake
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # a PID that no longer runs
    driver(wd, p.pid, time.time() - 60, beat=now - 30)
    st = study_status(g, wd, recent=600, now=now)
    # marked incomplete with a fresh log, but its driver is gone and stopped it: not running
    assert st["units"][Unit("mdlm", "continuation", 0, g.long)]["state"] == "failed"
    assert not st["locked"] and [d["pid"] for d in st["drivers_gone"]] == [p.pid]
    assert cli.main(["status", str(CI), "--schema", str(SCHEMA), "--directory", str(wd)]) == 0
    out = capsys.readouterr().out
    assert f"driver gone since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now - 30))}" in out
    assert f"Snakemake pid {p.pid}" in out and "its jobs were stopped with it" in out
    assert f"  snakemake --unlock --configfile {CI} --rerun-triggers mtime --directory {wd}" in out
    assert (
        out.strip().splitlines()[-1]
        == f"  snakemake all_tables --configfile {CI} --rerun-triggers mtime --directory {wd}"
    )


def test_a_live_driver_keeps_its_lock_and_its_jobs_running(tree):
    import psutil

    g, wd, now = tree
    lock(wd)
    driver(wd, os.getpid(), psutil.Process().create_time())
    st = study_status(g, wd, recent=600, now=now)
    assert st["locked"] and st["drivers_gone"] == []
    assert states(st, Unit("mdlm", "continuation", 0, g.long), Unit("mdlm", "continuation", 1, g.long)) == [
        "running",
        "running",
    ]
