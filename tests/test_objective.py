"""Properties of the TokenDrift objective (paper Appendix C/D) and its pieces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tokendrift.core import objective as O
from tokendrift.core.utils import TokenDriftError

SETTINGS = settings(max_examples=30, deadline=None)
OPTIONS = st.sampled_from(
    [
        dict(normalization="joint"),
        dict(normalization="softmax"),
        dict(normalization="joint", kernel="l2_meannorm"),
        dict(normalization="joint", scale="coord_rms", reduction="sum"),
    ]
)


def unit(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


@SETTINGS
@given(seed=st.integers(0, 10_000), B=st.integers(1, 6), P=st.integers(1, 12), N=st.integers(1, 12), opts=OPTIONS)
def test_swapping_positives_and_negatives_negates_V(seed, B, P, N, opts):
    h, pos, neg = unit(B, 8, seed=seed), unit(P, 8, seed=seed + 1), unit(N, 8, seed=seed + 2)
    V = O.drift_field(h, pos, neg, O.DriftOptions(**opts))
    V_swapped = O.drift_field(h, neg, pos, O.DriftOptions(**opts))
    assert torch.allclose(V, -V_swapped, atol=1e-5)
    assert V.abs().sum() > 0


@SETTINGS
@given(seed=st.integers(0, 10_000), B=st.integers(1, 6), P=st.integers(1, 12), opts=OPTIONS)
def test_identical_references_give_zero_drift_loss_and_gradient(seed, B, P, opts):
    refs = unit(P, 8, seed=seed + 1)
    # through the whole chain: logits -> soft lift -> a linear "encoder" -> pooled features
    logits = torch.randn(B, 5, 7, generator=torch.Generator().manual_seed(seed), requires_grad=True)
    E = torch.randn(7, 4, generator=torch.Generator().manual_seed(seed + 3))
    x_bar = torch.zeros(B, 5, dtype=torch.long)
    e = O.soft_lift(logits.softmax(-1), x_bar, torch.ones(B, 5, dtype=torch.bool), E)
    h = O.pooled_features(e, torch.tanh(e))
    V = O.drift_field(h, refs, refs.clone(), O.DriftOptions(**opts))
    assert torch.equal(V, torch.zeros_like(V))
    loss = O.fixed_point_loss(h, V)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits.grad))


@SETTINGS
@given(seed=st.integers(0, 10_000), B=st.integers(1, 8), alpha=st.floats(0.05, 5.0))
def test_fixed_point_loss_gradient_is_minus_alpha_V_over_B(seed, B, alpha):
    h = unit(B, 6, seed=seed).requires_grad_(True)
    V = torch.randn(B, 6, generator=torch.Generator().manual_seed(seed + 9))
    loss = O.fixed_point_loss(h, V, alpha)
    loss.backward()
    assert torch.allclose(h.grad, -alpha * V / B, atol=1e-6)
    assert float(loss.detach()) == pytest.approx(alpha**2 * float(V.square().sum()) / (2 * B), rel=1e-5)


@SETTINGS
@given(seed=st.integers(0, 10_000), a=st.floats(0, 3), r=st.floats(0, 3))
def test_ratio_scales_attraction_and_repulsion(seed, a, r):
    if a == 0 and r == 0:
        return
    h, pos, neg = unit(3, 8, seed=seed), unit(7, 8, seed=seed + 1), unit(7, 8, seed=seed + 2)
    b_pos, b_neg = O.barycenters(h, pos, neg, 0.05)
    V_tau = a * b_pos - r * b_neg
    s = (V_tau.square().sum(-1).mean() + 1e-8).sqrt()
    V = O.drift_field(h, pos, neg, O.DriftOptions(temperatures=[0.05], ratio=(a, r)))
    assert torch.allclose(V, V_tau / s, atol=1e-5)


def test_joint_normalization_matches_a_brute_force_loop():
    h, pos, neg = unit(3, 5, seed=1), unit(4, 5, seed=2), unit(2, 5, seed=3)
    tau = 0.2
    b_pos, b_neg = O.barycenters(h, pos, neg, tau)
    targets = torch.cat([neg, pos])
    logit = [[-float((h[i] - y).square().sum()) / tau for y in targets] for i in range(3)]
    import math

    row = [[math.exp(v) / sum(math.exp(w) for w in logit[i]) for v in logit[i]] for i in range(3)]
    col = [[math.exp(logit[i][j]) / sum(math.exp(logit[k][j]) for k in range(3)) for j in range(6)] for i in range(3)]
    A = [[math.sqrt(row[i][j] * col[i][j]) for j in range(6)] for i in range(3)]
    for i in range(3):
        s_neg, s_pos = sum(A[i][:2]), sum(A[i][2:])
        want_pos = sum(A[i][2 + j] * s_neg * pos[j] for j in range(4))
        want_neg = sum(A[i][k] * s_pos * neg[k] for k in range(2))
        assert torch.allclose(b_pos[i], want_pos, atol=1e-6)
        assert torch.allclose(b_neg[i], want_neg, atol=1e-6)


def test_self_exclusion_ignores_own_generated_feature():
    h, pos = unit(4, 8, seed=5), unit(6, 8, seed=6)
    others = unit(5, 8, seed=7)
    neg = torch.cat([h, others])  # neg[:B] are the anchors themselves
    V = O.drift_field(h, pos, neg, exclude_self=True)
    # zero weight on the self pair: replacing neg[i] by anything leaves V unchanged when excluded
    moved = neg.clone()
    moved[:4] = unit(4, 8, seed=99)
    # the column softmax couples anchors through all targets, so compare with a negative set
    # where the anchors' own features are absent altogether except for the other anchors
    b_pos, b_neg = O.barycenters(h, pos, neg, 0.05, exclude_self=True)
    logits = torch.cat([-torch.cdist(h, neg).square() / 0.05, -torch.cdist(h, pos).square() / 0.05], 1)
    logits[:, :4] -= torch.eye(4) * O.SELF_MASK / 0.05
    W_neg, _ = O.joint_weights(logits[:, :9], logits[:, 9:], "joint", 0.0)
    assert torch.all(W_neg[:, :4].diagonal() < 1e-30)
    # without exclusion the own feature attracts a large weight (distance 0), with it none
    V_incl = O.drift_field(h, pos, neg, exclude_self=False)
    assert not torch.allclose(V, V_incl, atol=1e-3)
    assert torch.isfinite(O.drift_field(h[:1], pos, h[:1], exclude_self=True)).all()  # all negatives masked


def test_drift_stats_report_unnormalized_norms_per_temperature():
    stats = {}
    h, pos, neg = unit(4, 8, seed=1), unit(6, 8, seed=2), unit(6, 8, seed=3)
    O.drift_field(h, pos, neg, O.DriftOptions(temperatures=(0.02, 0.05, 0.2)), stats=stats)
    assert set(stats) == {"drift_norm/tau=0.02", "drift_norm/tau=0.05", "drift_norm/tau=0.2"}
    b_pos, b_neg = O.barycenters(h, pos, neg, 0.2)
    assert stats["drift_norm/tau=0.2"] == pytest.approx(float((b_pos - b_neg).norm(dim=-1).mean()), rel=1e-5)


def test_normalized_drift_has_unit_rms_per_temperature():
    V = O.drift_field(unit(5, 8, seed=1), unit(9, 8, seed=2), unit(9, 8, seed=3), O.DriftOptions(temperatures=[0.1]))
    assert float(V.square().sum(-1).mean()) == pytest.approx(1.0, rel=1e-4)


def test_soft_lift_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 6, generator=g, requires_grad=True)
    E = torch.randn(6, 3, generator=g)
    x_bar = torch.randint(0, 6, (2, 4), generator=g)
    predicted = torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    p = logits.softmax(-1)
    e = O.soft_lift(p, x_bar, predicted, E)
    assert torch.allclose(e[0, 0], p[0, 0] @ E) and torch.equal(e[0, 1], E[x_bar[0, 1]])
    e.sum().backward()
    grad_unpredicted = logits.grad[~predicted]
    assert torch.equal(grad_unpredicted, torch.zeros_like(grad_unpredicted))
    assert logits.grad[predicted].abs().sum() > 0


def test_hard_lift_is_argmax_forward_and_soft_backward():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, generator=g, requires_grad=True)
    E = torch.randn(5, 4, generator=g)
    x_bar = torch.zeros(2, 3, dtype=torch.long)
    M = torch.ones(2, 3, dtype=torch.bool)
    w = torch.randn(2, 3, 4, generator=g)
    e_hard = O.hard_lift(logits.softmax(-1), x_bar, M, E)
    assert torch.allclose(e_hard, E[logits.argmax(-1)], atol=1e-6)
    (e_hard * w).sum().backward()
    g_hard = logits.grad.clone()
    logits.grad = None
    (O.soft_lift(logits.softmax(-1), x_bar, M, E) * w).sum().backward()
    assert torch.allclose(g_hard, logits.grad, atol=1e-6)


def test_pooled_features_are_unit_vectors_of_size_2d():
    h = O.pooled_features(torch.randn(3, 7, 5), torch.randn(3, 7, 5))
    assert h.shape == (3, 10)
    assert torch.allclose(h.norm(dim=-1), torch.ones(3), atol=1e-6)


def _mirror_setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 4, 6, generator=g).log_softmax(-1).requires_grad_(True)
    E = torch.randn(6, 3, generator=g)
    M = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 1]], dtype=torch.bool)
    e = O.soft_lift(logits.softmax(-1), torch.zeros(2, 4, dtype=torch.long), M, E)
    h = O.pooled_features(e, e.tanh())
    return logits, h, M


def test_mirror_teacher_is_softmax_of_logits_plus_eta_g():
    logits, h, M = _mirror_setup()
    V = torch.randn_like(h)
    eta = 0.7
    l_star = O.mirror_teacher(logits, h, V, eta)
    (g,) = torch.autograd.grad((h * V).sum(), logits, retain_graph=True)
    assert torch.allclose(l_star, logits.detach() + eta * g)
    assert not l_star.requires_grad
    kl = O.mirror_kl_loss(logits, l_star, M)
    p_star, log_p = l_star.softmax(-1), logits.log_softmax(-1)
    want = (p_star * (p_star.log() - log_p)).sum(-1)[M].sum() / 2
    assert torch.allclose(kl, want, atol=1e-6) and float(kl.detach()) > 0
    l2 = O.mirror_l2_loss(logits, l_star, M)
    assert torch.allclose(l2, (l_star - logits).square().sum(-1)[M].sum() / 2, atol=1e-6)


def test_mirror_teacher_vanishes_at_zero_drift():
    logits, h, M = _mirror_setup(1)
    l_star = O.mirror_teacher(logits, h, torch.zeros_like(h))
    assert torch.equal(l_star, logits.detach())
    for loss_fn in (O.mirror_kl_loss, O.mirror_l2_loss):
        loss = loss_fn(logits, l_star, M)
        assert float(loss.detach()) == 0.0
        (grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
        assert torch.allclose(grad, torch.zeros_like(grad), atol=1e-6)  # zero up to float rounding


def test_mirror_losses_stay_finite_with_minus_infinity_logits():
    logits = torch.randn(1, 3, 5).log_softmax(-1)
    logits[..., 4] = float("-inf")  # a SUBS-style masked entry
    logits.requires_grad_(True)
    l_star = logits.detach() + torch.randn(1, 3, 5) * torch.isfinite(logits)
    M = torch.ones(1, 3, dtype=torch.bool)
    for loss_fn in (O.mirror_kl_loss, O.mirror_l2_loss):
        loss = loss_fn(logits, l_star, M)
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_queue_is_fifo_and_round_trips():
    q = O.FeatureQueue(3, 2)
    q.push(torch.tensor([[1.0, 1], [2, 2]]))
    q.push(torch.tensor([[3.0, 3], [4, 4]]))
    assert q.tensor()[:, 0].tolist() == [2, 3, 4] and len(q) == 3
    q.push(torch.arange(10.0).view(5, 2))  # more than its size: keeps the newest three
    assert q.tensor()[:, 0].tolist() == [4, 6, 8]
    x = torch.ones(1, 2, requires_grad=True)
    q.push(x * 5)
    assert not q.tensor().requires_grad
    r = O.FeatureQueue(3, 2)
    r.load_state_dict(q.state_dict())
    assert torch.equal(r.tensor(), q.tensor())
    one = O.FeatureQueue(1, 2)
    one.push(torch.ones(2, 2))
    assert len(one) == 1


def check_objective(**options):
    """Validate an ``objective`` section as a train job does: the schema, then ``DriftOptions``."""
    import json

    O.DriftOptions.of(json.loads(json.dumps(options)))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(temperatures=[]), "temperatures"),
        (dict(temperatures=[0.1, 0.0]), "temperatures"),
        (dict(ratio=(0, 0)), "ratio"),
        (dict(ratio=(1, -1)), "ratio"),
        (dict(alpha=0.0), "alpha"),
        (dict(kernel="cosine"), "kernel"),
        (dict(normalization="sinkhorn"), "normalization"),
        (dict(reduction="max"), "reduction"),
        (dict(scale="none"), "scale"),
    ],
)
def test_bad_options_name_their_field(kwargs, field):
    base = dict(temperatures=[0.05], ratio=(1, 1), alpha=1.0)
    with pytest.raises(TokenDriftError, match=f"objective.{field}"):
        check_objective(**{**base, **kwargs})
    with pytest.raises(TokenDriftError, match="queue_size"):
        O.FeatureQueue(0, 4)


# --------------------------------------------------------------------------- mirror teacher: g w.r.t. the logits


def _teacher_inputs(seed):
    """Random logits (a SUBS-style -inf entry included), an encoder, a predicted-position mask and a drift."""
    g = torch.Generator().manual_seed(seed)
    B, L, vocab, d = 3, 5, 7, 4
    logits = 2 * torch.randn(B, L, vocab, generator=g)
    logits[..., 0] = float("-inf")
    E, W = torch.randn(vocab, d, generator=g), torch.randn(d, d, generator=g)
    x_bar = torch.randint(1, vocab, (B, L), generator=g)
    predicted = torch.rand(B, L, generator=g) < 0.6
    predicted[:, 0] = True
    V = torch.randn(B, 2 * d, generator=g)
    return logits, E, W, x_bar, predicted, V


def _features(p, x_bar, predicted, E, W):
    e = O.soft_lift(p, x_bar, predicted, E)
    return O.pooled_features(e, torch.tanh(e @ W))


def _paper_g(logits, E, W, x_bar, predicted, V):
    """g = grad_l <h(l), sg(V)> with h built from p = softmax(l) (Sec. 3.4), by autograd on l itself."""
    leaf = logits.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((_features(leaf.softmax(-1), x_bar, predicted, E, W) * V).sum(), leaf)
    return g


def _train_path_teacher(logits, E, W, x_bar, predicted, V, eta):
    """The teacher as training calls it: normalized logits log p (the backbone's log_probs), the
    lift fed with their exp (tokendrift.jobs.train.micro_step)."""
    raw = logits.clone().requires_grad_(True)
    log_p = raw.log_softmax(-1)
    h = _features(log_p.exp(), x_bar, predicted, E, W)
    return raw, log_p, O.mirror_teacher(log_p, h, V, eta)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mirror_teacher_steps_along_the_logit_gradient_of_the_paper(seed):
    inputs = _teacher_inputs(seed)
    eta = 0.8
    g = _paper_g(*inputs)
    assert torch.allclose(g.sum(-1), torch.zeros(()), atol=1e-6)  # a softmax gradient sums to 0
    _, log_p, l_star = _train_path_teacher(*inputs, eta)
    ok = torch.isfinite(l_star)
    assert torch.equal(ok, torch.isfinite(log_p))
    step = torch.where(ok, l_star - log_p.detach(), torch.zeros_like(l_star))
    assert torch.allclose(step, eta * g, atol=1e-5), float((step - eta * g).abs().max())
    # teacher given raw logits whose h is built through softmax: the same step (l* = sg(l + eta g))
    leaf = inputs[0].clone().requires_grad_(True)
    h = _features(leaf.softmax(-1), *inputs[3:4], inputs[4], inputs[1], inputs[2])
    l_star_raw = O.mirror_teacher(leaf, h, inputs[5], eta)
    step_raw = torch.where(ok, l_star_raw - inputs[0], torch.zeros_like(l_star_raw))
    assert torch.allclose(step_raw, eta * g, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 3])
def test_mirror_teacher_is_the_closed_form_of_prop_d1(seed):
    """p*_v = p_v exp(eta g_v) / sum_u p_u exp(eta g_u), the maximizer of <g, q> - KL(q || p) / eta (App. D.1)."""
    inputs = _teacher_inputs(seed)
    eta = 1.3
    g = _paper_g(*inputs).double()
    p = inputs[0].double().softmax(-1)
    closed = p * (eta * g).exp()
    closed = closed / closed.sum(-1, keepdim=True)
    _, _, l_star = _train_path_teacher(*inputs, eta)
    p_star = l_star.double().softmax(-1)
    assert torch.allclose(p_star, closed, atol=1e-6)

    def objective(q):  # <g, q> - KL(q || p) / eta over the support of p
        s = p > 0
        kl = torch.where(s, q * (q.clamp_min(1e-300).log() - p.clamp_min(1e-300).log()), torch.zeros_like(q))
        return (g * q).sum(-1) - kl.sum(-1) / eta

    best = objective(p_star)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(20):  # any other distribution on the support scores lower
        q = p_star * (0.3 * torch.randn(p.shape, generator=gen, dtype=torch.float64)).exp()
        q = q / q.sum(-1, keepdim=True)
        assert torch.all(objective(q) <= best + 1e-9)


def test_mirror_losses_use_the_paper_teacher():
    inputs = _teacher_inputs(4)
    logits, predicted, eta = inputs[0], inputs[4], 0.9
    g = _paper_g(*inputs)
    raw, log_p, l_star = _train_path_teacher(*inputs, eta)
    B = logits.shape[0]
    # KL(p* || p): its gradient w.r.t. the logits is (p - p*) on predicted positions, / B
    p = logits.softmax(-1)
    p_star = (logits + eta * g).softmax(-1)
    (grad,) = torch.autograd.grad(O.mirror_kl_loss(log_p, l_star, predicted), raw, retain_graph=True)
    assert torch.allclose(grad, (p - p_star) * predicted[..., None] / B, atol=1e-6)
    # ||l* - l||^2 = eta^2 ||g||^2 on predicted positions, / B; its gradient -2 eta g
    l2 = O.mirror_l2_loss(log_p, l_star, predicted)
    want = (eta * g).square().sum(-1)[predicted].sum() / B
    assert float(l2.detach()) == pytest.approx(float(want), rel=1e-5)
    (grad,) = torch.autograd.grad(l2, raw)
    assert torch.allclose(grad, -2 * eta * g * predicted[..., None] / B, atol=1e-5)


# --------------------------------------------------------------------------- ratio readings (Table 6)

RATIOS = st.tuples(st.floats(0, 3), st.floats(0, 3)).filter(lambda ar: ar[0] + ar[1] > 0)


def _refs(seed, B=4, P=9, N=7, m=8):
    h = unit(B, m, seed=seed)
    return h, unit(P, m, seed=seed + 1), torch.cat([h, unit(N, m, seed=seed + 2)])


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    tau=st.sampled_from([0.02, 0.05, 0.2]),
    ar=RATIOS,
    kernel=st.sampled_from(["sq_l2", "l2_meannorm"]),
)
def test_displacement_reading_differs_by_a_minus_r_times_S_h(seed, tau, ar, kernel):
    """V_disp = a sum W+ (u - h) - r sum W- (v - h) = V_vec - (a - r) S h with joint weights (S+ = S- = S)."""
    h, pos, neg = _refs(seed)
    a, r = ar
    kw = dict(kernel=kernel, normalization="joint")
    V_vec = O.drift_at_temperature(h, pos, neg, tau, ar, True, ratio_reading="vector", **kw)
    V_disp = O.drift_at_temperature(h, pos, neg, tau, ar, True, ratio_reading="displacement", **kw)
    W_pos, W_neg = O.reference_weights(h, pos, neg, tau, True, **kw)
    S = W_pos.sum(1, keepdim=True)
    assert torch.allclose(S, W_neg.sum(1, keepdim=True), rtol=1e-4, atol=1e-7)
    assert torch.allclose(V_disp, V_vec - (a - r) * S * h, atol=1e-5)
    # brute force: sum of weighted displacements
    want = a * (W_pos[..., None] * (pos[None] - h[:, None])).sum(1) - r * (
        W_neg[..., None] * (neg[None] - h[:, None])
    ).sum(1)
    assert torch.allclose(V_disp, want, atol=1e-5)


@SETTINGS
@given(seed=st.integers(0, 10_000), opts=OPTIONS)
def test_readings_agree_at_one_to_one(seed, opts):
    if opts.get("normalization") == "softmax":  # S+ != S-: the readings differ there even at 1:1
        return
    h, pos, neg = _refs(seed)
    V_vec = O.drift_field(h, pos, neg, O.DriftOptions(ratio_reading="vector", **opts), exclude_self=True)
    V_disp = O.drift_field(h, pos, neg, O.DriftOptions(ratio_reading="displacement", **opts), exclude_self=True)
    assert torch.allclose(V_vec, V_disp, atol=1e-4)


@SETTINGS
@given(seed=st.integers(0, 10_000), ar=RATIOS, opts=OPTIONS)
def test_displacement_reading_is_anti_symmetric(seed, ar, opts):
    """Swapping the references and the two scales negates V: a:r on (P, N) is -(r:a on (N, P))."""
    h, pos, neg = unit(3, 8, seed=seed), unit(7, 8, seed=seed + 1), unit(6, 8, seed=seed + 2)
    a, r = ar
    V = O.drift_field(h, pos, neg, O.DriftOptions(ratio=(a, r), ratio_reading="displacement", **opts))
    V_swapped = O.drift_field(h, neg, pos, O.DriftOptions(ratio=(r, a), ratio_reading="displacement", **opts))
    assert torch.allclose(V, -V_swapped, atol=1e-5)


def test_vector_reading_inflates_the_scale_when_unbalanced():
    """At 2:1 the vector reading's extra (a - r) S h raises s^tau, shrinking the rest of V
    (features clustered around one direction, as pooled encoder features are)."""
    g = torch.Generator().manual_seed(0)
    c = torch.randn(16, generator=g)
    cluster = lambda n: F.normalize(c + 0.15 * torch.randn(n, 16, generator=g), dim=-1)
    h = cluster(8)
    pos, neg = cluster(40), torch.cat([h, cluster(32)])
    V_vec = O.drift_at_temperature(h, pos, neg, 0.05, (2, 1), True, ratio_reading="vector")
    V_disp = O.drift_at_temperature(h, pos, neg, 0.05, (2, 1), True, ratio_reading="displacement")
    s_vec, s_disp = O.temperature_scale(V_vec), O.temperature_scale(V_disp)
    assert s_vec > 2 * s_disp
    # the component orthogonal to h (what survives normalization) is the same before scaling
    tangent = lambda V: V - (V * h).sum(-1, keepdim=True) * h
    assert torch.allclose(tangent(V_vec), tangent(V_disp), atol=1e-5)
    assert float(tangent(V_vec / s_vec).norm()) < 0.5 * float(tangent(V_disp / s_disp).norm())


def test_bad_ratio_reading_floor_and_preset_name_their_field():
    base = dict(temperatures=[0.05], ratio=(1, 1), alpha=1.0)
    for kwargs, field in [
        (dict(ratio_reading="both"), "ratio_reading"),
        (dict(floor=-1.0), "floor"),
        (dict(preset="nope"), "preset"),
    ]:
        with pytest.raises(TokenDriftError, match=f"objective.{field}"):
            check_objective(**{**base, **kwargs})
