"""Our DiT, losses, sampler steps and Gen.-PPL against the MDLM and DUO reference code.

tests/data/reference_parity.json holds what kuleshov-group/mdlm and s-sahoo/duo (commits in
its "reference") computed on fixed inputs and draws, made once by
tests/data/make_reference_parity.py in an environment of their own; the reference DiT's
weights are tests/data/reference_parity/dit.safetensors and the tiny GPT-2 evaluator is
tests/data/reference_parity/evaluator/. Nothing here imports the reference code.

The weights reach our model through our own import (``checkpoint import``): a Hugging Face
folder (model.safetensors with ``backbone.*`` keys, config.json in the released key names) and
a Lightning .ckpt (raw weights in ``state_dict``, the reference weights as EMA
``shadow_params`` in the reference module's parameter order). MDLM runs with time
conditioning off, DUO with it on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tokendrift.core import diffusion as D
from tokendrift.core.checkpoint import import_checkpoint, load_model_dir
from tokendrift.core.utils import TokenDriftError
from tokendrift.jobs.score import decode_samples, gen_ppl, load_evaluator, sample_entropy

HERE = Path(__file__).parent / "data"
DATA = json.loads((HERE / "reference_parity.json").read_text())
M = DATA["model"]
SIZES = {k: M[k] for k in ("vocab_size", "hidden_size", "n_blocks", "n_heads", "cond_dim", "length", "dropout")}
# config.json as the released checkpoints name these (kuleshov-group/mdlm-owt's config.json;
# DUO's release: model_type "duo" and no time_conditioning key)
RELEASED_KEYS = {
    "mdlm": {"model_type": "mdlm", "time_conditioning": False},
    "duo": {"model_type": "duo", "causal": False, "var_min": True},
}
RTOL = 1e-5


def _t(x, dtype=None):
    return torch.tensor(x, dtype=dtype)


def _close(got, want, rtol=RTOL):
    """|got - want| <= rtol * max|want| elementwise (relative to the tensor's scale, in float64)."""
    got, want = torch.as_tensor(got).double(), torch.as_tensor(want).double()
    err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-300))
    assert err <= rtol, f"relative error {err:.3g} > {rtol:g}"


def _hf_folder(path: Path, kind: str) -> Path:
    path.mkdir(parents=True)
    shutil.copy(HERE / M["weights"], path / "model.safetensors")
    cfg = {
        "hidden_dim": M["hidden_size"], "cond_dim": M["cond_dim"], "n_blocks": M["n_blocks"],
        "n_heads": M["n_heads"], "model_length": M["length"], "vocab_size": M["vocab_size"],
        "dropout": M["dropout"], **RELEASED_KEYS[kind],
    }  # fmt: skip
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    return path


class _HyperParameters:
    """Stands in for the OmegaConf config a Lightning checkpoint pickles (read as an inert object)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def _lightning_ckpt(path: Path, kind: str) -> Path:
    """As the reference's on_save_checkpoint writes it: ``state_dict`` with ``backbone.*`` keys,
    ``ema`` = ExponentialMovingAverage.state_dict() (decay, num_updates, shadow_params in
    backbone.parameters() order), pickled hyperparameters. The raw weights differ from the EMA
    ones, so the import must take (and name) the EMA list."""
    state = {k[len("backbone.") :]: v for k, v in load_file(HERE / M["weights"]).items()}
    order = DATA["mdlm"]["parameter_order"]  # the reference backbone.parameters() order
    torch.save(
        {
            "state_dict": {"backbone." + k: v + 0.25 if k in order else v for k, v in state.items()},
            "ema": {"decay": 0.9999, "num_updates": 7, "shadow_params": [state[n] for n in order]},
            "hyper_parameters": {"config": _HyperParameters(algo=kind, model=SIZES)},
            "global_step": 7,
            "epoch": 0,
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(kind, form) -> (our DiT in eval mode, its meta.json), imported from the reference weights."""
    tmp = tmp_path_factory.mktemp("parity")
    out = {}
    for kind in ("mdlm", "duo"):
        for form in ("hf", "ckpt"):
            src = _hf_folder(tmp / f"{kind}_hf", kind) if form == "hf" else _lightning_ckpt(tmp / f"{kind}.ckpt", kind)
            dst = tmp / f"{kind}_{form}_imported"
            # The HF folder's config.json (released key names) decides the DiT; the .ckpt has none.
            overrides = None if form == "hf" else {"preset": "tiny", **SIZES}
            import_checkpoint(str(src), str(dst), kind, model_overrides=overrides)
            out[kind, form] = load_model_dir(dst)
    return out


