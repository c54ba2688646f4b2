"""MDLM and DUO: schedule, corruption, base losses against brute force, NELBO, samplers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from tokendrift.core.diffusion import (
    DUO,
    MDLM,
    NEG_INF,
    make_diffusion,
    nucleus,
    race_noise,
    sample_categorical,
)
from tokendrift.core.utils import TokenDriftError

P = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)  # an i.i.d. source over 3 data ids (model vocab 4)
H = float(-(P * P.log()).sum())


def entropy(p: torch.Tensor) -> float:
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def freqs(x: torch.Tensor, k: int = 4) -> torch.Tensor:
    return torch.bincount(x.flatten(), minlength=k).double() / x.numel()


class ProductDenoiser(torch.nn.Module):
    """Input-blind denoiser x_theta = probs over the data ids, no mass on the special id.

    It is exact for an i.i.d. source under both parameterizations: MDLM's SUBS posterior of a
    masked token is the marginal, and DUO's optimal x_theta at a position is p(x0_l | other
    noisy tokens), which for independent tokens is the marginal too."""

    def __init__(self, probs=P, record=False, special_logit=NEG_INF):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.logits = torch.cat([probs.log(), torch.tensor([special_logit], dtype=probs.dtype)]).float()
        self.calls, self.record, self.inputs = 0, record, []

    def forward(self, x, sigma=None):
        self.calls += 1
        if self.record:
            self.inputs.append(x.clone())
        return self.logits.expand(*x.shape, -1).clone() + 0 * self.w


class TinyNet(torch.nn.Module):
    """A small input-dependent denoiser (embedding + context mean + MLP) for brute-force checks."""

    def __init__(self, vocab, dim=8, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(vocab, dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(2 * dim + 1, 16), torch.nn.Tanh(), torch.nn.Linear(16, vocab))

    def forward(self, x, sigma):
        e = self.emb(x)
        ctx = e.mean(1, keepdim=True).expand_as(e)
        s = sigma.reshape(-1, 1, 1).expand(*x.shape, 1).to(e.dtype)
        return 3 * self.mlp(torch.cat([e, ctx, s], -1))


# ---------------------------------------------------------------- schedule and time sampling


def test_schedule_weight_and_sigma():
    t = torch.tensor([1e-3, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    m, d = MDLM(5), DUO(5)
    assert torch.allclose(m.alpha(t), 1 - (1 - 1e-3) * t)
    assert torch.allclose(m.loss_weight(t), 1 / t, rtol=1e-12)  # dsigma / expm1(sigma) = 1/t
    assert torch.equal(m.sigma(t), torch.zeros_like(t))
    assert torch.allclose(d.sigma(t), -torch.log(d.alpha(t)))


def test_antithetic_times_are_stratified_in_eps_one():
    d = MDLM(4)
    g = torch.Generator().manual_seed(0)
    for B in [1, 7, 64]:
        t = d.sample_t(B, generator=g)
        u = (t - d.eps) / (1 - d.eps)
        assert t.min() >= d.eps and t.max() <= 1
        # one time per stratum [i/B, (i+1)/B), in order
        assert torch.equal((u * B).floor().long().clamp(max=B - 1), torch.arange(B))
    pooled = torch.cat([d.sample_t(8, generator=g) for _ in range(2000)])
    assert abs(float(pooled.mean()) - (1 + d.eps) / 2) < 0.01  # uniform on [eps, 1]


# ---------------------------------------------------------------- corruption


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_mdlm_masks_at_rate_one_minus_alpha(t):
    d = MDLM(51)
    x0 = torch.randint(0, 50, (200, 500), generator=torch.Generator().manual_seed(1))
    xt = d.corrupt(x0, torch.full((200,), t), generator=torch.Generator().manual_seed(2))
    moved = xt != x0
    assert (xt[moved] == d.special_id).all()
    rate = 1 - float(d.alpha(torch.tensor(t)))
    assert abs(float(moved.double().mean()) - rate) < 4 * math.sqrt(rate * (1 - rate) / x0.numel())


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_duo_replaces_by_uniform_ids_pad_included(t):
    """DUO's q_xt draws the replacement from randint(0, V): the pad id is a noise state too."""
    V = 11
    d = DUO(V)
    x0 = torch.randint(0, V - 1, (200, 500), generator=torch.Generator().manual_seed(1))
    xt = d.corrupt(x0, torch.full((200,), t), generator=torch.Generator().manual_seed(2))
    rate = (1 - float(d.alpha(torch.tensor(t)))) * (1 - 1 / V)  # a replacement keeps the token w.p. 1/V
    changed = float((xt != x0).double().mean())
    assert abs(changed - rate) < 4 * math.sqrt(rate * (1 - rate) / x0.numel())
    # the moved tokens are uniform over all V ids: count them at positions whose x0 is 0
    new = xt[(x0 == 0) & (xt != 0)]
    counts = torch.bincount(new, minlength=V)[1:].double()
    expected = counts.sum() / (V - 1)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert counts[-1] > 0 and chi2 < 30  # chi-square, 9 dof: p ~ 4e-4


