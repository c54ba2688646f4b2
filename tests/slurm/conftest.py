"""The real single-node Slurm (tests/slurm/slurm_up.sh) for the tests in this folder.

Every test here is marked ``slurm``. When Slurm cannot be brought up (not root, no apt, no
network to the Debian mirror), each test is skipped with the reason in pytest's summary
(-ra, in pyproject's addopts), never silently.

The helpers the tests here share are below, imported as
``from tests.slurm.conftest import job_counts``.
"""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

UP = Path(__file__).with_name("slurm_up.sh")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.slurm)


def _answers() -> bool:
    """sinfo and sacct already work (a cluster is up)."""
    if not (shutil.which("sinfo") and shutil.which("sacct")):
        return False
    try:
        for cmd in (["sinfo", "-h", "-o", "%T"], ["sacct", "-n", "-X", "-S", "now-1minutes"]):
            subprocess.run(cmd, check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


@pytest.fixture(scope="session")
def slurm():
    if _answers():
        return True
    try:
        r = subprocess.run(["bash", str(UP)], capture_output=True, text=True, timeout=900)
        ok, said = r.returncode == 0, (r.stderr or r.stdout).strip()
    except (OSError, subprocess.SubprocessError) as e:
        ok, said = False, str(e)
    if not ok:
        reason = f"no real Slurm on this machine: {said.splitlines()[-1] if said else 'slurm_up.sh failed'}"
        pytest.skip(reason)
    return True


# ------------------------------------------------- what the Slurm tests read of Snakemake and Slurm


def job_counts(out: str) -> dict:
    """Snakemake's 'Job stats' table of a run: rule -> count."""
    lines = out[out.index("Job stats:") :].splitlines()[3:]
    counts = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def find_train(needle: str):
    """The running `tokendrift train` process whose command line contains ``needle``, and its Slurm
    job id; None when there is none now."""
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "tokendrift train" in cmd and needle in cmd and "python" in cmd:
            try:
                env = open(f"/proc/{p.pid}/environ", "rb").read().split(b"\0")
            except OSError:
                continue
            var = dict(e.decode().split("=", 1) for e in env if e.startswith(b"SLURM_") and b"=" in e)
            if "SLURM_ARRAY_JOB_ID" in var:  # an array task: its own id is ARRAY_TASK (the bare
                return p, f"{var['SLURM_ARRAY_JOB_ID']}_{var['SLURM_ARRAY_TASK_ID']}"  # id is the array)
            if "SLURM_JOB_ID" in var:
                return p, var["SLURM_JOB_ID"]
    return None


def train_process(needle: str, timeout: float = 600, run: subprocess.Popen | None = None):
    """The running `tokendrift train` process whose command line contains ``needle``, and its Slurm
    job id. Fails at once, with its output, when ``run`` (the Snakemake that should start the job)
    has ended; after ``timeout`` s, with the queue."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        found = find_train(needle)
        if found:
            return found
        if run is not None and run.poll() is not None:
            out = run.communicate()[0] or ""
            raise AssertionError(f"Snakemake ended ({run.returncode}) before {needle} trained:\n{out[-4000:]}")
        time.sleep(0.2)
    queue = subprocess.run(["squeue", "-o", "%i %j %T %M %R"], capture_output=True, text=True).stdout
    raise AssertionError(f"no running training job matching {needle} in {timeout:.0f} s; the queue:\n{queue}")


def stop(proc: subprocess.Popen, timeout: float = 120) -> None:
    """Ctrl-C a Snakemake started in its own session (it cancels its Slurm jobs) unless it has
    ended; SIGKILL if it has not ended ``timeout`` s later. What a test calls when it fails
    half-way, so that no run outlives it and holds the cluster in the next test."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def our_jobs() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if " smk-" in line]