def test_the_reference_settings_are_ours():
    assert DATA["mdlm"]["time_conditioning"] is False and DATA["duo"]["time_conditioning"] is True
    assert DATA["mdlm"]["mask_index"] == M["vocab_size"] - 1 == D.MDLM(M["vocab_size"]).special_id
    assert D.DUO.noise_removals[0] == DATA["duo"]["noise_removal"] == "ancestral"
    assert len(DATA["mdlm"]["parameter_order"]) == DATA["mdlm"]["ema_parameter_count"]


@pytest.mark.parametrize("form", ["hf", "ckpt"])
@pytest.mark.parametrize("kind", ["mdlm", "duo"])
def test_logits(models, kind, form):
    ref = DATA[kind]
    diffusion = D.make_diffusion(kind, M["vocab_size"])
    t = _t(ref["loss"]["t"])
    sigma = diffusion.sigma(t)
    if kind == "duo":  # sigma = -log alpha_t
        _close(sigma, ref["logits"]["sigma_in"])
    else:  # time conditioning off: the DiT is fed sigma = 0
        assert not sigma.any() and not _t(ref["logits"]["sigma_in"]).any()
    model, meta = models[kind, form]
    assert model.config.time_conditioning is (kind == "duo") and meta["diffusion"] == kind
    assert meta.get("ema_num_updates") == (7 if form == "ckpt" else None)
    with torch.no_grad():
        logits = model(_t(ref["logits"]["xt"]), sigma)
    _close(logits, ref["logits"]["logits"])


@pytest.mark.parametrize("kind", ["mdlm", "duo"])
def test_time_and_noise_draws_follow_the_same_stream(kind):
    """Our sample_t and corrupt draw in the reference's order (t, then the corruption): the same
    seed gives the reference's t and x_t."""
    ref = DATA[kind]["loss"]
    diffusion = D.make_diffusion(kind, M["vocab_size"])
    g = torch.Generator().manual_seed(ref["seed"])
    x0 = _t(DATA["x0"])
    t = diffusion.sample_t(x0.shape[0], generator=g)
    _close(t, ref["t"], 1e-7)
    assert torch.equal(diffusion.corrupt(x0, t, generator=g), _t(ref["xt"]))


@pytest.mark.parametrize("kind", ["mdlm", "duo"])
def test_loss_float64(kind):
    """The base loss on the reference's logits (float64), times and x_t: per token and reduced."""
    ref = DATA[kind]["loss"]
    diffusion = D.make_diffusion(kind, M["vocab_size"])
    x0, xt, t = _t(DATA["x0"]), _t(ref["xt"]), _t(ref["t"], torch.float64)
    log_p = diffusion.log_probs(_t(DATA[kind]["logits"]["logits"], torch.float64), xt)
    per_token = diffusion.loss_per_token(log_p, x0, xt, t)
    assert per_token.dtype == torch.float64
    _close(per_token, ref["nlls_float64"])
    _close(diffusion.base_loss(log_p, x0, xt, t), ref["loss_float64"])


@pytest.mark.parametrize("kind", ["mdlm", "duo"])
def test_training_loss_end_to_end(models, kind):
    """Imported weights, the same seed: our draws, model and loss give the reference's float32 loss."""
    ref = DATA[kind]["loss"]
    diffusion = D.make_diffusion(kind, M["vocab_size"])
    model = models[kind, "ckpt"][0]
    x0 = _t(DATA["x0"])
    g = torch.Generator().manual_seed(ref["seed"])
    t = diffusion.sample_t(x0.shape[0], generator=g)
    xt = diffusion.corrupt(x0, t, generator=g)
    with torch.no_grad():
        log_p = diffusion.log_probs(model(xt, diffusion.sigma(t)).float(), xt)
    _close(diffusion.base_loss(log_p, x0, xt, t), ref["loss_float32"])