# ---------------------------------------------------------------- MDLM parameterization and loss


def test_mdlm_subs_parameterization():
    d = MDLM(5)
    xt = torch.tensor([[4, 2, 4]])
    log_p = d.log_probs(torch.randn(1, 3, 5), xt)
    for l in (0, 2):  # masked: a distribution over data ids, none on the mask
        assert torch.allclose(log_p[0, l].exp().sum(), torch.tensor(1.0)) and log_p[0, l, 4].exp() == 0
    assert log_p[0, 1, 2] == 0 and (log_p[0, 1, [0, 1, 3, 4]].exp() == 0).all()  # copy
    assert d.predicted_positions(xt).tolist() == [[True, False, True]]


@torch.no_grad()
@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_mdlm_loss_matches_explicit_enumeration(t):
    """E over masks of the base loss, enumerated exactly, equals the same expectation written
    token by token with plain Python loops: sum over masked l of -log softmax(data logits)[x0_l] / t,
    divided by L; for the exact denoiser of an i.i.d. source it is (1 - eps) H for every t."""
    V, L = 4, 3
    d, net, oracle = MDLM(V), TinyNet(V), ProductDenoiser()
    tt = torch.tensor([t])
    mc = 1 - float(d.alpha(tt))
    cases = list(itertools.product(itertools.product(range(V - 1), repeat=L), itertools.product([0, 1], repeat=L)))
    x0_all = torch.tensor([x0 for x0, _ in cases])
    xt_all = torch.where(torch.tensor([m for _, m in cases], dtype=torch.bool), V - 1, x0_all)
    logits_all = net(xt_all, d.sigma(tt.expand(len(cases))))
    lp_net, lp_oracle = d.log_probs(logits_all, xt_all), d.log_probs(oracle(xt_all), xt_all)
    code, hand, oracle_total = {}, {}, 0.0
    for i, (x0, mask) in enumerate(cases):
        pm = math.prod(mc if m else 1 - mc for m in mask)
        sl = slice(i, i + 1)
        code[x0] = code.get(x0, 0.0) + pm * float(d.base_loss(lp_net[sl], x0_all[sl], xt_all[sl], tt))
        s = 0.0
        for l in range(L):
            if mask[l]:
                row = [float(v) for v in logits_all[i, l, : V - 1]]
                s += -(row[x0[l]] - math.log(sum(math.exp(v) for v in row))) / t
        hand[x0] = hand.get(x0, 0.0) + pm * s / L
        oracle_total += (
            math.prod(float(P[j]) for j in x0) * pm * float(d.base_loss(lp_oracle[sl], x0_all[sl], xt_all[sl], tt))
        )
    for x0, value in code.items():
        assert value == pytest.approx(hand[x0], rel=1e-5)
    assert oracle_total == pytest.approx((1 - d.eps) * H, rel=1e-6)


# ---------------------------------------------------------------- DUO loss


