"""The TokenDrift objective, one function per equation of the paper's Section 3.

Names follow the paper: soft lift (Sec. 3.1), drift field (Sec. 3.2), fixed-point loss
(Sec. 3.3), mirror teacher (Sec. 3.4). The training step that composes them is
``tokendrift.jobs.train.micro_step``. Every choice the paper leaves open, with the reference code's
choice beside ours, is listed in docs/choices.md; the options are documented once, in
tokendrift/schemas/train.schema.yaml (``objective``). Defaults marked *:

* ``kernel``: ``"sq_l2"``* affinity -||h - y||^2 / tau (paper, Sec. 3.2); ``"l2_meannorm"``
  -||h - y|| / (mean distance) / tau (lambertae/drifting ``drift_loss.py::drift_loss``).
* ``normalization``: ``"joint"``* (drifting code): for each temperature, logits over the
  targets [neg, pos] of every anchor; A = sqrt(softmax over targets (row) x softmax over
  anchors (column)), then cross-multiplied weights W+ = A+ * rowsum(A-), W- = A- * rowsum(A+);
  ``"softmax"``: one softmax over [neg, pos] per anchor, split into W- and W+.
* ``reduction`` over temperatures: ``"mean"``* (paper) or ``"sum"`` (drifting code).
* ``scale`` per temperature: ``"vector_rms"``* s = sqrt(mean_i ||V_i||^2 + eps) (paper);
  ``"coord_rms"`` sqrt(mean_{i,c} V_ic^2 + eps) (drifting code; = vector_rms / sqrt(m)).
* ``ratio_reading`` of V = a b+ - r b- (Table 6): ``"vector"``* scales the barycenters, as
  the paper writes it; ``"displacement"`` scales the displacements,
  a sum_j W+_ij (u_j - h_i) - r sum_k W-_ik (v_k - h_i) (the drifting code's force). With joint
  weights sum_j W+_ij = sum_k W-_ik = S_i, so the two differ by (a - r) S_i h_i: nothing at 1:1,
  a component along h_i otherwise (no gradient once h is normalized, but it inflates s^tau).
* ``floor`` on A: default 0 (no floor; V carries no gradient, so sqrt(0) is harmless).
  Measured with B = 8 anchors, 1032 positives and 1032 negatives, random unit vectors in 1536
  dimensions, tau = 0.05 (``python -m tokendrift.core.objective``): a floor of 1e-3 adds 0.3% of
  the weight mass, 1e-6 adds < 0.1%. The column softmax over only B anchors keeps A near
  sqrt(1 / (2064 B)) ~ 8e-3, above the floor; with larger gathered batches (B = 64: ~3e-3)
  the floor's share grows, which is why it is off by default. See ``_floor_share``.
* ``preset: drifting_official`` replaces all of the above by the drifting code's arithmetic,
  to float precision (``PRESETS``; ``drift_field``; tests/test_drifting_official.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import config as configlib
from .utils import TokenDriftError

SELF_MASK = 1e6  # distance added to masked (self) pairs
# lambertae/drifting drift_loss.py::drift_loss, read as our options. Beyond them the preset also
# takes that code's arithmetic (see ``drift_field``): distances sqrt(max(d^2, 1e-8)), the mean
# distance floored at 1e-3, a self mask of 100 mean distances whose pair keeps its floored
# weight, and the per-temperature eps applied as max(., 1e-8) in its rescaled coordinates.
PRESETS = {
    "drifting_official": dict(
        kernel="l2_meannorm",
        normalization="joint",
        reduction="sum",
        scale="coord_rms",
        floor=1e-3,
        ratio_reading="displacement",
    ),
}
OFFICIAL_SELF_MASK = 100.0


# The objective section's defaults, from the one place that documents them
OPTIONS = configlib.defaults("train")["objective"]  # tokendrift/schemas/train.schema.yaml


@dataclass(frozen=True)
class DriftOptions:
    """The ``objective`` section of a train config (the loss, its weights, the lift, the queues
    and the drift field's options of Sec. 3.2), its defaults the schema's
    (tokendrift/schemas/train.schema.yaml documents each option and checks its values). The
    preset (``PRESETS``) is applied here and nowhere else: it sets the options it names,
    whatever was given (``of`` refuses a config that gives one of them another value)."""

    temperatures: tuple[float, ...] = tuple(OPTIONS["temperatures"])  # any sequence, stored as a tuple
    ratio: tuple[float, float] = tuple(OPTIONS["ratio"])
    kernel: str = OPTIONS["kernel"]
    normalization: str = OPTIONS["normalization"]
    reduction: str = OPTIONS["reduction"]
    scale: str = OPTIONS["scale"]
    floor: float = OPTIONS["floor"]
    ratio_reading: str = OPTIONS["ratio_reading"]
    preset: str | None = OPTIONS["preset"]
    loss: str = OPTIONS["loss"]
    base_loss: bool = OPTIONS["base_loss"]
    drift_weight: float = OPTIONS["drift_weight"]
    base_weight: float = OPTIONS["base_weight"]
    lift: str = OPTIONS["lift"]
    queue_size: int = OPTIONS["queue_size"]
    alpha: float = OPTIONS["alpha"]
    eta: float = OPTIONS["eta"]

    def __post_init__(self):
        resolved = {
            "temperatures": tuple(self.temperatures),
            "ratio": tuple(self.ratio),
            **(PRESETS[self.preset] if self.preset is not None else {}),
        }
        for key, value in resolved.items():
            object.__setattr__(self, key, value)  # frozen: set here, once

    @classmethod
    def of(cls, given: dict | None) -> DriftOptions:
        """The options of an ``objective`` section as a config gives it: checked by the schema,
        absent options at its defaults; an option the preset sets, given with another value,
        is refused."""
        given = given or {}
        section = configlib.validate("train", {"objective": given})["objective"]
        for key, value in PRESETS.get(section["preset"], {}).items():
            if key in given and given[key] != value:
                raise TokenDriftError(
                    f"objective.{key}: {given[key]!r} conflicts with objective.preset {section['preset']!r}, "
                    f"which sets {value!r}; drop one of the two"
                )
        return cls(**section)

    def section(self) -> dict:
        """The options as a config section, in the schema's order (the recorded config: what ran)."""
        return {k: list(v) if isinstance(v, tuple) else v for k in OPTIONS for v in [getattr(self, k)]}

    @property
    def official(self) -> bool:
        """Whether the drifting code's arithmetic is used (``preset: drifting_official``)."""
        return self.preset == "drifting_official"


# --------------------------------------------------------------------------- Sec. 3.1


def soft_lift(probs: torch.Tensor, x_bar: torch.Tensor, predicted: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
    """Soft-token lift (Sec. 3.1): e_t = p_t E for t in M, e_t = E[x_bar_t] otherwise."""
    soft = probs.to(E.dtype) @ E
    return torch.where(predicted.unsqueeze(-1), soft, E[x_bar])


def hard_lift(probs: torch.Tensor, x_bar: torch.Tensor, predicted: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
    """Hard straight-through lift (Sec. 4.3, Table 3): y^ST = onehot(argmax p) - sg(p) + p, e = y^ST E.

    Value E[argmax p]; gradient that of p E. Computed as E[argmax] + (p - sg(p)) E.
    """
    p = probs.to(E.dtype)
    hard = E[p.argmax(-1)] + (p - p.detach()) @ E
    return torch.where(predicted.unsqueeze(-1), hard, E[x_bar])


def pooled_features(h_penult: torch.Tensor, h_final: torch.Tensor) -> torch.Tensor:
    """h = normalize([mean_t H^(L-1), mean_t H^(L)]) in R^{2d} (Appendix F, "Feature encoder")."""
    return F.normalize(torch.cat([h_penult.mean(1), h_final.mean(1)], dim=-1), dim=-1)


# --------------------------------------------------------------------------- Sec. 3.2


def _clipped_cdist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sqrt(max(|x|^2 + |y|^2 - 2 x.y, 1e-8)) (lambertae/drifting ``drift_loss.py::cdist``)."""
    sq = x.square().sum(-1)[:, None] + y.square().sum(-1)[None, :] - 2 * x @ y.T
    return sq.clamp_min(1e-8).sqrt()


def distances(h: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, kernel: str, official: bool = False):
    """||h_i - y_j|| to every positive and negative (shared by all temperatures), and for
    ``l2_meannorm`` their mean distance (over all pairs, the masked self pairs included).
    ``official``: the drifting code's distances and its 1e-3 floor on the mean."""
    if official:
        d_pos, d_neg = _clipped_cdist(h, pos), _clipped_cdist(h, neg)
        return d_pos, d_neg, torch.cat([d_neg, d_pos], 1).mean().clamp_min(1e-3)
    d_pos, d_neg = torch.cdist(h, pos), torch.cdist(h, neg)
    mean_dist = None
    if kernel == "l2_meannorm":
        mean_dist = torch.cat([d_pos, d_neg], 1).mean().clamp_min(1e-12)
    return d_pos, d_neg, mean_dist


def affinities(dist: torch.Tensor, tau: float, kernel: str, mean_dist: torch.Tensor | None) -> torch.Tensor:
    """s_ij = -||h_i - y_j||^2 / tau (Sec. 3.2); or -||h_i - y_j|| / mean distance / tau."""
    if kernel == "sq_l2":
        return -dist.square() / tau
    return -dist / mean_dist / tau


def joint_weights(logits_neg: torch.Tensor, logits_pos: torch.Tensor, normalization: str, floor: float):
    """W- [B,N] and W+ [B,P] from the affinities ("jointly normalize", Sec. 3.2)."""
    logits = torch.cat([logits_neg, logits_pos], dim=1)
    N = logits_neg.shape[1]
    if normalization == "softmax":
        W = logits.softmax(dim=1)
        return W[:, :N], W[:, N:]
    A = (logits.softmax(dim=1) * logits.softmax(dim=0)).sqrt()
    if floor > 0:
        A = A.clamp_min(floor)
    A_neg, A_pos = A[:, :N], A[:, N:]
    W_pos = A_pos * A_neg.sum(1, keepdim=True)
    W_neg = A_neg * A_pos.sum(1, keepdim=True)
    return W_neg, W_pos


def reference_weights(
    h,
    pos,
    neg,
    tau,
    exclude_self=False,
    *,
    kernel="sq_l2",
    normalization="joint",
    floor=0.0,
    dists=None,
    official=False,
):
    """W+ [B,P] and W- [B,N] at one temperature (Sec. 3.2).

    ``dists``: the output of ``distances(h, pos, neg, kernel)``, when already computed. With
    ``exclude_self`` ``neg[:B]`` are the anchors: the self pair is masked (its affinity pushed
    down by a large distance) and then carries exactly no weight, or, ``official``, keeps the
    floored weight the drifting code gives it."""
    d_pos, d_neg, mean_dist = dists if dists is not None else distances(h, pos, neg, kernel, official)
    s_pos = affinities(d_pos, tau, kernel, mean_dist)
    s_neg = affinities(d_neg, tau, kernel, mean_dist)
    if exclude_self:
        B = h.shape[0]
        eye = torch.zeros_like(s_neg)
        eye[:, :B] = torch.eye(B, dtype=h.dtype, device=h.device)
        s_neg = s_neg - eye * ((OFFICIAL_SELF_MASK if official else SELF_MASK) / tau)
    W_neg, W_pos = joint_weights(s_neg, s_pos, normalization, floor)
    if exclude_self and not official:  # the masked pair carries exactly no weight
        W_neg = W_neg * (1 - eye)
    return W_pos, W_neg


def barycenters(h, pos, neg, tau, exclude_self=False, *, kernel="sq_l2", normalization="joint", floor=0.0, dists=None):
    """b+_i = sum_j W+_ij u_j and b-_i = sum_k W-_ik v_k at one temperature (Sec. 3.2)."""
    W_pos, W_neg = reference_weights(
        h, pos, neg, tau, exclude_self, kernel=kernel, normalization=normalization, floor=floor, dists=dists
    )
    return W_pos @ pos, W_neg @ neg


def drift_at_temperature(
    h,
    pos,
    neg,
    tau,
    ratio=(1.0, 1.0),
    exclude_self=False,
    *,
    ratio_reading="vector",
    kernel="sq_l2",
    normalization="joint",
    floor=0.0,
    dists=None,
    official=False,
):
    """V^tau_i = a b+_i - r b-_i (Sec. 3.2 with Table 6's ratio; ``ratio_reading="vector"``), or
    V^tau_i = a sum_j W+_ij (u_j - h_i) - r sum_k W-_ik (v_k - h_i)   (``"displacement"``)
            = a b+_i - r b-_i - (a S+_i - r S-_i) h_i,   S+-_i = sum W+-_i.

    The two readings agree when a S+ = r S-: at 1:1 with joint weights (S+ = S-). The
    displacement form is lambertae/drifting ``drift_loss.py::drift_loss``'s force: it subtracts
    the coefficients' sum times the anchor."""
    a, r = float(ratio[0]), float(ratio[1])
    W_pos, W_neg = reference_weights(
        h,
        pos,
        neg,
        tau,
        exclude_self,
        kernel=kernel,
        normalization=normalization,
        floor=floor,
        dists=dists,
        official=official,
    )
    V_tau = a * (W_pos @ pos) - r * (W_neg @ neg)
    if ratio_reading == "displacement":
        V_tau = V_tau - (a * W_pos.sum(1, keepdim=True) - r * W_neg.sum(1, keepdim=True)) * h
    return V_tau


def temperature_scale(
    V_tau: torch.Tensor, scale: str = "vector_rms", eps: float = 1e-8, coord_unit: torch.Tensor | None = None
) -> torch.Tensor:
    """s^tau = sqrt(mean_i ||V^tau_i||^2 + eps) (Sec. 3.2, "Multi-temperature drift");
    ``coord_rms``: sqrt(mean_{i,c} (V^tau_ic)^2 + eps). ``coord_unit`` (the drifting code's
    coordinate unit c): sqrt(max(mean_{i,c} (V^tau_ic)^2, eps c^2)), its clip in units of c."""
    ms = V_tau.square().sum(-1).mean() if scale == "vector_rms" else V_tau.square().mean()
    if coord_unit is not None:
        return torch.maximum(ms, eps * coord_unit.square()).sqrt()
    return (ms + eps).sqrt()


def drift_field(
    h: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    opts: DriftOptions = DriftOptions(),
    exclude_self: bool = False,
    *,
    eps: float = 1e-8,
    stats: dict | None = None,
) -> torch.Tensor:
    """V_i = (1/|T|) sum_tau V^tau_i / s^tau (Sec. 3.2, multi-temperature drift).

    ``h`` [B, m] anchors; ``pos`` [P, m] real references; ``neg`` [N, m] generated references,
    where with ``exclude_self`` ``neg[:B]`` are the anchors' own features and anchor i ignores
    ``neg[i]``. Everything here is stop-gradient: the result is detached. Float32 unless the
    inputs are float64. ``opts.preset`` (``PRESETS``) takes the drifting code's arithmetic: with
    anchors ``gen`` [1, B, m], ``fixed_neg`` = ``neg[B:]`` and ``fixed_pos`` = ``pos``, the result
    equals the sum of the normalized per-temperature forces of lambertae/drifting
    ``drift_loss.py::drift_loss`` (``force_across_R``; the same in any coordinate unit).
    """
    official = opts.official
    dtype = torch.float64 if h.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        h, pos, neg = h.detach().to(dtype), pos.detach().to(dtype), neg.detach().to(dtype)
        total = torch.zeros_like(h)
        dists = distances(h, pos, neg, opts.kernel, official)
        # the drifting code's coordinate unit: mean distance / sqrt(m), floored at 1e-3
        unit = (dists[2] / math.sqrt(h.shape[1])).clamp_min(1e-3) if official else None
        for tau in opts.temperatures:
            V_tau = drift_at_temperature(
                h,
                pos,
                neg,
                tau,
                opts.ratio,
                exclude_self,
                ratio_reading=opts.ratio_reading,
                kernel=opts.kernel,
                normalization=opts.normalization,
                floor=opts.floor,
                dists=dists,
                official=official,
            )
            if stats is not None:
                stats[f"drift_norm/tau={tau:g}"] = V_tau.norm(dim=-1).mean()  # a tensor: no host sync
            total += V_tau / temperature_scale(V_tau, opts.scale, eps, unit)
        return total / len(opts.temperatures) if opts.reduction == "mean" else total


# --------------------------------------------------------------------------- Sec. 3.3


def fixed_point_loss(h: torch.Tensor, V: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """L_drift = 1/(2B) sum_i ||h_i - h*_i||^2 with h* = sg(h + alpha V) (Sec. 3.3); grad_h = -alpha V / B."""
    target = (h + alpha * V).detach()
    return 0.5 * (h - target).square().sum(-1).mean()


# --------------------------------------------------------------------------- Sec. 3.4


def mirror_teacher(logits: torch.Tensor, h: torch.Tensor, V: torch.Tensor, eta: float = 1.0) -> torch.Tensor:
    """l* = sg(l + eta g), g = grad_l <h(l), sg(V)> with p = softmax(l) (Sec. 3.4); p* = softmax(l*) (Prop. D.1).

    ``h`` must have been computed from ``logits`` with its graph kept: through softmax(l), or,
    as training does, through exp(l) of normalized logits l = log p (the backbone's
    ``log_probs``; softmax(log p) = p, so log p is a valid l). Autograd through exp gives
    g' = p * a (a = grad_p <h, V>), where the softmax Jacobian gives g = p * (a - <p, a>) (App. D):
    g = g' - p sum_v g'_v turns the one into the other and leaves a gradient taken through
    softmax unchanged (its entries already sum to 0).
    """
    (g,) = torch.autograd.grad((h * V.detach()).sum(), logits, retain_graph=True)
    g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
    p = logits.detach().softmax(-1)
    g = g - p * g.sum(-1, keepdim=True)
    return (logits + eta * g).detach()


def _finite_pair(logits: torch.Tensor, l_star: torch.Tensor):
    """Entries where both are -inf (MDLM's SUBS masks) contribute nothing; keep them finite."""
    ok = torch.isfinite(logits) & torch.isfinite(l_star)
    return ok, torch.where(ok, logits, torch.zeros_like(logits)), torch.where(ok, l_star, torch.zeros_like(l_star))


def mirror_kl_loss(logits: torch.Tensor, l_star: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """L_mirror-KL = 1/B sum_i sum_{t in M_i} KL(p*_t || p_t) (Sec. 3.4)."""
    log_p = torch.log_softmax(logits, -1)
    log_q = torch.log_softmax(l_star, -1)
    ok, log_p, log_q = _finite_pair(log_p, log_q)
    kl = torch.where(ok, log_q.exp() * (log_q - log_p), torch.zeros_like(log_p)).sum(-1)
    return (kl * predicted).sum() / logits.shape[0]


def mirror_l2_loss(logits: torch.Tensor, l_star: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """L_mirror-MSE = 1/B sum_i sum_{t in M_i} ||l*_t - l_t||^2 (Sec. 3.4)."""
    ok, l, ls = _finite_pair(logits, l_star)
    sq = torch.where(ok, (ls - l).square(), torch.zeros_like(l)).sum(-1)
    return (sq * predicted).sum() / logits.shape[0]


# --------------------------------------------------------------------------- queues (Alg. 1, line 11)


class FeatureQueue:
    """FIFO of detached pooled features (Alg. 1, line 11): push evicts the oldest entries."""

    def __init__(self, size: int, dim: int, device=None, dtype=torch.float32):
        if int(size) < 1:
            raise TokenDriftError(f"objective.queue_size: must be >= 1, got {size}")
        self.size, self.dim = int(size), dim
        self.buffer = torch.empty(0, dim, device=device, dtype=dtype)

    def push(self, x: torch.Tensor) -> None:
        x = x.detach().to(self.buffer.dtype).to(self.buffer.device)
        self.buffer = torch.cat([self.buffer, x])[-self.size :].clone()

    def tensor(self) -> torch.Tensor:
        return self.buffer

    def __len__(self) -> int:
        return self.buffer.shape[0]

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.clone(), "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        if int(state["size"]) != self.size or state["buffer"].shape[-1] != self.dim:
            raise TokenDriftError(
                f"queue state of size {state['size']} x {state['buffer'].shape[-1]} does not fit "
                f"a queue of {self.size} x {self.dim}"
            )
        self.buffer = state["buffer"].to(self.buffer.device, self.buffer.dtype).clone()


def _floor_share(B=8, n=1032, m=1536, tau=0.05, floors=(1e-3, 1e-6), seed=0) -> dict:
    """Share of the joint weight mass that comes from a floor on A (the measurement above)."""
    g = torch.Generator().manual_seed(seed)
    h, pos, neg = (F.normalize(torch.randn(k, m, generator=g), dim=-1) for k in (B, n, n))
    out = {}
    for floor in floors:
        logits = torch.cat([-torch.cdist(h, neg).square() / tau, -torch.cdist(h, pos).square() / tau], 1)
        A = (logits.softmax(1) * logits.softmax(0)).sqrt()
        out[floor] = float((A.clamp_min(floor) - A).sum() / A.clamp_min(floor).sum())
    return out


if __name__ == "__main__":
    print({f"floor={k:g}": f"{v:.3f} of the mass" for k, v in _floor_share().items()})
