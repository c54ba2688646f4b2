"""The ``drifting_official`` preset against stored outputs of the official drifting code.

tests/data/drifting_official.json holds fixed inputs and the outputs of lambertae/drifting
``drift_loss.py::drift_loss`` (JAX, float32; commit and recipe in the file's "about"), computed
once by running that code; only the numbers are stored here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tokendrift.core import objective as O
from tokendrift.core.utils import TokenDriftError
from tokendrift.jobs.train import resolve_config

DATA = json.loads((Path(__file__).parent / "data" / "drifting_official.json").read_text())


def _inputs(case, dtype=torch.float32):
    gen, pos = torch.tensor(case["gen"], dtype=dtype), torch.tensor(case["fixed_pos"], dtype=dtype)
    fixed_neg = torch.tensor(case["fixed_neg"], dtype=dtype).reshape(-1, gen.shape[1])
    # the official targets are [gen, fixed_neg, fixed_pos] with gen's own pair masked: our
    # negatives with the anchors first and exclude_self
    return gen, pos, torch.cat([gen, fixed_neg])


def _rel(V, want):
    return float((V.double() - want).abs().max() / want.abs().max())


@pytest.mark.parametrize("i", range(len(DATA["cases"])))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_preset_reproduces_the_official_force(i, dtype):
    case = DATA["cases"][i]
    gen, pos, neg = _inputs(case, dtype)
    want = torch.tensor(case["force"], dtype=torch.float64)
    V = O.drift_field(gen, pos, neg, O.DriftOptions(case["R_list"], preset="drifting_official"), exclude_self=True)
    assert _rel(V, want) < 1e-5


@pytest.mark.parametrize("i", range(len(DATA["cases"])))
def test_the_drifting_code_options_alone_are_not_the_official_force(i):
    """kernel/scale/reduction as the drifting code, without the preset's arithmetic: % off."""
    case = DATA["cases"][i]
    gen, pos, neg = _inputs(case)
    want = torch.tensor(case["force"], dtype=torch.float64)
    V = O.drift_field(
        gen,
        pos,
        neg,
        O.DriftOptions(case["R_list"], kernel="l2_meannorm", scale="coord_rms", reduction="sum"),
        exclude_self=True,
    )
    assert _rel(V, want) > 1e-3


def test_preset_ignores_the_options_it_sets():
    case = DATA["cases"][0]
    gen, pos, neg = _inputs(case)
    a = O.drift_field(gen, pos, neg, O.DriftOptions(case["R_list"], preset="drifting_official"), exclude_self=True)
    b = O.drift_field(
        gen,
        pos,
        neg,
        O.DriftOptions(
            case["R_list"],
            preset="drifting_official",
            kernel="sq_l2",
            reduction="mean",
            scale="vector_rms",
            floor=0.0,
            ratio_reading="vector",
        ),
        exclude_self=True,
    )
    assert torch.equal(a, b)


def _cfg(objective):
    return {"init": "somewhere", "objective": objective}


def test_config_preset_fills_in_its_options():
    cfg = resolve_config(_cfg({"preset": "drifting_official", "kernel": "l2_meannorm"}))
    obj = cfg["objective"]
    assert obj["preset"] == "drifting_official"
    assert {k: obj[k] for k in O.PRESETS["drifting_official"]} == O.PRESETS["drifting_official"]
    assert resolve_config(_cfg({}))["objective"]["preset"] is None


@pytest.mark.parametrize(
    "key, value", [("kernel", "sq_l2"), ("reduction", "mean"), ("floor", 0.0), ("ratio_reading", "vector")]
)
def test_config_preset_refuses_a_conflicting_option(key, value):
    with pytest.raises(TokenDriftError, match=f"objective.{key}.*objective.preset"):
        resolve_config(_cfg({"preset": "drifting_official", key: value}))


@pytest.mark.parametrize(
    "objective",
    [
        {"preset": "drifting_official"},
        {"ratio": [2.0, 1.0], "ratio_reading": "displacement", "floor": 1e-3},
        {"loss": "logit_kl", "preset": "drifting_official"},
    ],
)
def test_training_runs_with_the_preset_and_the_displacement_reading(tmp_path, objective):
    from tests.conftest import job, make_init
    from tokendrift.jobs import train as trainlib

    init = make_init(tmp_path / "init", "mdlm")
    last = trainlib.train(job(init, steps=2, objective=objective), tmp_path / "run", progress=False)
    assert all(torch.isfinite(torch.tensor(last[k])) for k in ("loss", "drift_loss", "grad_norm"))
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["config"]["objective"]
    assert {k: recorded[k] for k in objective} == objective
    if "preset" in objective:  # the options the preset sets are recorded as what ran
        assert recorded["kernel"] == "l2_meannorm" and recorded["ratio_reading"] == "displacement"