def _posterior(x, z, a_s, a_t, N):
    """q(z_s = j | z_t = z, x) by Bayes' rule, for x a distribution over the N states."""
    a_ts = a_t / a_s
    w = [(a_ts * (j == z) + (1 - a_ts) / N) * (a_s * x[j] + (1 - a_s) / N) for j in range(N)]
    return [v / sum(w) for v in w]


def _kl_rate(x0, z, x_theta, t, eps, h):
    """KL(q(z_{t-h} | z_t, x0) || q(z_{t-h} | z_t, x_theta)) / h, Richardson-extrapolated in h."""
    N = len(x_theta)
    alpha = lambda u: 1 - (1 - eps) * u

    def kl(hh):
        q = _posterior([float(j == x0) for j in range(N)], z, alpha(t - hh), alpha(t), N)
        p = _posterior(x_theta, z, alpha(t - hh), alpha(t), N)
        return sum(qj * (math.log(qj) - math.log(pj)) for qj, pj in zip(q, p) if qj > 0)

    return 2 * kl(h) / h - kl(2 * h) / (2 * h)


def test_duo_closed_form_is_the_continuous_limit_of_the_posterior_kl():
    """The closed form against the definition of the diffusion ELBO term, computed token by
    token: the KL between the true and the model posterior over one step (t -> t - h), per unit
    time, as h -> 0. Covers z = x0, z != x0 and z = pad, and x_theta with mass on the pad."""
    N = 5
    d = DUO(N)
    g = torch.Generator().manual_seed(3)
    for t in [0.01, 0.2, 0.6, 0.999]:
        logits = torch.randn(1, 6, N, generator=g, dtype=torch.float64) * 2
        x0 = torch.tensor([[0, 1, 2, 3, 1, 0]])
        xt = torch.tensor([[0, 1, 3, 4, 2, 4]])  # same, same, other, pad, other, pad
        log_p = d.log_probs(logits, xt)
        got = d.loss_per_token(log_p, x0, xt, torch.tensor([t], dtype=torch.float64))[0]
        for l in range(6):
            want = _kl_rate(int(x0[0, l]), int(xt[0, l]), log_p[0, l].exp().tolist(), t, d.eps, 1e-5)
            assert float(got[l]) == pytest.approx(want, rel=1e-5)


def test_duo_loss_vanishes_for_the_one_hot_oracle_and_is_positive_otherwise():
    d = DUO(4)
    x0 = torch.tensor([[0, 1, 2, 2]])
    xt = torch.tensor([[1, 1, 3, 2]])
    oracle = torch.full((1, 4, 4), NEG_INF).scatter(-1, x0[..., None], 0.0)
    for t in [0.05, 0.5, 0.95]:
        tt = torch.tensor([t])
        assert float(d.base_loss(d.log_probs(oracle, xt), x0, xt, tt).abs()) < 1e-4
        assert (d.loss_per_token(d.log_probs(torch.randn(1, 4, 4), xt), x0, xt, tt) > 0).all()


