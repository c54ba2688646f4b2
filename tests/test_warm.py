"""Warm start (tokendrift.warm): a job forked from the server writes the same bytes as a cold
one, passes its exit status and errors through, takes signals, and dies with its process."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import make_init
from tokendrift import warm

SAMPLE = ["--nfe", "4", "--n-samples", "8", "--batch-size", "8", "--seed", "3", "--device", "cpu"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_init(tmp_path_factory.mktemp("ck") / "mdlm")


@pytest.fixture(scope="module")
def server(checkpoint):
    """A warm-start server of its own (a private TMPDIR holds its socket); the environment of a
    local submitit job. Yields (env, socket path); stopped by removing its socket."""
    tmp = tempfile.mkdtemp(prefix="tdw-", dir="/tmp")  # a short path: a socket's name has 108 bytes at most
    env = {**os.environ, "TMPDIR": tmp, "SUBMITIT_EXECUTOR": "local", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("TOKENDRIFT_WARM", None)
    where = [sys.executable, "-c", "from tokendrift.warm import socket_path; print(socket_path())"]
    sock = Path(subprocess.run(where, env=env, capture_output=True, text=True, check=True).stdout.strip())
    # the first job finds no server: it starts one and runs cold
    r = tokendrift(env, "sample", str(checkpoint), "--out", f"{tmp}/first", *SAMPLE)
    assert r.returncode == 0, r.stderr
    t0 = time.time()
    while not sock.exists() and time.time() - t0 < 120:
        time.sleep(0.2)
    assert sock.exists(), "the warm-start server did not come up"
    yield env, sock
    sock.unlink(missing_ok=True)  # the server stops within a second
    time.sleep(1.5)
    shutil.rmtree(tmp, ignore_errors=True)


def tokendrift(env, *args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "tokendrift.cli", *args], env=env, capture_output=True, text=True, timeout=300, **kw
    )


def server_log(sock: Path) -> str:
    return Path(f"{sock}.log").read_text()


def test_on_for_local_submitit_jobs_and_by_choice_only():
    assert warm.enabled({"SUBMITIT_EXECUTOR": "local"})
    assert not warm.enabled({"SUBMITIT_EXECUTOR": "slurm"}) and not warm.enabled({})
    assert not warm.enabled({"SUBMITIT_EXECUTOR": "local", "TOKENDRIFT_WARM": "0"})
    assert warm.enabled({"TOKENDRIFT_WARM": "1"})


def test_a_server_serves_only_its_own_environment():
    base = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "SNAKEMAKE_JOB": "a"}
    assert warm.server_key(base) == warm.server_key({**base, "SNAKEMAKE_JOB": "b"})  # read after start-up
    assert warm.server_key(base) != warm.server_key({**base, "OMP_NUM_THREADS": "2"})
    assert warm.server_key(base) != warm.server_key({**base, "HF_HUB_OFFLINE": "0"})


def test_a_warm_job_writes_the_same_bytes_as_a_cold_one(server, checkpoint, tmp_path):
    env, sock = server
    cold = tokendrift(
        {**env, "TOKENDRIFT_WARM": "0"}, "sample", str(checkpoint), "--out", str(tmp_path / "cold"), *SAMPLE
    )
    hot = tokendrift(env, "sample", str(checkpoint), "--out", str(tmp_path / "warm"), *SAMPLE)
    assert cold.returncode == 0 and hot.returncode == 0, cold.stderr + hot.stderr
    assert f"--out {tmp_path / 'warm'}" in server_log(sock)  # it ran on the server
    assert f"--out {tmp_path / 'cold'}" not in server_log(sock)
    names = sorted(p.name for p in (tmp_path / "cold").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "warm").iterdir()) and "ids.safetensors" in names
    for name in names:
        assert (tmp_path / "cold" / name).read_bytes() == (tmp_path / "warm" / name).read_bytes(), name


def test_errors_and_exit_status_pass_through(server, tmp_path):
    env, sock = server
    r = tokendrift(env, "sample", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), *SAMPLE)
    assert r.returncode == 2 and "error:" in r.stderr and str(tmp_path / "missing") in r.stderr
    assert f": tokendrift sample {tmp_path / 'missing'}" in server_log(sock)
    r = tokendrift(env, "sample", "--no-such-flag")  # argparse's usage error, on the server too
    assert r.returncode == 2 and "usage: tokendrift sample" in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_signalled_or_killed_job_stops_its_fork_and_writes_nothing(server, checkpoint, tmp_path, sig):
    """SIGTERM to the job's process reaches the fork (the process ends by it, as a cold one
    would); SIGKILL, which the process cannot pass on, makes the server kill the fork."""
    env, sock = server
    out = tmp_path / "big"
    args = ["sample", str(checkpoint), "--out", str(out), "--nfe", "64", "--n-samples", "100000", "--batch-size", "64"]
    p = subprocess.Popen([sys.executable, "-m", "tokendrift.cli", *args], env=env, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while f"--out {out} " not in server_log(sock) and time.time() - t0 < 60:
        time.sleep(0.1)
    pid = int(next(line for line in server_log(sock).splitlines() if f"--out {out} " in line).split()[2])
    time.sleep(1.0)  # mid-job
    p.send_signal(sig)
    assert p.wait(timeout=30) == -sig
    t0 = time.time()
    while f"end {pid} " not in server_log(sock) and time.time() - t0 < 30:
        time.sleep(0.1)
    assert f"end {pid} status {-(signal.SIGTERM if sig == signal.SIGTERM else signal.SIGKILL)}" in server_log(sock)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not out.exists()  # its temporary folder goes with the next writer of `out`, as after a cold job's kill


def test_an_idle_server_exits_and_removes_its_socket(tmp_path):
    sock = Path(tempfile.mkdtemp(prefix="tdw-", dir="/tmp")) / "s.sock"
    code = "import sys; from pathlib import Path; from tokendrift import cli, warm; warm.serve(Path(sys.argv[1]), 0.5, cli.main)"
    p = subprocess.run([sys.executable, "-c", code, str(sock)], timeout=300)
    assert p.returncode == 0 and not sock.exists() and Path(f"{sock}.lock").exists()
    shutil.rmtree(sock.parent)
