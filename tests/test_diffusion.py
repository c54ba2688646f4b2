"""MDLM and DUO: corruption, base losses against brute force, samplers, float64 draws."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tokendrift.diffusion import DUO, MDLM, make_diffusion, sample_categorical
from tokendrift.score import sample_entropy
from tokendrift.utils import TokenDriftError

P = torch.tensor([0.6, 0.3, 0.1])  # a product distribution over 3 data ids (model vocab 4)
H = float(-(P * P.log()).sum())


class ProductDenoiser(torch.nn.Module):
    """Exact MDLM denoiser of an i.i.d. distribution: p(x0_l | x_t) = P for every masked l."""

    def __init__(self, probs=P):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.logits = torch.cat([probs.log(), torch.tensor([0.0])])
        self.calls = 0

    def forward(self, x, sigma=None):
        self.calls += 1
        return self.logits.expand(*x.shape, -1).clone() + 0 * self.w


def test_antithetic_times_are_stratified():
    d = MDLM(4)
    t = d.sample_t(8, generator=torch.Generator().manual_seed(0))
    u = (t - d.eps) / (1 - d.eps)
    assert ((u * 8).floor().sort().values == torch.arange(8)).all()
    assert t.min() >= d.eps and t.max() <= 1


@pytest.mark.parametrize("cls", [MDLM, DUO])
def test_corruption_rate_is_one_minus_alpha(cls):
    d = cls(51)
    x0 = torch.randint(0, 50, (400, 64), generator=torch.Generator().manual_seed(1))
    t = torch.full((400,), 0.37)
    xt = d.corrupt(x0, t, generator=torch.Generator().manual_seed(2))
    moved = 1 - d.alpha(torch.tensor(0.37))
    changed = (xt != x0).float().mean()
    if cls is MDLM:
        assert (xt[xt != x0] == 50).all()
        assert abs(float(changed) - float(moved)) < 0.01
    else:  # a replaced token keeps its value with probability 1/N
        assert abs(float(changed) - float(moved) * 49 / 50) < 0.01
        assert int(xt.max()) < 50


def test_mdlm_loss_is_masked_nll_over_t_and_brute_force_nelbo_is_the_entropy():
    """E_t E_mask[loss] for the exact denoiser, enumerated exactly, is (1-eps) H per token."""
    d = MDLM(4)
    model = ProductDenoiser()
    L = 2
    x0s = list(itertools.product(range(3), repeat=L))
    for t in [0.1, 0.5, 0.9]:
        tt = torch.tensor([t])
        mc = 1 - float(d.alpha(tt))
        expected = 0.0
        for x0 in x0s:
            px = math.prod(float(P[i]) for i in x0)
            for mask in itertools.product([0, 1], repeat=L):
                pm = math.prod(mc if m else 1 - mc for m in mask)
                x0_t = torch.tensor([x0])
                xt = torch.where(torch.tensor([mask]).bool(), torch.tensor(3), x0_t)
                log_p = d.log_probs(model(xt), xt)
                loss = float(d.base_loss(log_p, x0_t, xt, tt))
                by_hand = sum(-math.log(float(P[x0[i]])) / t for i in range(L) if mask[i]) / L
                assert loss == pytest.approx(by_hand, rel=1e-5)
                expected += px * pm * loss
        # weight 1/t times mask probability (1-eps) t: the integrand is constant in t
        assert expected == pytest.approx((1 - d.eps) * H, rel=1e-5)


def test_mdlm_subs_parameterization():
    d = MDLM(5)
    xt = torch.tensor([[4, 2, 4]])
    log_p = d.log_probs(torch.randn(1, 3, 5), xt)
    assert torch.allclose(log_p[0, 0].exp().sum(), torch.tensor(1.0)) and log_p[0, 0, 4].exp() == 0
    assert log_p[0, 1, 2] == 0 and (log_p[0, 1, [0, 1, 3, 4]].exp() == 0).all()
    assert d.predicted_positions(xt).tolist() == [[True, False, True]]


def duo_rates_bruteforce(x0, z, x_theta, alpha, dalpha, N):
    """sum_{j != z} R_theta - R + R log(R / R_theta), R(z->j) = c xb_j / xb_z, c = -alpha'/(N alpha)."""
    c = -dalpha / (N * alpha)
    xb = [N * alpha * (1.0 if j == x0 else 0.0) + 1 - alpha for j in range(N)]
    xbt = [N * alpha * x_theta[j] + 1 - alpha for j in range(N)]
    total = 0.0
    for j in range(N):
        if j == z:
            continue
        R, Rt = c * xb[j] / xb[z], c * xbt[j] / xbt[z]
        total += Rt - R + R * math.log(R / Rt)
    return total


