"""bench/gpu.py: its CPU dry mode runs end to end and writes every part; a part that runs out of
memory or time is recorded as such and the run goes on."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from bench import gpu
from tests.conftest import REPO
from tokendrift.core.config import load_file
from tokendrift.grid.layout import Layout
from tokendrift.report import cost


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "gpu_dry_cpu.json"
    # a generous budget: on a loaded CI machine every part still runs (the parts, not the clock, are tested)
    r = subprocess.run(
        [sys.executable, "bench/gpu.py", "--dry", "--out", str(out), "--budget", "900"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return json.loads(out.read_text()), r.stdout


def test_dry_run_writes_every_part(dry):
    res, stdout = dry
    assert res["kind"] == "dry_cpu" and res["measured_on"] == "cpu"
    assert set(res["parts"]) == set(gpu.CAPS)
    for name, part in res["parts"].items():
        assert {"status", "seconds", "cap_s"} <= set(part), name
    status = {k: v["status"] for k, v in res["parts"].items()}
    assert status["max_micro_batch"].startswith("skipped: CUDA only")
    assert status["compile"].startswith("skipped: in --dry")
    for name in ("environment", "steps", "drift", "sampler", "scorer", "attention"):
        assert status[name] == "ok", (name, status[name])
    assert "skipped: CUDA only" in stdout and "wrote" in stdout
    s = res["settings"]
    assert s["device"] == "cpu" and s["drift_anchors"] == 8 and s["queue_size"] == 1024 and s["nfe"] == [4, 8, 16]
    assert res["parts"]["environment"]["torch"]


def test_dry_run_figures(dry):
    parts = dry[0]["parts"]
    for bb in ("mdlm", "duo"):
        row = parts["steps"]["rows"][bb]
        for v in ("continuation", "tokendrift"):
            assert row[v]["micro_s"] > 0 and row[v]["optimizer_s"] > 0 and row[v]["peak_mem_gb"] is None
        assert row["ratio_step"] == pytest.approx(row["tokendrift"]["step_s"] / row["continuation"]["step_s"])
        assert "continuation_mfu_micro" not in row  # no peak on the CPU
        for nfe in ("4", "8", "16"):
            r = parts["sampler"]["rows"][bb][nfe]
            assert (
                r["samples_per_s"] > 0 and 0 < r["own_work_share"] and int(nfe) <= r["forward_passes"] <= int(nfe) + 1
            )
        assert parts["sampler"]["rows"][bb]["nelbo_seq_s"] > 0
    assert parts["drift"]["drift_field_s_8_anchors"] > 0 and 0 < parts["drift"]["share_of_tokendrift_micro_step"]
    assert parts["scorer"]["tokens_per_s"] > 0 and parts["scorer"]["tokens"] == 16 * 64
    assert any("scaled_dot_product" in op for op in parts["attention"]["aten_ops"])


def test_the_dry_result_prices_the_paper_grid(dry, tmp_path):
    f = tmp_path / "m.json"
    f.write_text(json.dumps(dry[0]))
    grid = Layout(load_file(REPO / "workflow/config/paper.yaml"), REPO / "workflow/schemas/config.schema.yaml")
    text = cost.describe_cost(grid, "paper.yaml", f, REPO / "profiles/slurm/profile.yaml")
    assert "CPU measurement, not a GPU estimate" in text and "not measured" not in text


def test_flops_count_of_the_170m_dit():
    from tokendrift.core.model import DiT, DiTConfig

    model = DiT(DiTConfig.preset("small"))
    d, V, L = 768, 50258, 1024
    n = 12 * (3 * d * d + d * d + 4 * d * d + 4 * d + 4 * d * d + d) + d * V + V  # blocks + output projection
    assert gpu.matmul_params(model) == n
    assert gpu.step_flops(model, 2, L) == 6 * n * 2 * L + 12 * 12 * d * L * 2 * L


def test_peak_table():
    assert gpu.peak_tflops("NVIDIA H100 80GB HBM3", None) == (989.0, "table: H100")
    assert gpu.peak_tflops("NVIDIA H100 PCIe", None)[0] == 756.0
    assert gpu.peak_tflops("NVIDIA H200", None)[0] == 989.0
    assert gpu.peak_tflops("NVIDIA A100-SXM4-80GB", None)[0] == 312.0
    assert gpu.peak_tflops("Tesla V100", None)[0] is None
    assert gpu.peak_tflops("Tesla V100", 100.0) == (100.0, "--peak-tflops")


def test_a_part_out_of_memory_or_time_is_recorded_and_the_run_goes_on(tmp_path):
    args = gpu.parse_args(["--dry", "--out", str(tmp_path / "r.json"), "--cap", "steps=1"])
    b = gpu.Bench(args, gpu.SIZES["dry"])
    try:

        def oom(rec):
            rec["tried"] = 4
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

        def slow(rec):
            rec["partial"] = 1
            time.sleep(5)

        def broken(rec):
            raise ValueError("a bug")

        b.part("drift", oom)
        b.part("steps", slow)
        b.part("sampler", broken)  # recorded as an error (main then exits 1); the next part still runs
    finally:
        b.tmp.cleanup()
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["parts"]["drift"]["status"] == "oom" and res["parts"]["drift"]["tried"] == 4
    assert res["parts"]["steps"]["status"].startswith("timeout") and res["parts"]["steps"]["partial"] == 1
    assert res["parts"]["steps"]["seconds"] < 4
    assert res["parts"]["sampler"]["status"] == "error: ValueError: a bug"


def test_step_overhead_times_the_training_step_in_train_mode(tmp_path):
    """bench/step_overhead.py (and bench/gpu.py, which reuses it) times the step training runs:
    the generator in train mode, so dropout draws its masks (before: eval mode, no dropout)."""
    from types import SimpleNamespace

    from bench.step_overhead import make_init, setup

    args = SimpleNamespace(micro_batch=2, device="cpu", bf16=False)
    s, opt, noise = setup(make_init(tmp_path / "init", "tiny", 16, "mdlm"), "continuation", args)
    assert s.model.training and all(b.training for b in s.model.blocks)
    assert s.model.config.dropout > 0
    x = s.source.batch("train", 0, 2)
    sigma = torch.zeros(2)
    assert not torch.equal(s.model(x, sigma), s.model(x, sigma))  # two dropout draws