class _Fixed:
    """A model that returns the reference model's output: the step is compared given the same output."""

    def __init__(self, logits):
        self.logits = _t(logits)

    def __call__(self, x, sigma):
        return self.logits.clone()


def _capture_weights(monkeypatch):
    seen = []
    real = D.sample_categorical

    def spy(weights, generator=None, dtype=torch.float64):
        seen.append(weights.double().clone())
        return real(weights, generator, dtype)

    monkeypatch.setattr(D, "sample_categorical", spy)
    return seen


def _normalized(w):
    w = torch.as_tensor(w).double()
    return w / w.sum(-1, keepdim=True)


@pytest.mark.parametrize("i", range(len(DATA["mdlm"]["steps"])))
def test_mdlm_step_distribution(monkeypatch, i):
    """ddpm_cache step t -> s: at each masked position, our draw's weights are the reference's
    q_xs up to a constant (float64)."""
    ref = DATA["mdlm"]["steps"][i]
    diffusion = D.MDLM(M["vocab_size"])
    seen = _capture_weights(monkeypatch)
    x = _t(ref["x"])
    s = ref["t"] - ref["dt"]
    diffusion.step(_Fixed(ref["model_logits"]), x, ref["t"], s, {"passes": 0}, None, torch.float64, 1.0, 1.0)
    masked = (x == diffusion.special_id).flatten()
    want = _t(ref["q_xs"], torch.float64).reshape(-1, M["vocab_size"])[masked]
    _close(_normalized(torch.cat(seen)), _normalized(want))


@pytest.mark.parametrize("i", range(len(DATA["mdlm"]["steps"])))
def test_mdlm_step_with_the_reference_uniforms(monkeypatch, i):
    """float32 draws (the reference's race) with the reference's uniforms give its x_s exactly."""
    ref = DATA["mdlm"]["steps"][i]
    diffusion = D.MDLM(M["vocab_size"])
    x = _t(ref["x"])
    masked = (x == diffusion.special_id).flatten()
    u = _t(ref["uniforms"], torch.float32).reshape(-1, M["vocab_size"])[masked]
    e = 1e-10 - (u + 1e-10).log()  # mdlm _sample_categorical's gumbel_norm, float32
    monkeypatch.setattr(D, "race_noise", lambda shape, generator=None, device=None, dtype=None: e.to(dtype))
    s = ref["t"] - ref["dt"]
    got = diffusion.step(_Fixed(ref["model_logits"]), x, ref["t"], s, {"passes": 0}, None, torch.float32, 1.0, 1.0)
    assert torch.equal(got, _t(ref["x_next"]))


def test_mdlm_noise_removal():
    ref = DATA["mdlm"]["noise_removal"]
    diffusion = D.MDLM(M["vocab_size"])
    got = diffusion.final_step(_Fixed(ref["model_logits"]), _t(ref["x"]), ref["t"], {"passes": 0}, None,
                               torch.float64, 1.0, 1.0, "greedy")  # fmt: skip
    assert torch.equal(got, _t(ref["x_next"]))


