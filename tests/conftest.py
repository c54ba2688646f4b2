"""Helpers shared by the test modules: fixtures (pytest finds them here, no import needed) and
plain helpers and constants, imported as ``from tests.conftest import make_init, TINY_SOURCE``.
No test module imports another."""

import os
import re
import shutil
import signal
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.paper_files import random_model_dir
from tokendrift.core.data import make_source
from tokendrift.core.records import write_record
from tokendrift.grid.layout import Layout
from tokendrift.grid.sheet import Unit

# Tests share a 2-core machine: keep intra-op threads modest and results repeatable.
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]


def ctrl_c_reaches_it() -> None:
    """``preexec_fn`` of a process a test stops with SIGINT, as Ctrl-C in a terminal does: a shell's
    background job (``cmd &``, as some CI runners start the suite) starts with SIGINT ignored, and
    a Python started that way never turns SIGINT into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
CI = REPO / "tests" / "configs" / "ci.yaml"
PAPER = REPO / "workflow" / "config" / "paper.yaml"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def mdlm_blocks(token_lists, length: int, bos: int, eos: int) -> np.ndarray:
    """The MDLM blocking as a reference to check the data stage against (kuleshov-group/mdlm
    ``dataloader.py::get_dataset`` with ``wrap=True``): each document + EOS, concatenated, cut into L-2 and wrapped in BOS/EOS."""
    flat = np.fromiter((t for doc in token_lists for t in (*doc, eos)), dtype=np.int64)
    n = len(flat) // (length - 2)
    body = flat[: n * (length - 2)].reshape(n, length - 2)
    col = lambda v: np.full((n, 1), v, dtype=np.int64)  # noqa: E731
    return np.concatenate([col(bos), body, col(eos)], axis=1)


# ---------- tiny models and training jobs (tests/test_train.py and the tests that train or sample)

TINY_SOURCE = {"kind": "synthetic", "n_states": 4, "vocab_size": 24, "length": 16, "seed": 3}
TINY_MODEL = dict(hidden_size=32, n_blocks=2, n_heads=2, cond_dim=16, dropout=0.1)


def make_init(path: Path, diffusion: str = "mdlm", seed: int = 0) -> Path:
    """A random tiny "released" checkpoint folder (random adaLN weights so the model is not constant)."""
    src = make_source(TINY_SOURCE)
    torch.manual_seed(seed)
    return random_model_dir(path, diffusion, src.config, src.vocab_size + 1, src.length, **TINY_MODEL)


@pytest.fixture(scope="module")
def init_mdlm(tmp_path_factory):
    return make_init(tmp_path_factory.mktemp("init") / "mdlm", "mdlm")


@pytest.fixture(scope="module")
def init_duo(tmp_path_factory):
    return make_init(tmp_path_factory.mktemp("init") / "duo", "duo")


def job(init, /, **over) -> dict:
    cfg = {
        "variant": "tokendrift",
        "init": str(init),
        "steps": 6,
        "global_batch": 4,
        "micro_batch": 2,
        "save_every": 2,
        "seed": 1,
        "device": "cpu",
        "optim": {"lr": 1e-3, "warmup_steps": 2, "ema": 0.9},
        "objective": {"queue_size": 8},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


# --------------------------- hand-made score files (tests/test_aggregate.py, tests/test_report.py)


def make_grid(tmp_path, **over) -> Layout:
    cfg = {
        "name": "t",
        "results": str(tmp_path / "results"),
        "source": {"kind": "openwebtext"},
        "seeds": [0, 1, 2],
        "start": {"mdlm": {"pretrain": {}}, "duo": {"pretrain": {}}},
        "evaluator": {"name": "gpt2-large"},
        "steps": {"long": 4, "short": 2},
        "sample": {"nfe": [4, 8], "sweep": [0.5, 0.8]},
        **over,
    }
    return Layout(cfg, SCHEMA)


def put(g: Layout, u: Unit, t: float, nfe: int, ppl: float, ent: float, nelbo: float | None = None, **more):
    f = g.score_file(u, t, nfe)
    f.parent.mkdir(parents=True, exist_ok=True)
    write_record(f, {"gen_ppl": ppl, "entropy": ent, "oracle_gen_ppl": None, "nfe": nfe, **more})  # as score jobs write
    if nelbo is not None:
        write_record(g.nelbo_file(u), {"nelbo": nelbo})


# start sweep (per NFE): entropy 4.0 / 5.0 / 6.0 at T 0.5 / 0.8 / 1.0, Gen.-PPL 20 / 50 / 200
SWEEP = {0.5: (20.0, 4.0), 0.8: (50.0, 5.0), 1.0: (200.0, 6.0)}
TD = {0: (40.0, 4.6), 1: (44.0, 4.4), 2: (42.0, 4.5)}  # TokenDrift per seed at NFE 4


@pytest.fixture
def filled(tmp_path):
    g = make_grid(tmp_path)
    for s in g.seeds:
        for t, (p, e) in SWEEP.items():
            for n in g.nfes:
                put(g, Unit("mdlm", "start", s, 0), t, n, p, e, nelbo=3.0)
        for n in g.nfes:
            put(g, Unit("mdlm", "tokendrift", s, 4), 1.0, n, *TD[s], nelbo=3.5 + s)
            if s != 2:  # seed 2 of continuation never finished
                put(g, Unit("mdlm", "continuation", s, 4), 1.0, n, 190.0 + s, 5.9)
    return g


# ------------ dry runs of the repository's Snakefile (tests/test_grid.py, tests/test_ablations.py)


def snakemake(*args, cwd=REPO, check=True):
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), *args]
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"snakemake failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    return r


@pytest.fixture(scope="session")
def ci_dry_run(tmp_path_factory) -> str:
    """`snakemake all_tables -n` of the CI config in an empty folder, run once for every test that
    reads its plan (tests/test_ablations.py, tests/test_status.py): its standard output."""
    return snakemake(
        "all_tables", "-n", "--configfile", str(CI), "--directory", str(tmp_path_factory.mktemp("ci_dry"))
    ).stdout


def planned_jobs(out: str) -> list[dict]:
    """Each planned job of a dry run: its rule and wildcards."""
    jobs = []
    for block in re.split(r"\n(?=\[\w{3} \w{3} +\d+ [\d:]+ \d{4}\]\n)", out):
        m = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if not m:
            continue
        w = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        wildcards = dict(kv.split("=", 1) for kv in w.group(1).split(", ")) if w else {}
        jobs.append({"rule": m.group(1), **wildcards})
    return jobs


# ------------------------------------------------ the report in a browser (tests/test_pipeline.py)

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def rendered_dom(page: Path, tmp: Path) -> str:
    """The page's DOM after its scripts ran (headless Chromium, no network)."""
    r = subprocess.run(
        [
            chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0 and "<html" in r.stdout, r.stderr[-3000:]
    return r.stdout


class Elements(HTMLParser):
    """Rendered elements only: row headers of tables (th scope=row) and images, never the text
    of scripts (the report app carries its content as JavaScript data before it renders it)."""

    def __init__(self):
        super().__init__()
        self.row_headers, self.images, self._th, self._stack = [], [], None, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "th" and a.get("scope") == "row":
            self._th = []
        if tag == "img":
            self.images.append(a)
        self._stack.append(tag)

    def handle_endtag(self, tag):
        if tag == "th" and self._th is not None:
            self.row_headers.append("".join(self._th).strip())
            self._th = None

    def handle_data(self, data):
        if self._th is not None:
            self._th.append(data)
