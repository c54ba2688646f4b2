"""The miniature paper config differs from workflow/config/paper.yaml only in sizes, in where
files come from and in the hardware, so that the Slurm rehearsal (tests/slurm/test_paper_mini.py)
runs the paper's code path and not a second one."""

from __future__ import annotations

import yaml

from tests.conftest import REPO, SCHEMA
from tokendrift.grid.layout import Layout
from tokendrift.grid.sheet import paper_tables

PAPER, MINI = REPO / "workflow/config/paper.yaml", REPO / "tests/configs/paper_mini.yaml"

MODEL_SIZES = {
    f"start.{bb}.model.{k}"
    for bb in ("mdlm", "duo")
    for k in ("vocab_size", "hidden_size", "n_blocks", "n_heads", "cond_dim")
}
SIZES = MODEL_SIZES | {
    "seeds",
    "source.n_docs",
    "source.n_valid_docs",
    "source.num_proc",
    "train.global_batch",
    "train.save_every",
    "train.optim.warmup_steps",
    "steps.long",
    "steps.short",
    "steps.curve",
    "sample.n_samples",
    "sample.batch_size",
    "score.batch_size",
    "nelbo.n_batches",
    "nelbo.batch_size",
    "nelbo.n_t",
    "probe.n_prompts",
}
WHERE_FILES_COME_FROM = {"source.path", "source.tokenizer", "start.mdlm.import", "start.duo.import", "evaluator.name"}
HARDWARE = {"train.device", "train.precision", "sample.device", "score.device", "nelbo.device", "probe.device"}
ALLOWED = SIZES | WHERE_FILES_COME_FROM | HARDWARE | {"name"}


def leaves(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(leaves(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def test_the_miniature_differs_from_the_paper_config_only_in_sizes_files_and_hardware():
    paper, mini = (leaves(yaml.safe_load(p.read_text())) for p in (PAPER, MINI))
    differing = {k for k in paper.keys() | mini.keys() if paper.get(k, "<absent>") != mini.get(k, "<absent>")}
    assert differing <= ALLOWED, sorted(differing - ALLOWED)
    # and what decides the code path is the paper's: source kind and loading, imports, evaluator, grid
    for key in (
        "source.kind",
        "source.name",
        "source.revision",
        "source.data_files",
        "source.cache_dir",
        "train.micro_batch",
        "train.optim.lr",
        "train.optim.ema",
        "sample.nfe",
        "sample.sweep",
        "score.max_length",
        "probe.prompt_len",
        "probe.span",
        "fetch.hf_home",
    ):
        assert paper[key] == mini[key], key
    assert mini["source.path"] and mini["start.mdlm.import"].endswith("mdlm-owt")  # an HF folder
    assert mini["start.duo.import"].endswith(".ckpt")  # a Lightning checkpoint


def test_the_miniature_expands_to_the_paper_grid():
    paper, mini = (Layout(yaml.safe_load(p.read_text()), SCHEMA) for p in (PAPER, MINI))
    assert set(paper.runs) == set(mini.runs) == {(r["backbone"], r["id"]) for r in paper_tables()["runs"]}
    assert set(paper.tables) == set(mini.tables) and paper.fetch_items.keys() == mini.fetch_items.keys()
    assert {k: v[0] for k, v in paper.fetch_items.items()} == {k: v[0] for k, v in mini.fetch_items.items()}
    assert len(paper.prepared) == len(mini.prepared) == 1
    for (bb, rid), run in paper.runs.items():  # the same job options, up to the sizes
        p, m = paper.train_config(bb, rid, 0), mini.train_config(bb, rid, 0)
        assert {k for k in leaves(p).keys() | leaves(m).keys() if leaves(p).get(k) != leaves(m).get(k)} <= {
            "global_batch",
            "save_every",
            "optim.warmup_steps",
            "steps",
            "checkpoint_steps",
            "device",
            "precision",
            "init",
        }
