"""The submitit executor plugin on the real single-node Slurm.

Small Snakefiles in tmp_path run through `snakemake --executor submitit --submitit-cluster
slurm` (the repository root on PYTHONPATH so Snakemake finds the plugin, as in
tests/test_executor.py). Rules append to runs.log, so a test counts what really ran. Other
people's jobs may share the cluster: a test only looks at the Slurm ids its own jobs wrote.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ctrl_c_reaches_it
from tests.slurm.conftest import stop

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [e.get("PYTHONPATH")] if p])
    return e


def command(*extra):
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--executor",
        "submitit",
        "--submitit-cluster",
        "slurm",
        "--jobs",
        "4",
        "--nocolor",
        "--submitit-result-grace-s",
        "2",
        *extra,
    ]


def snakemake(wd, *extra, timeout=600):
    return subprocess.run(command(*extra), cwd=wd, env=env(), capture_output=True, text=True, timeout=timeout)


def start(wd, *extra):
    return subprocess.Popen(
        command(*extra),
        cwd=wd,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=ctrl_c_reaches_it,
    )


def runs(wd) -> list[str]:
    log = Path(wd) / "runs.log"
    return log.read_text().split() if log.exists() else []


def slurm_id(path: Path, timeout=300) -> str:
    """The Slurm id a running job wrote to `path` (12_3 for an array task: scancel and scontrol
    of Slurm 22.05 reject an array task's raw id), once it is there."""
    t0 = time.time()
    while not (path.exists() and path.read_text().strip()) and time.time() - t0 < timeout:
        time.sleep(0.2)
    assert path.exists(), f"{path.name} never appeared"
    values = path.read_text().split()
    return f"{values[1]}_{values[2]}" if len(values) == 3 else values[0]


def submitted_ids(out: str) -> list[str]:
    return re.findall(r"submitted as submitit slurm job (\S+)", out)


def in_queue(ids) -> list[str]:
    """Those of `ids` (array task ids like 12_3, or raw job ids) still in squeue."""
    q = subprocess.run(["squeue", "-h", "-r", "-o", "%A %i"], capture_output=True, text=True, check=True).stdout
    queued = set(q.split())
    return [i for i in ids if i in queued]


def left_behind(wd, timeout=20) -> list[str]:
    """Command lines of processes still running in `wd` (a job's command, an inner Snakemake)."""
    t0 = time.time()
    while True:
        found = []
        for p in psutil.process_iter(["cmdline", "cwd", "status"]):
            if p.info["cwd"] == str(wd) and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(" ".join(p.info["cmdline"] or []))
        if not found or time.time() - t0 > timeout:
            return found
        time.sleep(0.5)


# Each job: log the run, write its Slurm ids (raw, array, task) and its Slurm job name, run the rule's
# body, write the output.
SNAKEFILE = """
rule all:
    input: expand("out/{{i}}.txt", i=range(4))

rule work:
    output: "out/{{i}}.txt"
    threads: 1
    resources: mem_mb=100, runtime=10{resources}
    shell: "echo {{wildcards.i}} >> runs.log; printenv SLURM_JOB_ID SLURM_ARRAY_JOB_ID SLURM_ARRAY_TASK_ID > id.{{wildcards.i}} || true; printenv SLURM_JOB_NAME > name.{{wildcards.i}} || true; {body} echo ok > {{output}}"
"""


def workflow(wd: Path, body: str = "", resources: str = "") -> Path:
    (wd / "Snakefile").write_text(SNAKEFILE.format(body=body, resources=resources))
    return wd


def test_four_jobs_complete_and_sacct_has_them(slurm, tmp_path):
    r = snakemake(workflow(tmp_path))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]
    assert sorted(runs(tmp_path)) == ["0", "1", "2", "3"]
    assert all((tmp_path / f"out/{i}.txt").read_text().strip() == "ok" for i in range(4))
    ids = submitted_ids(out)
    assert len(ids) == 4, out[-3000:]
    raw = [(tmp_path / f"id.{i}").read_text().split()[0] for i in range(4)]
    states = ""
    for _ in range(30):  # accounting records reach slurmdbd a moment after the job ends
        states = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "JobIDRaw,JobName,State", "-j", ",".join(raw)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        if states.count("COMPLETED") == 4:
            break
        time.sleep(1)
    assert states.count("COMPLETED") == 4, states
    # The name Slurm gave each job, read inside the job: sacct's JobName is not reliable for array
    # tasks on Slurm 22.05 (a clean-clone CI run once recorded one task as "allocation").
    assert [(tmp_path / f"name.{i}").read_text().strip() for i in range(4)] == ["smk-work"] * 4
    assert not (tmp_path / ".snakemake/submitit").exists() or not any((tmp_path / ".snakemake/submitit").rglob("*.pkl"))


