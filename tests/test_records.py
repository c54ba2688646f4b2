"""Intermediates are verified on read, and a killed run reads as killed.

- Completion records (tokendrift.core.records): a record and each file it lists, cut short or with one
  byte changed, is found and named; on a tiny study run by the real Snakemake, a damaged training
  done.json, checkpoint safetensors, sample file or score file makes the next run rerun exactly the
  job that wrote it (and the jobs that read its output), named in the message; a rerun of one
  repairs it.
- The driver's liveness: after `kill -9` of a running Snakemake (local profile), its job stops
  within seconds and `tokendrift status` says the driver is gone and how to resume.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import REPO, planned_jobs
from tokendrift.core.records import RecordError, Verifier, check, mark_incomplete, record_text, write_record
from tokendrift.report.status import Snapshot


def flip(path: Path, at: int | None = None) -> None:
    """Change one bit of one byte (in the middle unless ``at``), keeping the size."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0x01  # one bit
    path.write_bytes(bytes(data))


def cut(path: Path) -> None:
    """Cut a file short: what a lost node or a full disk leaves on a filesystem without atomic rename."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# --------------------------------------------------------------------------- the records themselves


@pytest.fixture
def job(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "w.safetensors").write_bytes(os.urandom(4096))
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    write_record(tmp_path / "done.json", {"step": 1}, [tmp_path / "ckpt" / "w.safetensors", tmp_path / "metrics.jsonl"])
    return tmp_path


def test_an_intact_record_reads_back_with_the_size_and_sha256_of_each_file(job):
    rec = check(job / "done.json")
    assert rec["step"] == 1 and rec["files"]["ckpt/w.safetensors"]["size"] == 4096
    assert len(rec["files"]["metrics.jsonl"]["sha256"]) == 64


@pytest.mark.parametrize(
    "damage, file, why",
    [
        (cut, "ckpt/w.safetensors", "size 2048 bytes, recorded 4096"),
        (flip, "ckpt/w.safetensors", "SHA-256 differs"),
        (cut, "done.json", "not valid JSON"),
        (flip, "done.json", "does not match its record_sha256"),
        (lambda p: flip(p, at=p.read_bytes().index(b'"step": 1') + 8), "done.json", "does not match its record_sha256"),
        (lambda p: p.write_bytes(p.read_bytes().replace(b"\n", b" \n", 1)), "done.json", "record_sha256"),
        (lambda p: p.unlink(), "metrics.jsonl", "missing"),
    ],
    ids=["cut-file", "flip-file", "cut-record", "flip-record", "flip-a-digit", "add-a-space", "remove-file"],
)
def test_a_record_or_file_cut_short_or_altered_is_named(job, damage, file, why):
    damage(job / file)
    with pytest.raises(RecordError, match=why) as e:
        check(job / "done.json")
    assert str(job / file) in str(e.value)


def test_digests_are_cached_by_stat_and_a_rewrite_of_the_same_size_is_hashed_again(job, monkeypatch):
    import tokendrift.core.records as records

    cache = job / "cache.json"
    v = Verifier(cache)
    v.check(job / "done.json")
    v.save()
    hashed = []
    monkeypatch.setattr(records, "file_digest", lambda p: hashed.append(Path(p).name) or "x")
    Verifier(cache).check(job / "done.json")
    assert hashed == []  # both files verified before, unchanged since
    flip(job / "ckpt" / "w.safetensors")  # same size, same second: the ctime still changes
    assert Verifier(cache).problems(job / "done.json")[0][1].startswith("SHA-256 differs")
    assert hashed == ["w.safetensors"]


def test_a_job_marked_incomplete_is_what_snakemake_and_status_read(tmp_path):
    long = "results/" + "x" * 300 + "/done.json"  # a name longer than one folder entry
    mark_incomplete(["results/a/done.json", long], tmp_path)
    assert Snapshot(tmp_path).incomplete == {"results/a/done.json", long}


def test_a_record_is_the_canonical_json_of_its_content():
    text = record_text({"b": 1.5, "a": [1, "x"]})
    assert json.loads(text)["a"] == [1, "x"] and text.endswith("}\n")
    assert record_text(json.loads(text)) == text


# --------------------------------------------------------------------------- a damaged job reruns

# A study of one training run and its start checkpoint, one seed, one NFE: the smallest DAG that has
# every kind of job that writes a record (pretraining, evaluator, entropy rate, training, sampling,
# scoring) and a table reading them.
STUDY = {
    "name": "rec",
    "results": "results",
    "paper_grid": False,
    "source": {
        "kind": "synthetic",
        "seed": 0,
        "stickiness": 0.7,
        "tokens_per_state": 6,
        "length": 32,
        "mc_samples": 64,
    },
    "seeds": [0],
    "start": {
        "mdlm": {
            "pretrain": {
                "model": {"preset": "tiny", "hidden_size": 32, "n_blocks": 2, "n_heads": 2, "cond_dim": 16},
                "steps": 4,
                "global_batch": 8,
                "micro_batch": 8,
                "save_every": 2,
                "device": "cpu",
                "optim": {"lr": 1.0e-3, "warmup_steps": 1, "ema": 0.9},
            }
        }
    },
    "evaluator": {"pretrain": {"steps": 4, "batch_size": 8, "n_layer": 1, "n_head": 2, "n_embd": 32}},
    "train": {
        "global_batch": 4,
        "micro_batch": 4,
        "save_every": 1,
        "device": "cpu",
        "optim": {"lr": 1.0e-4, "warmup_steps": 1, "ema": 0.9},
        "objective": {"queue_size": 8},
    },
    "steps": {"long": 2, "short": 1, "curve": []},
    "sample": {"n_samples": 8, "batch_size": 8, "nfe": [2], "sweep": [], "device": "cpu"},
    "score": {"batch_size": 8, "device": "cpu"},
    "nelbo": {"n_batches": 1, "batch_size": 8, "n_t": 1, "device": "cpu"},
    "runs": [{"backbone": "mdlm", "id": "td", "steps": "long", "set": {"variant": "tokendrift"}}],
    "tables": {
        "t": {"title": "records", "backbone": "mdlm", "at": "long", "rows": [{"model": "start"}, {"model": "td"}]}
    },
}
ROOT = Path("results/rec")
TRAIN = ROOT / "train/mdlm/td/seed0"
SAMPLES = ROOT / "samples/mdlm/td/seed0/step2/T1.0_nfe2"
SCORE = ROOT / "scores/mdlm/td/seed0/step2/T1.0_nfe2.json"
TD = {"backbone": "mdlm", "model": "td", "seed": "0"}


def snakemake(wd: Path, config: Path, *args, timeout=900):
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--configfile",
        str(config),
        "--directory",
        str(wd),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    base = tmp_path_factory.mktemp("records")
    config = base / "study.yaml"
    config.write_text(yaml.safe_dump(STUDY))
    wd = base / "done"
    r = snakemake(wd, config, "t", "--cores", "2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return wd, config


@pytest.fixture
def copy(study, tmp_path):
    """A copy of the finished study to damage (mtimes kept: nothing is newer than it was)."""
    wd, config = study
    shutil.copytree(wd, tmp_path / "wd", symlinks=True)
    return tmp_path / "wd", config


def rerun_plan(wd: Path, config: Path):
    r = snakemake(wd, config, "t", "-n")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return sorted((j["rule"], tuple(sorted(j.items()))) for j in planned_jobs(r.stdout)), r.stderr


def jobs(*spec):
    return sorted((rule, tuple(sorted({"rule": rule, **w}.items()))) for rule, w in spec)


SAMPLE, SCORE_JOB, TABLE = ("sample_run", {**TD, "step": "2"}), ("score_run", {**TD, "step": "2"}), ("t", {})


@pytest.mark.parametrize(
    "damage, file, writer, rerun",
    [
        (
            cut,
            TRAIN / "done.json",
            "train (backbone=mdlm, model=td, seed=0)",
            [("train", TD), SAMPLE, SCORE_JOB, TABLE],
        ),
        (
            flip,
            TRAIN / "checkpoints/step_000002/ema.safetensors",
            "train (backbone=mdlm, model=td, seed=0)",
            [("train", TD), SAMPLE, SCORE_JOB, TABLE],
        ),
        (
            cut,
            SAMPLES / "ids.safetensors",
            "sample_run (backbone=mdlm, model=td, seed=0, step=2)",
            [SAMPLE, SCORE_JOB, TABLE],
        ),
        (flip, SCORE, "score_run (backbone=mdlm, model=td, seed=0, step=2)", [SCORE_JOB, TABLE]),
    ],
    ids=["cut-done.json", "flip-safetensors", "cut-sample", "flip-score"],
)
def test_a_damaged_file_reruns_exactly_the_job_that_wrote_it(copy, damage, file, writer, rerun):
    wd, config = copy
    damage(wd / file)
    plan, err = rerun_plan(wd, config)
    assert plan == jobs(*rerun)  # the writer and what reads its output: no other training, sampling, scoring
    assert f"tokendrift: {file}" in err and f"written by job {writer}" in err
    assert rerun_plan(wd, config)[0] == plan  # a dry run changes nothing: the next run still reruns it


def test_the_rerun_repairs_a_damaged_checkpoint_and_leaves_nothing_to_do(copy):
    """The training job resumes from the last intact checkpoint before the damaged one."""
    wd, config = copy
    flip(wd / TRAIN / "checkpoints/step_000001/model.safetensors")  # an earlier checkpoint than the last
    r = snakemake(wd, config, "t", "--cores", "2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    log = (wd / ROOT / "logs/train/mdlm/td/seed0.log").read_text()
    assert "discarding checkpoint" in log and "step_000001" in log
    check(wd / TRAIN / "done.json")
    check(wd / SCORE)
    assert rerun_plan(wd, config)[0] == []


# --------------------------------------------------------------------------- kill -9 of the driver


def job_processes(wd: Path) -> list[psutil.Process]:
    """Processes working in ``wd`` (the executor's controllers, tasks and job commands)."""
    out = []
    for p in psutil.process_iter(["cwd", "status"]):
        if p.info["cwd"] == str(wd) and p.info["status"] != psutil.STATUS_ZOMBIE and p.pid != os.getpid():
            out.append(p)
    return out


def test_kill_9_of_snakemake_stops_its_jobs_and_status_says_the_driver_is_gone(tmp_path):
    slow = json.loads(json.dumps(STUDY))
    slow["start"]["mdlm"]["pretrain"]["steps"] = 100_000  # runs until killed
    config = tmp_path / "slow.yaml"
    config.write_text(yaml.safe_dump(slow))
    wd = tmp_path / "wd"
    wd.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--profile",
        str(REPO / "profiles" / "local"),
        "--configfile",
        str(config),
        "--directory",
        str(wd),
        "t",
    ]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while time.time() - t0 < 300 and not any("tokendrift pretrain" in " ".join(p.cmdline()) for p in job_processes(wd)):
        assert driver.poll() is None, "snakemake ended before its pretraining job ran"
        time.sleep(0.2)
    time.sleep(2)  # the job well under way
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    killed = time.time()
    while job_processes(wd) and time.time() - killed < 30:
        time.sleep(0.2)
    left = job_processes(wd)
    assert left == [], [p.cmdline() for p in left]
    assert time.time() - killed < 10  # the watchdog polls the driver every 0.5 s, then 2 s of grace
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tokendrift.cli",
            "status",
            str(config),
            "--directory",
            str(wd),
            "--schema",
            str(REPO / "workflow/schemas/config.schema.yaml"),
            "--profile",
            "profiles/local",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "driver gone since" in r.stdout and f"Snakemake pid {driver.pid}" in r.stdout
    assert "its jobs were stopped with it" in r.stdout and "running" not in r.stdout.split("checkpoints:")[0]
    assert f"snakemake --unlock --profile profiles/local --configfile {config}" in r.stdout