@pytest.mark.parametrize("i", range(len(DATA["duo"]["steps"])))
def test_duo_step_distribution(monkeypatch, i):
    """Ancestral step t -> s (the last: the noise removal, alpha_s = 1): our draw's weights are
    the reference's posterior q(z_s | z_t, x_theta) up to a constant, at every position, and
    with the reference's uniforms in its race they give its z_s."""
    ref = DATA["duo"]["steps"][i]
    diffusion = D.DUO(M["vocab_size"], pad_mass="model")
    seen = _capture_weights(monkeypatch)
    x, model, state = _t(ref["x"]), _Fixed(ref["model_logits"]), {"passes": 0}
    if ref["noise_removal_step"]:
        diffusion.final_step(model, x, ref["t"], state, None, torch.float64, 1.0, 1.0, "ancestral")
    else:
        diffusion.step(model, x, ref["t"], ref["s"], state, None, torch.float64, 1.0, 1.0)
    want = _t(ref["q_xs"], torch.float64).reshape(-1, M["vocab_size"])
    ours = torch.cat(seen)
    _close(_normalized(ours), _normalized(want))
    # our weights in the reference's float64 race with its uniforms draw its z_s exactly
    u = _t(ref["uniforms"], torch.float64).reshape(-1, M["vocab_size"])
    drawn = (ours / (1e-10 - (u + 1e-10).log())).argmax(-1)  # duo trainer_base.sample_categorical
    assert torch.equal(drawn.view_as(x), _t(ref["x_next"]))


def test_duo_pad_mass_is_checked():
    with pytest.raises(TokenDriftError, match="duo_pad_mass: 'all'"):
        D.make_diffusion("duo", M["vocab_size"], "all")


def test_duo_default_gives_the_pad_no_mass(monkeypatch):
    """Ours by default (docs/choices.md, DUO's pad id in the sampler): x_theta without the pad, so
    the posterior differs from the reference's by the pad's share only."""
    ref = DATA["duo"]["steps"][0]
    seen = _capture_weights(monkeypatch)
    D.DUO(M["vocab_size"]).step(_Fixed(ref["model_logits"]), _t(ref["x"]), ref["t"], ref["s"], {"passes": 0}, None,
                                torch.float64, 1.0, 1.0)  # fmt: skip
    got, want = _normalized(torch.cat(seen)), _normalized(_t(ref["q_xs"], torch.float64).reshape(-1, M["vocab_size"]))
    assert float((got - want).abs().max()) > 1e-4


@pytest.fixture(scope="module")
def evaluator():
    """The tiny GPT-2 and its tokenizer, loaded by our scorer's loader."""
    return load_evaluator(str(HERE / DATA["eval"]["folder"]))


def test_duo_pad_decodes_as_duo_tokenizer_has_it(evaluator):
    """DUO's tokenizer is GPT-2's with "[PAD]" added (id 50257 = the model's last id): a sampled pad
    becomes the text "[PAD]", as the reference's batch_decode writes it."""
    tok = evaluator[1]
    ids = tok("Noise is removed")["input_ids"]
    pad = len(tok)
    assert decode_samples([ids + [pad] + ids], tok, pad_id=pad) == ["Noise is removed[PAD]Noise is removed"]
    assert len(tok) == pad  # the caller's tokenizer is left as it was


def test_gen_ppl_and_entropy(evaluator):
    """The reference Gen.-PPL routines (mdlm compute_generative_perplexity, duo
    Metrics.record_generative_perplexity: retokenization, first-EOS rule, token weighting) on the
    same texts with the same tiny GPT-2, and duo's record_entropy on the same ids."""
    ev = DATA["eval"]
    # the reference pads all texts of one call (one sampling batch) together: our padding unit
    # is score.batch_size, so the same unit gives the same numbers
    got = gen_ppl(DATA["texts"], evaluator, batch_size=ev["call_size"], max_length=ev["max_length"])
    for kind in ("mdlm", "duo"):
        ref = DATA[kind]["gen_ppl"]
        assert got["n_tokens"] == ref["n_tokens"]
        _close(got["nll_sum"], ref["nll_sum"], 1e-4)
        _close(got["gen_ppl"], ref["gen_ppl"], 1e-4)
    # padded by halves, the longest row of the second half has no pad to count as its EOS
    halves = gen_ppl(DATA["texts"], evaluator, batch_size=ev["call_size"] // 2, max_length=ev["max_length"])
    assert halves["n_tokens"] == ref["n_tokens"] - 1
    _close(sample_entropy(_t(DATA["sample_ids"])), DATA["duo"]["gen_ppl"]["entropy"], 1e-6)
