"""The embedded default's causal-LM evaluator: learns the source, resumes exactly, loads like a hub model."""

from __future__ import annotations

import json
import math

import torch
from safetensors.torch import load_file

from tokendrift.core.data import make_source
from tokendrift.jobs.evaluator import train_evaluator
from tokendrift.jobs.score import load_evaluator

SOURCE = {"kind": "synthetic", "vocab_size": 32, "n_states": 4, "length": 16, "tokens_per_state": 4}
KW = dict(steps=60, batch_size=16, n_layer=1, n_head=2, n_embd=32, lr=3e-3, warmup_steps=5, ckpt_every=20)


def test_evaluator_learns_and_resumes_exactly(tmp_path):
    src = make_source(SOURCE)
    full = train_evaluator(src, tmp_path / "full", **KW)
    assert full["valid_nll"] < math.log(src.vocab_size) - 0.3
    train_evaluator(src, tmp_path / "part", stop_after=30, **KW)  # "killed" after step 30 (checkpoint at 20)
    assert (tmp_path / "part/resume/state.pt").exists() and not (tmp_path / "part/model").exists()
    train_evaluator(src, tmp_path / "part", **KW)
    a = load_file(tmp_path / "full/model/model.safetensors")
    b = load_file(tmp_path / "part/model/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model, tok = load_evaluator(str(tmp_path / "full/model"))
    assert tok.eos_token_id == src.vocab_size and model.config.vocab_size == len(tok)
    assert json.loads((tmp_path / "full/metrics.json").read_text())["step"] == 60
    before = (tmp_path / "full/model/model.safetensors").stat().st_mtime_ns
    assert train_evaluator(src, tmp_path / "full", **KW)["step"] == 60  # a finished job reruns as a no-op
    assert (tmp_path / "full/model/model.safetensors").stat().st_mtime_ns == before


def test_dropout_is_the_models_and_a_resume_of_another_config_is_not_continued(tmp_path, capsys):
    src = make_source(SOURCE)
    kw = {**KW, "steps": 30}
    train_evaluator(src, tmp_path / "a", stop_after=25, **kw)  # dropout 0.1: resume state at step 20
    done = train_evaluator(src, tmp_path / "a", **{**kw, "dropout": 0.0})  # the config changed meanwhile
    assert "another config; starting from step 0" in capsys.readouterr().err
    fresh = train_evaluator(src, tmp_path / "b", **{**kw, "dropout": 0.0})
    assert done["valid_nll"] == fresh["valid_nll"]  # trained from scratch, not continued at step 20
    model, _ = load_evaluator(str(tmp_path / "b/model"))
    assert (model.config.resid_pdrop, model.config.embd_pdrop, model.config.attn_pdrop) == (0.0, 0.0, 0.0)
