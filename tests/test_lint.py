"""One code style, checked: ruff's linter on the whole repository and its formatter on both
packages, the tests and the benchmarks (configuration in pyproject.toml), and Snakemake's linter on the workflow under the
embedded default and the paper config."""

import subprocess
import sys

import pytest

from tests.conftest import REPO

FORMATTED = ["tokendrift", "snakemake_executor_plugin_submitit", "tests", "bench"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing():
    r = run("ruff", "check", "--no-cache", ".")
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_code_and_its_tests_are_formatted_by_ruff():
    r = run("ruff", "format", "--no-cache", "--check", *FORMATTED)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("config", [[], ["--configfile", "workflow/config/paper.yaml"]], ids=["default", "paper"])
def test_snakemake_lint_finds_nothing(config):
    r = run("snakemake", "--lint", *config)
    assert r.returncode == 0 and "Congratulations" in r.stdout + r.stderr, r.stdout + r.stderr