def test_duo_exact_nelbo_integral_is_the_entropy_plus_the_kl():
    """Exact expectation over x0 ~ P and z_t ~ q(z_t | x0) (all V states), Gauss-Legendre in
    log t over [1e-9, 1]: for the exact denoiser the integral of the closed form is
    H - I(x0; z_1) (the continuous NELBO without its prior term; I is tiny since
    alpha_1 = 1e-3); for an i.i.d. denoiser Q != P it is H + KL(P || Q) (to ~1e-6)."""
    V = 4
    d = DUO(V)
    X0, Z = (g.reshape(1, -1) for g in torch.meshgrid(torch.arange(V - 1), torch.arange(V), indexing="ij"))
    y, w = np.polynomial.legendre.leggauss(64)
    lo = math.log(1e-9)
    nodes, weights = (y + 1) * (-lo / 2) + lo, w * (-lo / 2)

    def integral(probs):
        log_p = torch.cat([probs.log(), torch.tensor([NEG_INF], dtype=torch.float64)]).log_softmax(-1)
        log_p = log_p.expand(1, X0.shape[1], -1)
        total = 0.0
        for yi, wi in zip(nodes, weights):
            t = math.exp(yi)
            a = 1 - (1 - d.eps) * t
            q = P[X0[0]] * (a * (X0[0] == Z[0]) + (1 - a) / V)
            f = float((q * d.loss_per_token(log_p, X0, Z, torch.tensor([t], dtype=torch.float64))[0]).sum())
            total += wi * f * t
        return total

    a1 = 1 - (1 - d.eps)
    q1 = [a1 * (float(P[z]) if z < V - 1 else 0.0) + (1 - a1) / V for z in range(V)]
    info = sum(
        float(P[x])
        * sum((a1 * (x == z) + (1 - a1) / V) * math.log((a1 * (x == z) + (1 - a1) / V) / q1[z]) for z in range(V))
        for x in range(V - 1)
    )
    assert integral(P) == pytest.approx(H - info, abs=1e-7)
    Q = torch.tensor([0.3, 0.4, 0.3], dtype=torch.float64)
    assert integral(Q) == pytest.approx(H + float((P * (P / Q).log()).sum()), abs=1e-5)


# ---------------------------------------------------------------- held-out NELBO


def test_nelbo_of_the_exact_denoiser_is_the_entropy_and_a_wrong_one_pays_the_kl():
    # per-token variance of the MDLM estimator ~ log(1/eps) E[nll^2] ~ 8: 5e5 token draws give ~0.4%
    x = torch.multinomial(P, 4096 * 16, replacement=True, generator=torch.Generator().manual_seed(1)).view(4096, 16)
    Q = torch.tensor([0.3, 0.4, 0.3], dtype=torch.float64)
    kl = float((P * (P / Q).log()).sum())
    m = MDLM(4)
    exact = ProductDenoiser().train()
    est = m.nelbo(exact, x, generator=torch.Generator().manual_seed(2), n_t=8)
    assert est == pytest.approx((1 - m.eps) * H, rel=0.02)  # omits the t = 1 prior term: (1 - eps) H
    assert exact.training  # train mode restored
    wrong = m.nelbo(ProductDenoiser(Q), x, generator=torch.Generator().manual_seed(2), n_t=8)
    assert wrong == pytest.approx((1 - m.eps) * (H + kl), rel=0.02)
    d = DUO(4)
    est = d.nelbo(ProductDenoiser(), x, generator=torch.Generator().manual_seed(2), n_t=8)
    assert est == pytest.approx(H, rel=0.02)
    assert d.nelbo(ProductDenoiser(Q), x, generator=torch.Generator().manual_seed(2), n_t=8) == pytest.approx(
        H + kl, rel=0.02
    )


# ---------------------------------------------------------------- categorical draws


def test_sample_categorical_is_exact_in_float64():
    w = torch.tensor([0.0, 5.0, 3.0, 0.0, 1.0, 1.0, 0.0], dtype=torch.float64)  # zeros first, inside, last
    draws = sample_categorical(w.expand(40_000, -1), torch.Generator().manual_seed(0), torch.float64)
    f = freqs(draws, 7)
    assert torch.allclose(f, w / w.sum(), atol=0.01) and f[0] == f[3] == f[6] == 0
    # rows of different weights in one call, and leading batch dimensions
    w2 = torch.stack([w, w.flip(0)]).expand(3, 20_000, 2, 7)
    draws = sample_categorical(w2, torch.Generator().manual_seed(1), torch.float64)
    assert draws.shape == (3, 20_000, 2)
    assert torch.allclose(freqs(draws[..., 1], 7), w.flip(0) / w.sum(), atol=0.01)