def test_duo_closed_form_matches_reverse_rate_divergence():
    N = 4
    d = DUO(N + 1)
    g = torch.Generator().manual_seed(3)
    for t in [0.05, 0.4, 0.95]:
        x0 = torch.randint(0, N, (1, 6), generator=g)
        xt = torch.randint(0, N, (1, 6), generator=g)
        xt[0, :2] = x0[0, :2]  # some unchanged tokens
        logits = torch.randn(1, 6, N + 1, generator=g)
        log_p = d.log_probs(logits, xt)
        tt = torch.tensor([t])
        got = d.loss_per_token(log_p, x0, xt, tt)[0]
        a = float(d.alpha(tt))
        for l in range(6):
            want = duo_rates_bruteforce(int(x0[0, l]), int(xt[0, l]), log_p[0, l, :N].exp().tolist(), a, -(1 - d.eps), N)
            assert float(got[l]) == pytest.approx(want, rel=1e-5, abs=1e-7)
            assert float(got[l]) >= -1e-6


def test_duo_loss_vanishes_for_the_oracle_and_bounds_the_entropy():
    N = 3
    d = DUO(N + 1)
    x0 = torch.tensor([[0, 1, 2, 2]])
    xt = torch.tensor([[1, 1, 0, 2]])
    oracle = torch.full((1, 4, N + 1), -1e6).scatter(-1, x0[..., None], 0.0)
    assert d.base_loss(d.log_probs(oracle, xt), x0, xt, torch.tensor([0.5])).abs() < 1e-6
    # for an i.i.d. source the input-blind denoiser x_theta = P makes DUO's plug-in reverse
    # process exact, so the continuous NELBO equals the entropy; evaluate it without sampling
    # (midpoint rule over t, exact sums over x0 and z): Monte Carlo in t is heavy-tailed near 0
    logp = torch.cat([P.log(), torch.tensor([-1e6])]).view(1, 1, -1).double()
    total, nq = 0.0, 400
    for k in range(nq):
        t = torch.tensor([(k + 0.5) / nq], dtype=torch.float64)
        a = float(d.alpha(t))
        for x in range(N):
            for z in range(N):
                q_z = a * (x == z) + (1 - a) / N
                v = float(d.loss_per_token(logp, torch.tensor([[x]]), torch.tensor([[z]]), t))
                total += float(P[x]) * q_z * v / nq
    assert total == pytest.approx(H, abs=1e-3)  # midpoint-rule error near t = 0 is ~6e-4
    wrong = torch.cat([torch.tensor([0.2, 0.4, 0.4]).log(), torch.tensor([-1e6])]).view(1, 1, -1).double()
    t = torch.tensor([0.3], dtype=torch.float64)
    assert float(d.loss_per_token(wrong, torch.tensor([[0]]), torch.tensor([[1]]), t)) > \
        float(d.loss_per_token(logp, torch.tensor([[0]]), torch.tensor([[1]]), t)) - 10  # finite, comparable


def test_mdlm_nelbo_of_the_exact_denoiser_is_close_to_the_entropy():
    d = MDLM(4)
    x = torch.multinomial(P, 2048 * 8, replacement=True, generator=torch.Generator().manual_seed(1)).view(2048, 8)
    nelbo = d.nelbo(ProductDenoiser(), x, generator=torch.Generator().manual_seed(2), n_t=8)
    assert nelbo == pytest.approx((1 - d.eps) * H, rel=0.03)


