"""The paper run rehearsed end to end: workflow/config/paper.yaml in miniature
(tests/configs/paper_mini.yaml; tests/test_paper_config.py checks that it differs only in sizes,
file locations and hardware) on files in the released formats (tests/paper_files.py), run as a
researcher runs it on a cluster: the fetch target alone, then `all_tables` through
profiles/slurm on the real single-node Slurm, every training job 2 ranks (DDP over gloo, 2
accumulation steps). One 2-rank training job is scancelled mid-run; the same command then
reruns only that seed, resuming from its checkpoint, and the tables equal a clean run's.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ctrl_c_reaches_it
from tests.paper_files import write_paper_files
from tests.slurm.conftest import job_counts, our_jobs, stop, train_process
from tokendrift.core.utils import file_digest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
MINI = REPO / "tests" / "configs" / "paper_mini.yaml"
ROOT = "results/paper_mini"
CANCELLED = "train/mdlm/tokendrift/seed1"
# The slurm profile as users run it, minus what a 2-CPU node without GPUs cannot give (4 H100
# per training job, 8 CPUs per job): 2 ranks of one CPU each instead. Command-line values
# replace the profile's.
TWO_RANKS = ["--set-resources", "train:tasks_per_node=2", "train:mem_mb=1500", "train:runtime=30"]
ON_THIS_NODE = ["--set-threads", "train=1", *TWO_RANKS, "--default-resources", "mem_mb=1500", "runtime=30"]


def command(wd, profile, target="all_tables", *extra):
    return [
        sys.executable,
        "-m",
        "snakemake",
        target,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--profile",
        str(REPO / "profiles" / profile),
        "--configfile",
        str(MINI),
        "--directory",
        str(wd),
        *(ON_THIS_NODE if profile == "slurm" else TWO_RANKS),
        *extra,
    ]


def run(wd, profile, target="all_tables", *extra):
    r = subprocess.run(command(wd, profile, target, *extra), capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return r


def tables(wd) -> dict:
    return {f.name: f.read_text() for f in sorted((Path(wd) / ROOT / "tables").glob("*"))}


@pytest.fixture(scope="module")
def clean(slurm, tmp_path_factory):
    """An uninterrupted run of the miniature (local executor, the same 2-rank training jobs)."""
    wd = tmp_path_factory.mktemp("clean")
    write_paper_files(wd / "paper_files")
    t0 = time.time()
    run(wd, "local")
    print(f"clean miniature run (local executor): {time.time() - t0:.0f} s")
    return wd


def test_the_paper_run_in_miniature_on_slurm(clean, tmp_path):
    wd = tmp_path
    write_paper_files(wd / "paper_files")
    # 1. the login-node step alone: downloads (here: manifests of local files), nothing submitted
    # one fixed window for both queries (a sliding "now-3hours" lost an old job between them)
    accounted = ["sacct", "-n", "-X", "-P", "-o", "JobID", "-S", time.strftime("%Y-%m-%dT%H:%M:%S")]
    before = set(subprocess.run(accounted, capture_output=True, text=True).stdout.split())
    r = run(wd, "slurm", "fetch")
    assert "prepare_data" not in job_counts(r.stdout + r.stderr)
    after = set(subprocess.run(accounted, capture_output=True, text=True).stdout.split())
    assert after <= before, f"the fetch target submitted jobs {sorted(after - before)}"
    manifest = json.loads((wd / ROOT / "fetch/manifest.json").read_text())
    assert set(manifest["items"]) == {"dataset", "tokenizer", "evaluator", "start_mdlm", "start_duo"}

    # 2. all_tables on Slurm; one 2-rank training job cancelled after its first checkpoint
    t0 = time.time()
    proc = subprocess.Popen(
        command(wd, "slurm", "all_tables", "--retries", "0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=ctrl_c_reaches_it,
    )
    try:
        _, job = train_process(CANCELLED, timeout=1800, run=proc)
        ranks, t1 = [], time.time()
        while len(ranks) < 2 and time.time() - t1 < 60:
            ranks = [
                p.pid
                for p in psutil.process_iter(["cmdline"])
                if all(s in " ".join(p.info["cmdline"] or []) for s in ("python", "tokendrift train", CANCELLED))
            ]
            time.sleep(0.1)
        last = wd / ROOT / CANCELLED / "checkpoints/last/meta.json"
        t1 = time.time()
        while not last.exists() and time.time() - t1 < 600:
            time.sleep(0.05)
        assert last.exists(), "no checkpoint before the cancel"
        subprocess.run(["scancel", job], check=True)
        out, _ = proc.communicate(timeout=3600)
    finally:
        stop(proc)
    first = time.time() - t0
    assert proc.returncode != 0, out[-3000:]
    assert len(ranks) == 2, ranks  # the job's two ranks
    assert not (wd / ROOT / CANCELLED / "done.json").exists()
    assert (wd / ROOT / "train/mdlm/tokendrift/seed0/done.json").exists(), out[-6000:]  # keep-going
    assert (wd / ROOT / "tables/table2.md").exists()  # DUO's tables do not need the cancelled seed

    # 3. the same command: that seed alone reruns, from its checkpoint
    t0 = time.time()
    r = run(wd, "slurm")
    counts = job_counts(r.stdout + r.stderr)
    print(f"miniature on Slurm: {first:.0f} s, then the rerun {time.time() - t0:.0f} s: {counts}")
    # the run's checkpoints at steps 2, 3 (short), 4 and 6 (long) are each sampled and scored
    assert counts.get("train") == 1 and counts.get("sample_run") == 4 and counts.get("score_run") == 4, counts
    for rule in ("fetch_item", "prepare_data", "import_start", "sample_start", "score_start"):
        assert rule not in counts, counts
    log = (wd / ROOT / "logs" / f"{CANCELLED}.log").read_text()
    assert " 0/6 " not in log.split("\r")[0] and "/6" in log, "the rerun started over instead of resuming"

    # 4. the same tables, figures and MLflow import as the clean run
    got, want = tables(wd), tables(clean)
    assert set(got) == {f"table{i}.{e}" for i in range(1, 7) for e in ("md", "tex", "csv")}
    for name in got:
        if name.endswith(".csv"):
            a, b = (pd.read_csv(io.StringIO(t[name])) for t in (got, want))
            pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-4, atol=1e-3)
        else:
            assert got[name] == want[name], name
    for f in (
        "figures/figure2.png",
        "figures/quality_diversity.png",
        "tracking/imported.json",
        "mlflow.db",
        "probe/mdlm/probe.json",
        "probe/duo/probe.json",
    ):
        assert (wd / ROOT / f).exists(), f
    step6 = "checkpoints/step_000006/ema.safetensors"
    a, b = load_file(wd / ROOT / CANCELLED / step6), load_file(clean / ROOT / CANCELLED / step6)
    assert all(torch.equal(a[k], b[k]) for k in b)  # resumed = uninterrupted, bitwise

    # 5. every result records the fetch manifest it was made from
    digest = json.loads((wd / ROOT / "scores/mdlm/start/seed0/step0/T1.0_nfe4.json").read_text())["provenance"]
    done = json.loads((wd / ROOT / CANCELLED / "done.json").read_text())["provenance"]
    sha = digest["manifest"]["sha256"]
    assert sha == done["manifest"]["sha256"] == file_digest(wd / ROOT / "fetch/manifest.json")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{wd / ROOT / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tokendrift-paper_mini").experiment_id
    for kind in ("cell", "train"):
        runs = client.search_runs([exp], f"tags.kind = '{kind}'", max_results=1000)
        assert runs and all(r.data.tags["fetch_manifest_sha256"] == sha for r in runs), kind
        assert all(r.data.tags["version.torch"] == torch.__version__ for r in runs)
    assert our_jobs() == []


def test_one_process_trains_the_two_rank_weights(clean, tmp_path):
    """A 2-rank job of the rehearsal against one process on the gathered micro-batch (micro-batch
    2 x 2 ranks = 4, the same accumulation): equal up to float rounding."""
    run_dir = clean / ROOT / "train/mdlm/continuation/seed0"
    cfg = json.loads((run_dir / "config.json").read_text())["config"]
    cfg = {**cfg, "micro_batch": cfg["micro_batch"] * 2, "init": str(clean / cfg["init"])}
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    (tmp_path / "job.json").write_text(json.dumps(cfg))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tokendrift.cli",
            "train",
            "--config",
            str(tmp_path / "job.json"),
            "--out",
            str(tmp_path / "one"),
        ],
        cwd=clean,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    step = f"checkpoints/step_{cfg['steps']:06d}/model.safetensors"
    two, one = load_file(run_dir / step), load_file(tmp_path / "one" / step)
    init = load_file(clean / cfg["init"] / "model.safetensors")
    moved = max(float((one[k] - init[k]).abs().max()) for k in one)
    apart = max(float((two[k] - one[k]).abs().max()) for k in one)
    assert moved > 0 and apart <= 1e-3 * moved, (apart, moved)
