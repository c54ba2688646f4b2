"""The grid's cost (tokendrift/report/cost.py, `tokendrift grid CONFIG --cost RESULTS.json`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import PAPER, REPO, SCHEMA
from tokendrift.core.config import load_file
from tokendrift.core.utils import TokenDriftError
from tokendrift.grid.layout import Layout
from tokendrift.report import cost

PROFILE = REPO / "profiles" / "slurm" / "profile.yaml"
DRY = REPO / "bench" / "results" / "gpu_dry_cpu.json"


def measurement(on: str = "cuda") -> dict:
    """A bench/gpu.py result with round numbers, at the paper's sizes."""
    step = {"continuation": {"micro_s": 0.1, "optimizer_s": 0.5}, "tokendrift": {"micro_s": 0.2, "optimizer_s": 0.5}}
    sampler = {
        "4": {"samples_per_s": 2.0},
        "8": {"samples_per_s": 1.0},
        "16": {"samples_per_s": 0.5},
        "nelbo_seq_s": 0.01,
    }
    return {
        "kind": "gpu" if on == "cuda" else "dry_cpu",
        "measured_on": on,
        "date": "2026-12-02",
        "settings": {"preset": "small", "length": 1024, "micro_batch": 2, "sample_batch": 32},
        "parts": {
            "environment": {"status": "ok", "gpu": "NVIDIA H100 80GB HBM3", "cpu": "some CPU"},
            "steps": {"status": "ok", "rows": {"mdlm": step, "duo": step}},
            "sampler": {"status": "ok", "rows": {"mdlm": sampler, "duo": sampler}},
            "scorer": {"status": "ok", "tokens_per_s": 1000.0},
        },
    }


@pytest.fixture(scope="module")
def paper():
    return Layout(load_file(PAPER), SCHEMA)


def by_what(rows, stage):
    return {r["what"]: r for r in rows if r["stage"] == stage}


def test_gpus_per_job_come_from_the_slurm_profile():
    gpus, label = cost.gpus_per_job(PROFILE)
    assert gpus["train"] == 4 and gpus["sample_run"] == 1 and gpus["score_run"] == 1
    assert str(PROFILE) in label


def test_a_profile_without_gpus_counts_one_and_says_so(tmp_path):
    (tmp_path / "p.yaml").write_text("jobs: 2\n")
    gpus, label = cost.gpus_per_job(tmp_path / "p.yaml")
    assert set(gpus.values()) == {1} and "1 counted" in label
    with pytest.raises(TokenDriftError, match="not found"):
        cost.gpus_per_job(tmp_path / "absent.yaml")


def test_training_hours_by_hand(paper):
    rows, _ = cost.grid_cost(
        paper, measurement(), {r: (4 if r in ("train", "pretrain_start") else 1) for r in cost.RULES}
    )
    train = by_what(rows, "train")
    # 3 seeds x 13000 steps x (512 / (2 x 4) = 64 micro-steps x 0.1 s + 0.5 s) x 4 GPUs
    assert train["mdlm continuation, 13000 steps"]["jobs"] == 3
    assert train["mdlm continuation, 13000 steps"]["gpu_hours"] == pytest.approx(3 * 13000 * 6.9 * 4 / 3600)
    assert "64 micro-steps" in train["mdlm continuation, 13000 steps"]["basis"]
    # every training job counted once: 48 jobs
    assert sum(r["jobs"] for r in train.values()) == paper.summary()["train"]
    # the tokendrift ablations at the tokendrift step: 5000-step runs of Tables 5-6
    td5 = train["mdlm tokendrift, 5000 steps"]
    assert td5["gpu_hours"] == pytest.approx(td5["jobs"] * 5000 * (64 * 0.2 + 0.5) * 4 / 3600)


def test_sampling_and_scoring_hours_by_hand(paper):
    rows, notes = cost.grid_cost(paper, measurement(), {r: 1 for r in cost.RULES})
    assert notes == []
    per_cell = {4: 256 / 2.0, 8: 256 / 1.0, 16: 256 / 0.5}  # seconds for 256 samples
    for bb in ("mdlm", "duo"):
        units = [u for u in paper.units if u.backbone == bb]
        temps = {u: (7 if u.model == "start" else 1) for u in units}  # the start's sweep: 6 temperatures + 1.0
        sample_s = sum(t * sum(per_cell.values()) for t in temps.values())
        assert by_what(rows, "sample")[bb]["gpu_hours"] == pytest.approx(sample_s / 3600)
        tokens = sum(t * 3 for t in temps.values()) * 256 * 1024
        score_s = tokens / 1000.0 + len(units) * 32 * 16 * 4 * 0.01  # + the NELBO's forwards
        assert by_what(rows, "score")[bb]["gpu_hours"] == pytest.approx(score_s / 3600)


def test_an_unmeasured_nfe_is_fitted_on_a_line():
    row = {"4": {"samples_per_s": 1 / 2.0}, "16": {"samples_per_s": 1 / 8.0}}  # 0.5 s per NFE
    assert cost.seconds_per_sample(row, 8) == (pytest.approx(4.0), "fitted line in NFE")
    assert cost.seconds_per_sample(row, 4) == (2.0, "measured")


def test_missing_parts_are_not_measured_and_the_total_says_so(paper, tmp_path):
    m = measurement()
    m["parts"]["steps"] = {"status": "oom"}
    f = tmp_path / "m.json"
    f.write_text(json.dumps(m))
    text = cost.describe_cost(paper, "paper.yaml", f, PROFILE)
    assert "not measured" in text
    assert [line for line in text.splitlines() if line.startswith("total")][0].endswith("+ what is not measured")
    assert "GPU measurement: NVIDIA H100 80GB HBM3" in text and "GPU-hours" in text


def test_cli_on_the_paper_grid_with_the_dry_run_is_labelled_cpu(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tokendrift.cli",
            "grid",
            str(PAPER),
            "--cost",
            str(DRY),
            "--profile-yaml",
            str(PROFILE),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "No GPU measurement yet" in out and "CPU measurement, not a GPU estimate" in out
    lines = out.splitlines()
    header = [i for i, line in enumerate(lines) if line.startswith("stage ")]
    assert len(header) == 1 and "hours (CPU)" in lines[header[0]] and "GPU-hours" not in lines[header[0]]
    stages = {line.split()[0] for line in lines[header[0] + 1 :] if line.strip()}
    assert {"train", "sample", "score", "total"} <= stages
    total = [line for line in out.splitlines() if line.startswith("total")]
    assert len(total) == 1 and float(total[0].split()[2].replace(",", "")) > 0


def test_cli_refuses_a_file_that_is_not_a_measurement(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": []}))
    r = subprocess.run(
        [sys.executable, "-m", "tokendrift.cli", "grid", str(PAPER), "--cost", str(bad)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 2 and "not a bench/gpu.py result" in r.stderr
