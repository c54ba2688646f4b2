"""A sample or score job killed with SIGKILL leaves no partial output, and its rerun cleans up
and completes."""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from tests.conftest import TINY_SOURCE, make_init
from tokendrift.core.data import make_source
from tokendrift.jobs.evaluator import train_evaluator


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_init(tmp_path_factory.mktemp("ck") / "mdlm")


def test_atomic_writes_get_the_umask_permissions_not_tempfile_private_ones(tmp_path):
    from tokendrift.core.utils import atomic_dir, atomic_write_json

    mask = os.umask(0o022)
    os.umask(mask)
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    with atomic_dir(tmp_path / "d") as d:
        (d / "f.txt").write_text("x")
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~mask


# A checkpoint written past the process's file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored): the
# write fails for real, as on a full disk (torch.save's writer says only "iostream error" or
# "unexpected pos"). The file system's free space is what shutil.disk_usage reports; argv[2]
# replaces it, as a full disk would report it.
FULL_DISK_WRITE = """
import json, resource, signal, sys, types, torch
from tokendrift.core import utils
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
if sys.argv[2] != "real":
    utils.shutil.disk_usage = lambda p: types.SimpleNamespace(total=1 << 30, used=1 << 30, free=int(sys.argv[2]))
def checkpoint():
    with utils.atomic_dir(sys.argv[1]) as tmp:
        torch.save({"w": torch.zeros(100_000)}, tmp / "train_state.pt")
def record():
    utils.atomic_write_bytes(sys.argv[1] + ".json", bytes(100_000))
for write in (checkpoint, record):
    try:
        write()
    except Exception as e:
        print(json.dumps([type(e).__name__, str(e)]))
"""


@pytest.mark.parametrize("free", ["4096", "real"])
def test_a_checkpoint_or_record_that_fails_on_a_full_disk_names_its_path_and_leaves_nothing(tmp_path, free):
    out = tmp_path / "checkpoints" / "step_000010"
    p = subprocess.run([sys.executable, "-c", FULL_DISK_WRITE, out, free], capture_output=True, text=True, check=True)
    (kind, message), (record_kind, record_message) = map(json.loads, p.stdout.splitlines())
    if free == "real":  # space left: the writers' own errors, unchanged (torch's, and EFBIG's OSError)
        assert (kind, record_kind) == ("RuntimeError", "OSError")
        assert "not written" not in message + record_message
    else:
        assert (kind, record_kind) == ("TokenDriftError", "TokenDriftError")
        assert message.startswith(f"{out}: not written, its file system is full (4096 bytes free): RuntimeError")
        assert record_message.startswith(f"{out}.json: not written, its file system is full (4096 bytes free): OSError")
    assert os.listdir(out.parent) == []  # no folder, no record, no temporary file


def kill_when(cmd, ready, timeout=120):
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` holds (mid-job), return when it is dead."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not ready() and p.poll() is None and time.time() - t0 < timeout:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    return p.returncode


def cli(*args):
    return [sys.executable, "-m", "tokendrift.cli", *map(str, args)]


def test_sigkilled_sample_and_score_jobs_leave_no_partial_output(tmp_path, checkpoint):
    out = tmp_path / "samples" / "s"
    sample = cli("sample", checkpoint, "--nfe", 1024, "--n-samples", 3000, "--batch-size", 500, "--out", out)
    rc = kill_when(sample, lambda: False, timeout=6)  # mid-sampling (the whole job takes a minute alone)
    assert rc == -signal.SIGKILL and not out.exists()
    (out.parent / ".s.dead.tmp").mkdir(parents=True)  # what a kill inside the final write would leave
    small = cli("sample", checkpoint, "--nfe", 2, "--n-samples", 12_000, "--batch-size", 2000, "--out", out)
    subprocess.run(small, check=True, capture_output=True)
    assert (out / "meta.json").exists() and not list(out.parent.glob(".s.*.tmp"))  # the rerun cleaned up

    ev = tmp_path / "ev"
    train_evaluator(make_source(TINY_SOURCE), ev, steps=2, batch_size=4, n_layer=8, n_embd=16, n_head=2)
    score = tmp_path / "scores" / "s.json"
    kill_when(
        cli("score", out, "--evaluator", ev / "model", "--out", score, "--batch-size", 1), lambda: False, timeout=6
    )  # killed mid-scoring (12,000 samples one at a time: 18 s alone, 3.4 of them start-up)
    assert not score.exists()
    subprocess.run(
        cli("score", out, "--evaluator", ev / "model", "--out", score, "--batch-size", 256),
        check=True,
        capture_output=True,
    )
    assert json.loads(score.read_text())["n_samples"] == 12_000
