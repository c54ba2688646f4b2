"""bf16 autocast on the CPU: training (precision: bf16) and sampling stay finite and close to fp32.

The paper's jobs run under bf16 autocast on the GPU; these tests run the same code paths under
CPU autocast so that a dtype bug (a bf16 tensor reaching the float64 draws, a LayerNorm or a
loss computed in bf16) shows without a GPU.

Tolerance: 2% relative on each logged loss and gradient norm, over 4 steps. bf16 keeps 8
significant bits, so one rounding is off by at most 2^-9 (0.2%) relative. The DiT keeps its
residual stream, LayerNorms, rotary embedding, logits and losses in fp32, so the rounding
errors of the bf16 matmuls average out in the losses: 0.4% was the largest difference measured
(the first TokenDrift step of MDLM, through the drift's 0.02 temperature). 2% leaves room for
other CPUs' bf16 kernels; a broken path (a non-finite value, a dtype error, a term lost or
mis-scaled under autocast) fails. A last check that the two runs differ at all makes sure
autocast ran.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import job, make_init
from tokendrift.core.checkpoint import load_model_dir
from tokendrift.core.diffusion import make_diffusion
from tokendrift.jobs import train as trainlib

RTOL = 0.02


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("diffusion,variant", [("mdlm", "tokendrift"), ("duo", "tokendrift"), ("mdlm", "continuation")])
def test_bf16_training_stays_close_to_fp32(tmp_path, diffusion, variant):
    init = make_init(tmp_path / "init", diffusion)
    runs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        trainlib.train(
            job(init, variant=variant, precision=precision, steps=4, optim={"warmup_steps": 0}), out, progress=False
        )
        runs[precision] = metrics(out)
    assert [m["step"] for m in runs["bf16"]] == [1, 2, 3, 4]
    keys = ["loss", "grad_norm", "drift_loss" if variant == "tokendrift" else "base_loss"]
    differs = False
    for a, b in zip(runs["fp32"], runs["bf16"]):
        for k in keys:
            assert torch.isfinite(torch.tensor(b[k])), (k, b)
            assert b[k] == pytest.approx(a[k], rel=RTOL), (k, a["step"], a[k], b[k])
            differs |= a[k] != b[k]
    assert differs, "bf16 and fp32 gave identical losses: autocast did not run"


@pytest.mark.parametrize("diffusion", ["mdlm", "duo"])
def test_bf16_sampling_and_nelbo(tmp_path, diffusion):
    model, _ = load_model_dir(make_init(tmp_path / "init", diffusion))
    diff = make_diffusion(diffusion, model.config.vocab_size)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, diff.n_data, (8, model.config.length), generator=gen)
    sigma = diff.sigma(torch.full((8,), 0.5))
    with torch.no_grad():
        ref = model(x0, sigma)
        ref_nelbo = diff.nelbo(model, x0, generator=torch.Generator().manual_seed(1))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x0, sigma)
            nelbo = diff.nelbo(model, x0, generator=torch.Generator().manual_seed(1))
            ids = diff.sample(model, 8, model.config.length, 4, generator=torch.Generator().manual_seed(2))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert not torch.equal(logits, ref), "autocast did not run"
    # the logits of a bf16 forward: within 2% of the fp32 logits' scale
    assert (logits - ref).abs().max() <= RTOL * ref.abs().max()
    assert nelbo == pytest.approx(ref_nelbo, rel=RTOL)
    assert ids.dtype == torch.long and ids.shape == (8, model.config.length)
    assert int(ids.min()) >= 0 and int(ids.max()) < diff.n_data  # no special id leaks from bf16 weights


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_data_parallel_dropout_scales_by_exactly_one_over_keep_and_keeps_only_its_rows(dtype):
    """Rank 1 of 4: this rank's rows of the all-rank draw, kept entries scaled by exactly
    1 / (1 - p) and rounded once (before, the mask was divided in bf16: 1.109375 for p = 0.1),
    and only a mask of this rank's size saved for the backward (before, a view of the 4x draw)."""
    from tokendrift.core.model import dropout

    p, B, world, rank = 0.1, 2, 4, 1
    x = torch.randn(B, 8, 16, dtype=dtype, requires_grad=True)
    saved = []
    torch.manual_seed(0)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = dropout(x, p, True, (rank, world))
    torch.manual_seed(0)
    draw = torch.empty(B * world, 8, 16, dtype=dtype).bernoulli_(1 - p)  # what one process draws for all rows
    keep = draw[rank * B : (rank + 1) * B] != 0
    # F.dropout's arithmetic: x times the float32 scale 1 / (1 - p), rounded to x's dtype
    scale = torch.tensor(1 / (1 - p), dtype=torch.float32)
    expected = (x.detach().float() * torch.where(keep, scale, 0)).to(dtype)
    assert torch.equal(y.detach(), expected)
    assert 0 < keep.sum() < keep.numel()
    assert saved and all(t.untyped_storage().nbytes() <= x.numel() * x.element_size() for t in saved)
    y.sum().backward()
    assert torch.equal(x.grad, torch.where(keep, scale, 0).to(dtype))
