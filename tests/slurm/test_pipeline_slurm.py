"""The pipeline on a real single-node Slurm through `snakemake --profile profiles/slurm` and the
project's submitit executor: equal tables to a local run, a cancelled seed reruns
alone, a requeued training job resumes from its last checkpoint, Ctrl-C leaves no job behind.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import ctrl_c_reaches_it
from tests.slurm.conftest import find_train, job_counts, our_jobs, stop

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
TINY = Path(__file__).with_name("tiny.yaml")
ROOT = "results/slurmtiny"
# The slurm profile as users run it, minus what a 2-CPU node without GPUs cannot give (the
# profile's 4 H100 and 8 CPUs per job): command-line values replace the profile's.
ON_THIS_NODE = [
    "--set-threads",
    "train=1",
    "--set-resources",
    "train:mem_mb=1500",
    "--default-resources",
    "mem_mb=1500",
    "runtime=30",
]


def command(wd, profile, *extra):
    return [
        sys.executable,
        "-m",
        "snakemake",
        "all_tables",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--profile",
        str(REPO / "profiles" / profile),
        "--configfile",
        str(TINY),
        "--directory",
        str(wd),
        *(ON_THIS_NODE if profile == "slurm" else []),
        *extra,
    ]


def run(wd, profile, *extra, check=True):
    r = subprocess.run(command(wd, profile, *extra), capture_output=True, text=True, timeout=1800)
    if check:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r


def start(wd, profile, *extra):
    return subprocess.Popen(
        command(wd, profile, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=ctrl_c_reaches_it,
    )


def tables(wd) -> dict:
    return {f.name: f.read_text() for f in sorted((Path(wd) / ROOT / "tables").glob("*"))}


def assert_same_csv(a, b):
    import io

    import pandas as pd

    x, y = (pd.read_csv(io.StringIO(tables(w)["table1.csv"])) for w in (a, b))
    # float32 scoring noise (seen: 2.4e-7 relative in one Gen.-PPL, so 7e-5 in the SD of two near-equal seeds)
    pd.testing.assert_frame_equal(x, y, check_exact=False, rtol=1e-4, atol=1e-3)


@pytest.fixture(scope="module")
def clean(slurm, tmp_path_factory):
    """One uninterrupted local run and one uninterrupted Slurm run of the tiny grid."""
    local, cluster = tmp_path_factory.mktemp("local"), tmp_path_factory.mktemp("slurm")
    run(local, "local")
    r = run(cluster, "slurm")
    return local, cluster, r


def test_all_tables_on_slurm_equals_the_local_run(clean):
    local, cluster, r = clean
    ids = subprocess.run(
        ["sacct", "-n", "-X", "-o", "JobName%30,State", "-S", "now-2hours"], capture_output=True, text=True
    ).stdout
    assert "smk-train" in ids and "COMPLETED" in ids  # the jobs really went through Slurm (and its accounting)
    t_local, t_slurm = tables(local), tables(cluster)
    assert set(t_local) == {"table1.md", "table1.tex", "table1.csv"}
    assert t_local["table1.md"] == t_slurm["table1.md"] and t_local["table1.tex"] == t_slurm["table1.tex"]
    assert_same_csv(local, cluster)  # full precision: equal up to float32 rounding (seen: 2.4e-7)


@pytest.fixture(scope="module")
def interrupted(slurm, tmp_path_factory):
    """One folder through three interruptions and the rerun that finishes it, each as a user meets it:
    A. `all_tables --retries 0`: the training job of mdlm/tokendrift/seed0 is requeued after its
       first checkpoint (what preemption or a time limit does) and that of seed1 is scancelled;
       A ends failed (keep-going finishes the rest);
    B. the same command, Ctrl-C'd as soon as its first job (seed1's training) is in the queue;
    C. the same command again, to the end.
    One run of the grid instead of one per interruption; what each step shows is checked by the
    three tests below."""
    wd = tmp_path_factory.mktemp("interrupted")
    seen = {}
    proc = start(wd, "slurm", "--retries", "0")
    last = wd / ROOT / "train/mdlm/tokendrift/seed0/checkpoints/last/meta.json"
    try:
        t0 = time.time()
        while ("requeued" not in seen or "cancelled" not in seen) and time.time() - t0 < 1200:
            if "cancelled" not in seen and (found := find_train("mdlm/tokendrift/seed1")):
                subprocess.run(["scancel", found[1]], check=True)
                seen["cancelled"] = found[1]
            if "requeued" not in seen and (found := find_train("mdlm/tokendrift/seed0")):
                if last.exists():  # its first checkpoint
                    subprocess.run(["scontrol", "requeue", found[1]], check=True)
                    seen["requeued"] = found[1]
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        seen["A_out"], _ = proc.communicate(timeout=1800)
        seen["A_rc"] = proc.returncode
    finally:
        stop(proc)
    seen["after_A"] = {
        f: (wd / ROOT / f).exists()
        for f in (
            "train/mdlm/tokendrift/seed0/done.json",
            "train/mdlm/tokendrift/seed1/done.json",
            "scores/mdlm/continuation/seed1/step120/T1.0_nfe4.json",
        )
    }

    proc = start(wd, "slurm")
    t0 = time.time()
    while not our_jobs() and time.time() - t0 < 300 and proc.poll() is None:
        time.sleep(0.2)
    seen["B_queued"] = our_jobs()
    os.killpg(proc.pid, signal.SIGINT)
    seen["B_out"], _ = proc.communicate(timeout=300)
    t0 = time.time()
    while our_jobs() and time.time() - t0 < 60:
        time.sleep(0.5)
    seen["B_left"] = our_jobs()

    seen["C"] = run(wd, "slurm")  # rerun-incomplete is in the profile
    return wd, seen


def test_a_requeued_training_job_resumes_and_ends_identical(clean, interrupted):
    _, cluster, _ = clean
    wd, seen = interrupted
    job = seen.get("requeued")
    assert job, f"the job finished before its first checkpoint: make the tiny run longer\n{seen['A_out'][-3000:]}"
    assert seen["after_A"]["train/mdlm/tokendrift/seed0/done.json"], seen["A_out"][-4000:]  # A finished it
    states = subprocess.run(
        ["sacct", "-n", "-j", job, "-D", "-X", "-o", "State"], capture_output=True, text=True
    ).stdout
    assert "REQUEUED" in states or "PREEMPTED" in states or states.count("\n") > 1, states
    log = (wd / ROOT / "logs/train/mdlm/tokendrift/seed0.log").read_text()
    assert "/120" in log and " 0/120" not in log.split("\r")[0], "the requeued job started over instead of resuming"
    step = "train/mdlm/tokendrift/seed0/checkpoints/step_000120/ema.safetensors"
    want, got = load_file(cluster / ROOT / step), load_file(wd / ROOT / step)
    assert all((got[k] == want[k]).all() for k in want)  # bitwise: nothing lost, nothing repeated


def test_a_cancelled_seed_is_all_that_reruns(clean, interrupted):
    _, cluster, _ = clean
    wd, seen = interrupted
    assert seen.get("cancelled"), seen["A_out"][-3000:]
    assert seen["A_rc"] != 0  # one job failed ...
    after = seen["after_A"]
    # ... the others finished (keep-going)
    assert after["scores/mdlm/continuation/seed1/step120/T1.0_nfe4.json"], seen["A_out"][-6000:]
    assert after["train/mdlm/tokendrift/seed0/done.json"] and not after["train/mdlm/tokendrift/seed1/done.json"]
    counts = job_counts(seen["C"].stdout + seen["C"].stderr)
    # that seed's training, its two checkpoints' sampling and scoring, then what reads them
    assert counts.get("train") == 1 and counts.get("sample_run") == 2 and counts.get("score_run") == 2, counts
    assert "sample_start" not in counts and "pretrain_start" not in counts
    assert tables(wd)["table1.md"] == tables(cluster)["table1.md"]
    assert_same_csv(wd, cluster)


def test_ctrl_c_cancels_our_jobs_and_a_rerun_finishes(interrupted):
    wd, seen = interrupted
    assert seen["B_queued"], "no job reached the queue"
    assert seen["B_left"] == [], seen["B_out"][-3000:]
    assert tables(wd)  # C, the same command again, finished
    assert our_jobs() == []
