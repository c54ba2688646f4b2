"""The commands as users type them in the project root, in a clean HOME: `snakemake all_tables`
(no profile: the embedded default), `snakemake --profile slurm all_tables` after the README's
one-time link of profiles/slurm as a user profile (the paper config, the submitit executor on
Slurm), `--configfile` still replacing the profile's config, and `--profile profiles/local`.
Settings are read back through Snakemake's own argument parser; the plans are dry runs.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

BIN = Path(sys.executable).parent

# What Snakemake makes of a command line: its own parser, with profiles and the workflow profile.
PARSE = """
import json, sys
from snakemake.cli import parse_args
_, a = parse_args(sys.argv[1:])
print(json.dumps({"jobs": a.jobs, "cores": a.cores, "executor": a.executor,
                  "cluster": getattr(a, "submitit_cluster", None) if a.executor == "submitit" else None,
                  "configfile": [str(f) for f in a.configfile or []], "keep_going": a.keep_going,
                  "rerun_incomplete": a.rerun_incomplete, "scheduler": a.scheduler}))
"""


@pytest.fixture
def home(tmp_path):
    """A clean HOME, no XDG_CONFIG_HOME, the venv's commands on PATH (as after `. .venv/bin/activate`)."""
    h = tmp_path / "home"
    h.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "SNAKEMAKE_"))}
    env.update(HOME=str(h), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    return h, env


def link_slurm_profile(h: Path):
    """The README's one-time set-up step: `ln -sfn "$PWD/profiles/slurm" ~/.config/snakemake/slurm`."""
    (h / ".config" / "snakemake").mkdir(parents=True)
    (h / ".config" / "snakemake" / "slurm").symlink_to(REPO / "profiles" / "slurm")


def settings(env, *argv) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", PARSE, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def dry_run(env, wd, *argv):
    r = subprocess.run(
        [str(BIN / "snakemake"), *argv, "-n", "--directory", str(wd)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


def test_no_profile_runs_the_embedded_default_locally(home, tmp_path):
    h, env = home
    s = settings(env, "all_tables")
    assert s["executor"] is None and s["cores"] is not None  # Snakemake's local executor, this machine's CPUs
    assert s["configfile"] == [] and s["keep_going"] and s["rerun_incomplete"] and s["scheduler"] == "greedy"
    out = dry_run(env, tmp_path / "wd", "all_tables")
    assert "workflow specific profile profiles/default" in out
    assert "results/default/start/mdlm/pretrain/done.json" in out  # the embedded default's pretraining
    assert "import_start" not in out


def test_no_profile_takes_config_keys_on_top_of_the_default(home, tmp_path):
    _, env = home
    out = dry_run(env, tmp_path / "wd", "all_tables", "--config", "name=mine")
    assert "results/mine/start/mdlm/pretrain/done.json" in out and "results/default/" not in out


def test_profile_slurm_by_name_runs_the_paper_on_slurm_through_submitit(home, tmp_path):
    h, env = home
    r = subprocess.run(
        [str(BIN / "snakemake"), "--profile", "slurm", "all_tables", "-n"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "slurm" in r.stderr  # before the set-up step Snakemake does not know the name
    link_slurm_profile(h)
    s = settings(env, "--profile", "slurm", "all_tables")
    assert (s["executor"], s["cluster"], s["jobs"]) == ("submitit", "slurm", 64)
    assert s["configfile"] == ["workflow/config/paper.yaml"]  # the workflow profile sets no config: slurm's stands
    assert s["keep_going"] and s["rerun_incomplete"] and s["scheduler"] == "greedy"
    out = dry_run(env, tmp_path / "wd", "--profile", "slurm", "all_tables")
    assert "results/paper/start/mdlm/imported/meta.json" in out and "pretrain_start" not in out


def test_configfile_replaces_the_profiles_config(home, tmp_path):
    h, env = home
    link_slurm_profile(h)
    s = settings(env, "--profile", "slurm", "all_tables", "--configfile", "tests/configs/ci.yaml")
    assert s["configfile"] == ["tests/configs/ci.yaml"] and s["executor"] == "submitit"
    out = dry_run(env, tmp_path / "wd", "--profile", "slurm", "all_tables", "--configfile", "tests/configs/ci.yaml")
    assert "results/ci/start/mdlm/pretrain/done.json" in out and "results/paper/" not in out
    out = dry_run(env, tmp_path / "wd2", "all_tables", "--configfile", "tests/configs/ci.yaml")
    assert "results/ci/start/mdlm/pretrain/done.json" in out and "results/default/" not in out


def test_profile_paths_keep_working(home):
    _, env = home
    s = settings(env, "--profile", "profiles/local", "all_tables")
    assert (s["executor"], s["cluster"], s["jobs"]) == ("submitit", "local", 2)
    assert s["configfile"] == ["workflow/config/default.yaml"] and s["keep_going"]
    s = settings(env, "--profile", "profiles/slurm", "all_tables")
    assert (s["executor"], s["cluster"], s["jobs"]) == ("submitit", "slurm", 64)