@pytest.mark.parametrize("nfe", [1, 4, 16])
def test_mdlm_sampler_matches_marginals_at_any_nfe(nfe):
    d = MDLM(4)
    model = ProductDenoiser()
    info = {}
    x = d.sample(model, 4000, 8, nfe, generator=torch.Generator().manual_seed(nfe), info=info)
    assert x.shape == (4000, 8) and int(x.max()) <= 2  # no mask id left
    freq = torch.bincount(x.flatten(), minlength=3).double() / x.numel()
    assert torch.allclose(freq, P.double(), atol=0.01)
    assert info["forward_passes"] in (nfe, nfe + 1) and model.calls == info["forward_passes"]


@pytest.mark.parametrize("nfe", [2, 16])
def test_duo_sampler_matches_marginals_and_keeps_entropy(nfe):
    """For an i.i.d. source the input-blind x_theta = P makes DUO's posterior step exact; the
    greedy last step must keep the tokens (argmax of q(z_0 | z_t, x_theta)), not replace them by
    the mode of x_theta, which collapsed the entropy."""
    d = DUO(4)
    x = d.sample(ProductDenoiser(), 4000, 8, nfe, generator=torch.Generator().manual_seed(nfe))
    freq = torch.bincount(x.flatten(), minlength=3).double() / x.numel()
    assert torch.allclose(freq, P.double(), atol=0.015)


def test_mdlm_sampler_keeps_unmasked_tokens():
    d = MDLM(4)
    x = torch.tensor([[0, 3, 3, 2]])
    p = torch.softmax(torch.randn(1, 4, 3), -1).double()
    for _ in range(20):
        y = d.sampler_step(p, x, 0.5, 0.25, torch.Generator().manual_seed(_), torch.float64)
        assert y[0, 0] == 0 and y[0, 3] == 2


@pytest.mark.parametrize("cls", [MDLM, DUO])
def test_sampler_seed_temperature_and_validation(cls):
    d = cls(4)
    model = ProductDenoiser()
    a = d.sample(model, 200, 16, 4, generator=torch.Generator().manual_seed(0))
    b = d.sample(model, 200, 16, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and int(a.max()) < 3
    cold = d.sample(model, 200, 16, 4, temperature=0.5, generator=torch.Generator().manual_seed(0))
    assert sample_entropy(cold) < sample_entropy(a) - 0.05
    for kw, field in [(dict(nfe=0), "nfe"), (dict(temperature=0.0), "temperature"), (dict(precision="float16"), "precision")]:
        args = dict(nfe=4, **{k: v for k, v in kw.items() if k != "nfe"})
        if "nfe" in kw:
            args["nfe"] = kw["nfe"]
        with pytest.raises(TokenDriftError, match=field):
            d.sample(model, 2, 4, **args)


def test_float32_gumbel_draws_lose_the_tail():
    """One head and a long tail 17 nats below it: float32 Gumbel noise (max ~16.6) rarely
    reaches the tail, float64 samples it at its true rate (Zheng et al. 2024)."""
    M, rows = 50_000, 8000
    probs = torch.full((M + 1,), math.exp(-17.0), dtype=torch.float64)
    probs[0] = 1.0
    tail_rate = float(probs[1:].sum() / probs.sum())
    counts, entropy = {}, {}
    for name, dtype in [("float64", torch.float64), ("float32", torch.float32)]:
        g = torch.Generator().manual_seed(0)
        draws = torch.cat([sample_categorical(probs.expand(500, -1), g, dtype) for _ in range(rows // 500)])
        counts[name] = int((draws != 0).sum())
        q = torch.bincount(draws, minlength=M + 1).double() / rows
        entropy[name] = float(-(q[q > 0] * q[q > 0].log()).sum())
    assert entropy["float32"] < entropy["float64"]
    assert abs(counts["float64"] - tail_rate * rows) < 4 * math.sqrt(tail_rate * rows)
    assert counts["float32"] < 0.6 * counts["float64"]


def test_make_diffusion_names_the_field():
    assert make_diffusion("duo", 5).special_id == 4
    with pytest.raises(TokenDriftError, match="diffusion"):
        make_diffusion("sedd", 5)