def test_a_cancelled_job_fails_alone_and_a_rerun_runs_only_it(slurm, tmp_path):
    # job 2 sleeps on its first run (until cancelled), not on its rerun
    wd = workflow(tmp_path, body="if [ {wildcards.i} = 2 ] && [ ! -e victim ]; then touch victim; sleep 300; fi;")
    proc = start(wd, "--keep-going")
    try:
        victim = slurm_id(wd / "id.2")
        subprocess.run(["scancel", victim], check=True)
        out, _ = proc.communicate(timeout=300)
    finally:
        stop(proc)
    assert proc.returncode != 0, out[-3000:]
    assert "Error in rule work" in out and "ended in state CANCELLED without a result" in out
    assert left_behind(wd) == []  # the cancelled job's inner Snakemake did not outlive it
    assert [i for i in range(4) if (wd / f"out/{i}.txt").exists()] == [0, 1, 3], out[-3000:]
    before = len(runs(wd))
    r = snakemake(wd, "--keep-going")  # the same command again
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    assert runs(wd)[before:] == ["2"]
    assert len(submitted_ids(r.stdout + r.stderr)) == 1


@pytest.mark.parametrize("mode", [[], ["--submitit-direct-shell"]], ids=["inner-snakemake", "direct-shell"])
def test_ctrl_c_leaves_no_job_in_the_queue(slurm, tmp_path, mode):
    wd = workflow(tmp_path, body="sleep 300;")
    proc = start(wd, *mode)
    try:
        t0 = time.time()
        while not list(wd.glob("id.*")) and time.time() - t0 < 300:  # a job is running
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    ids = submitted_ids(out)
    assert len(ids) == 4, out[-3000:]
    t0 = time.time()
    while in_queue(ids) and time.time() - t0 < 30:
        time.sleep(0.5)
    assert in_queue(ids) == [], out[-3000:]
    assert "cancelled 4 job(s)" in out and left_behind(wd) == []
    assert not any((wd / f"out/{i}.txt").exists() for i in range(4))


def test_a_failed_rank_ends_its_2_rank_job_at_once(slurm, tmp_path):
    """Rank 0 (the inner Snakemake) fails at once, as it did in CI when its rendezvous port was
    taken; rank 1 stops within seconds instead of waiting for it until the time limit."""
    wd = workflow(
        tmp_path,
        body="if [ $RANK = 0 ]; then exit 3; fi; sleep 300;",
        resources=", tasks_per_node=2",
    )
    t0 = time.time()
    r = snakemake(wd, "out/0.txt", timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and time.time() - t0 < 120, out[-3000:]
    (job,) = submitted_ids(out)
    while in_queue([job]) and time.time() - t0 < 120:  # Snakemake reports the job failed on rank 0's
        time.sleep(0.5)  # result; rank 1 ends a moment later, and with it the job
    assert in_queue([job]) == [] and left_behind(wd) == []
    errs = "".join(p.read_text() for p in (wd / ".snakemake/submitit").glob(f"*/{job}_*_log.err"))
    assert "(rank 0)" in errs and "rank 0 of this job failed: the command of rank 1 stopped" in errs, errs[-3000:]


def test_a_requeued_job_reruns_and_the_workflow_completes(slurm, tmp_path):
    # job 0 sleeps on its first run until requeued; its second run finishes at once
    wd = workflow(
        tmp_path,
        body="if [ {wildcards.i} = 0 ] && [ ! -e first ]; then touch first; sleep 300; fi;",
        resources=", requeue=1",
    )
    proc = start(wd)
    try:
        job = slurm_id(wd / "id.0")
        # what preemption or a node failure does; Slurm holds a requeued job for its credential lifetime
        # (AuthInfo cred_expire: 20 s on the test cluster, tests/slurm/slurm_up.sh; 120 s by default)
        subprocess.run(["scontrol", "requeue", job], check=True)
        out, _ = proc.communicate(timeout=400)
    finally:
        stop(proc)
    assert proc.returncode == 0, out[-5000:]
    assert sorted(runs(wd)) == ["0", "0", "1", "2", "3"]
    assert all((wd / f"out/{i}.txt").exists() for i in range(4))
    history = subprocess.run(
        ["sacct", "-n", "-D", "-X", "-P", "-o", "JobIDRaw,State", "-j", job], capture_output=True, text=True
    ).stdout
    assert "REQUEUED" in history, history