def tail_draws(r: float, dtype, M: int = 50_000, rows: int = 8_000, chunk: int = 400) -> tuple[int, float]:
    """Draws from one head id (weight 1) and M tail ids of weight r: (tail draws, expected)."""
    w = torch.full((chunk, M + 1), r, dtype=torch.float64)
    w[:, 0] = 1.0
    g = torch.Generator().manual_seed(0)
    tail = sum(int((sample_categorical(w, g, dtype) != 0).sum()) for _ in range(rows // chunk))
    return tail, rows * M * r / (1 + M * r)


def test_float64_draws_keep_the_tail_of_a_peaked_distribution():
    """The float64 counterpart of the float32 test below, with the tail at 1e-7 per id: the
    exact tail rate is M 1e-7 / (1 + M 1e-7) ~ 5e-3, 39.8 tail draws expected in 8,000 rows.
    A draw that lost the tail as float32 does would give ~0."""
    tail, exact = tail_draws(1e-7, torch.float64)
    assert abs(tail - exact) < 4 * exact**0.5, (tail, exact)  # within 4 Poisson SDs


def test_float32_race_noise_is_floored_and_quantized():
    """The mechanism behind Zheng et al. 2024: float32 uniforms are multiples of 2^-24, so the
    race noise E never goes below -log(1 - 2^-24) ~ 5.96e-8 and takes only grid values near 0;
    a token needs E_i < w_i / w_winner * E_winner to win, so tokens ~1e-8 below the winner are
    almost never drawn. float64 noise has neither floor nor grid at that scale."""
    n = 1 << 24
    delta = 2.0**-24
    e32 = race_noise((n,), torch.Generator().manual_seed(0), dtype=torch.float32)
    e64 = race_noise((n,), torch.Generator().manual_seed(0), dtype=torch.float64)
    assert float(e32.min()) >= 0.99 * -math.log1p(-delta)
    small32, small64 = e32[e32 < 2e-6].double() / delta, e64[e64 < 2e-6] / delta
    assert len(small32) > 10 and len(small64) > 10
    on_grid = lambda v: float(((v - v.round()).abs() < 0.01).double().mean())
    assert on_grid(small32) == 1.0 and on_grid(small64) < 0.5
    # and a float32 draw is exactly the race with that noise (float64 draws by inverse CDF)
    w = torch.rand(64, 1000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a = sample_categorical(w, torch.Generator().manual_seed(5), torch.float32)
    b = (w.float() / race_noise(w.shape, torch.Generator().manual_seed(5), dtype=torch.float32)).argmax(-1)
    assert torch.equal(a, b)


def test_nucleus_keeps_the_top_mass_as_duo():
    p = torch.tensor([[0.3, 0.6, 0.1], [0.5, 0.3, 0.2]], dtype=torch.float64)
    out = nucleus(p, 0.7)
    assert torch.allclose(out[0], torch.tensor([1 / 3, 2 / 3, 0.0], dtype=torch.float64))
    assert torch.allclose(out[1], torch.tensor([0.625, 0.375, 0.0], dtype=torch.float64))
    assert torch.equal(nucleus(p, 1.0), p)


# ---------------------------------------------------------------- samplers


@pytest.mark.parametrize("cls", [MDLM, DUO])
@pytest.mark.parametrize("nfe", [1, 3, 16])
def test_sampler_with_the_exact_denoiser_matches_the_marginals(cls, nfe):
    d = cls(4)
    x = d.sample(ProductDenoiser(), 4000, 8, nfe, generator=torch.Generator().manual_seed(nfe), batch_size=1500)
    assert x.shape == (4000, 8) and x.dtype == torch.long
    assert int(x.max()) < 3 and int(x.min()) >= 0  # no mask / pad id
    assert torch.allclose(freqs(x)[:3], P, atol=0.012)


def test_mdlm_sampler_keeps_unmasked_tokens_and_unmasks_on_schedule():
    """Unmasked tokens never change; a position unmasked with probability (t - s) / t at each
    step is still masked at time t_i with probability t_i (times linspace(1, 1e-5, NFE + 1))."""
    d = MDLM(4)
    model = ProductDenoiser(record=True)
    nfe = 8
    out = d.sample(model, 256, 32, nfe, generator=torch.Generator().manual_seed(0))
    assert len(model.inputs) == nfe  # no final pass needed here (8192 positions, ~0.08 masks expected)
    states = model.inputs + [out]
    for before, after in itertools.pairwise(states):
        fixed = before != d.special_id
        assert torch.equal(after[fixed], before[fixed])
    times = torch.linspace(1, 1e-5, nfe + 1)
    masked = torch.tensor([float((u == d.special_id).double().mean()) for u in model.inputs])
    assert torch.allclose(masked, times[:nfe], atol=0.025)


def test_duo_posterior_weights_are_bayes_rule():
    N = 5
    d = DUO(N)
    g = torch.Generator().manual_seed(0)
    p = d.p_x0(torch.randn(6, N, generator=g), torch.float64, 1.0, 1.0)  # 0 at the pad, whatever its logit
    assert (p[:, -1] == 0).all() and torch.allclose(p.sum(-1), torch.ones(6, dtype=torch.float64))
    z = torch.tensor([0, 1, 2, 3, 4, 4])
    for a_t, a_s in [(0.2, 0.5), (0.9, 0.95), (0.3, 1.0)]:
        w = d._posterior_weights(p.clone(), z, a_t, a_s)  # overwrites its argument
        w = w / w.sum(-1, keepdim=True)
        for i in range(6):
            want = _posterior(p[i].tolist(), int(z[i]), a_s, a_t, N)
            assert torch.allclose(w[i], torch.tensor(want, dtype=torch.float64), atol=1e-12)
        assert (w[:, -1] == 0).all() if a_s == 1.0 else (w[:, -1] > 0).all()


@pytest.mark.parametrize("cls", [MDLM, DUO])
def test_samples_hold_no_special_id_even_if_the_model_predicts_it(cls):
    """MDLM's SUBS gives the mask no mass; DUO's sampler drops the pad from x_theta."""
    d = cls(4)
    model = ProductDenoiser(special_logit=math.log(0.4) - math.log(0.6) + 0.0)  # 40% of the mass on V-1
    x = d.sample(model, 3000, 8, 4, generator=torch.Generator().manual_seed(0))
    assert int(x.max()) < 3
    assert torch.allclose(freqs(x)[:3], P, atol=0.012)


@pytest.mark.parametrize("cls", [MDLM, DUO])
def test_temperature_sharpens_to_the_tempered_marginals(cls):
    d = cls(4)
    x = d.sample(ProductDenoiser(), 3000, 8, 4, temperature=0.5, generator=torch.Generator().manual_seed(0))
    p_cold = P**2 / (P**2).sum()
    assert torch.allclose(freqs(x)[:3], p_cold, atol=0.012)
    assert entropy(freqs(x)) < H - 0.2


def test_duo_nucleus_and_noise_removal_options():
    d = DUO(4)
    x = d.sample(ProductDenoiser(), 3000, 8, 4, top_p=0.7, generator=torch.Generator().manual_seed(0))
    assert int((x == 2).sum()) == 0  # id 2 (p = 0.1) is outside the 0.7 nucleus
    assert torch.allclose(freqs(x)[:2], torch.tensor([2 / 3, 1 / 3], dtype=torch.float64), atol=0.012)
    # greedy-tail: the last step takes argmax x_theta, the mode for an input-blind denoiser
    g = d.sample(ProductDenoiser(), 50, 8, 4, noise_removal="greedy", generator=torch.Generator().manual_seed(0))
    assert (g == 0).all()


@pytest.mark.parametrize("cls", [MDLM, DUO])
def test_sampler_seed_precision_and_passes(cls):
    d = cls(4)
    model = ProductDenoiser().train()
    info = {}
    a = d.sample(model, 300, 16, 4, generator=torch.Generator().manual_seed(0), batch_size=100, info=info)
    assert model.training  # restored
    b = d.sample(ProductDenoiser(), 300, 16, 4, generator=torch.Generator().manual_seed(0), batch_size=100)
    c = d.sample(ProductDenoiser(), 300, 16, 4, generator=torch.Generator().manual_seed(1), batch_size=100)
    assert torch.equal(a, b) and not torch.equal(a, c)
    f32 = d.sample(ProductDenoiser(), 300, 16, 4, precision="float32", generator=torch.Generator().manual_seed(0))
    assert int(f32.max()) < 3 and not torch.equal(f32, a)
    assert model.calls == sum(info["forward_passes_per_batch"]) and len(info["forward_passes_per_batch"]) == 3
    assert info["forward_passes"] == max(info["forward_passes_per_batch"]) == d.last_forward_passes
    if cls is DUO:  # NFE steps + the final noise-removal pass
        assert info["forward_passes_per_batch"] == [5, 5, 5]
    else:
        assert all(p in (4, 5) for p in info["forward_passes_per_batch"])


def test_mdlm_forward_passes_follow_the_cache_rule():
    """A call happens only when the input changed since the last call (ddpm_cache), the final
    pass only when masks remain after the NFE steps (about 1e-5 of the positions)."""
    d = MDLM(4)
    for n, length, nfe, expected in [(10_000, 100, 1, 2), (1, 1, 1, 1), (256, 16, 4, None), (1, 2, 64, None)]:
        model = ProductDenoiser(record=True)
        x = d.sample(model, n, length, nfe, generator=torch.Generator().manual_seed(0))
        assert int(x.max()) < 3
        assert d.last_forward_passes == model.calls == len(model.inputs) <= nfe + 1
        assert all(not torch.equal(u, v) for u, v in zip(model.inputs, model.inputs[1:]))
        if expected is not None:  # 1e6 positions: ~10 still masked -> final pass; 1 position: none
            assert d.last_forward_passes == expected
        elif n == 1:  # one short sequence, many steps: most steps change nothing and reuse the output
            assert d.last_forward_passes < nfe // 2
        else:  # every step of a large batch unmasks something
            assert d.last_forward_passes >= nfe


@pytest.mark.parametrize("cls", [MDLM, DUO])
def test_sampler_validation_names_the_field(cls):
    d = cls(4)
    m = ProductDenoiser()
    bad = [
        ({"nfe": 0}, "nfe"),
        ({"nfe": 2.5}, "nfe"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"precision": "float16"}, "precision"),
        ({"batch_size": 0}, "batch_size"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"noise_removal": "none"}, "noise_removal"),
        ({"n": 0}, "n"),
    ]
    for kw, field in bad:
        args = {"n": 2, "length": 4, "nfe": 2} | kw
        with pytest.raises(TokenDriftError, match=f"^{field}: "):
            d.sample(m, args.pop("n"), args.pop("length"), args.pop("nfe"), **args)
    assert m.calls == 0


def test_make_diffusion_and_conventions():
    m, d = make_diffusion("mdlm", 5), make_diffusion("duo", 5)
    assert (m.name, m.special_id, d.name, d.special_id) == ("mdlm", 4, "duo", 4)
    assert d.predicted_positions(torch.zeros(2, 3, dtype=torch.long)).all()
    assert "NFE" in m.nfe_rule and "NFE" in d.nfe_rule
    with pytest.raises(TokenDriftError, match="^diffusion: "):
        make_diffusion("sedd", 5)
    with pytest.raises(TokenDriftError, match="^vocab_size: "):
        make_diffusion("mdlm", 2)


def test_float32_draws_lose_the_tail_of_a_peaked_distribution():
    """One head (weight 1) and M = 50,000 tail ids at 1e-8 each: the exact tail rate is
    M 1e-8 / (1 + M 1e-8) ~ 5e-4, i.e. ~4 tail draws in 8,000 rows. float32 race noise has its
    floor at 5.96e-8, so a tail id wins only if the head's noise exceeds ~6 (probability e^-6):
    the expected float32 count is ~0.06, so the draws have lower entropy than the distribution
    (Zheng et al. 2024). Cost: 4e8 race entries."""
    tail, exact = tail_draws(1e-8, torch.float32)
    assert exact > 3.9 and tail <= 1  # P(tail >= 2) ~ 2e-3 under float32; ~0.91 for an exact sampler
