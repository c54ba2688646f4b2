"""The TokenDrift objective, one function per equation of the paper's Section 3.

Names follow the paper: soft lift (Sec. 3.1), drift field (Sec. 3.2), fixed-point loss
(Sec. 3.3), mirror teacher (Sec. 3.4). The training step that composes them is
``tokendrift.train.micro_step``.

Options of the drift field where the paper and the public drifting code (lambertae/drifting,
drift_loss.py) differ or the paper is silent (DESIGN.md section 1); defaults marked *:

* ``kernel``: ``"sq_l2"``* affinity -||h - y||^2 / tau (paper, Sec. 3.2); ``"l2_meannorm"``
  -||h - y|| / (mean distance) / tau (drifting code).
* ``normalization``: ``"joint"``* (drifting code): for each temperature, logits over the
  targets [neg, pos] of every anchor; A = sqrt(softmax over targets (row) x softmax over
  anchors (column)), then cross-multiplied weights W+ = A+ * rowsum(A-), W- = A- * rowsum(A+);
  ``"softmax"``: one softmax over [neg, pos] per anchor, split into W- and W+.
* ``reduction`` over temperatures: ``"mean"``* (paper) or ``"sum"`` (drifting code).
* ``scale`` per temperature: ``"vector_rms"``* s = sqrt(mean_i ||V_i||^2 + eps) (paper);
  ``"coord_rms"`` sqrt(mean_{i,c} V_ic^2 + eps) (drifting code; = vector_rms / sqrt(m)).
* ``floor`` on A: default 0 (no floor; V carries no gradient, so sqrt(0) is harmless).
  Measured with B = 8 anchors, 1032 positives and 1032 negatives, random unit vectors in 1536
  dimensions, tau = 0.05 (``python -m tokendrift.objective``): a floor of 1e-3 adds 0.3% of
  the weight mass, 1e-6 adds < 0.1%. The column softmax over only B anchors keeps A near
  sqrt(1 / (2064 B)) ~ 8e-3, above the floor; with larger gathered batches (B = 64: ~3e-3)
  the floor's share grows, which is why it is off by default. See ``_floor_share``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .utils import TokenDriftError

KERNELS = ("sq_l2", "l2_meannorm")
NORMALIZATIONS = ("joint", "softmax")
REDUCTIONS = ("mean", "sum")
SCALES = ("vector_rms", "coord_rms")
SELF_MASK = 1e6  # distance added to masked (self) pairs, as the drifting code does


def check_drift_options(*, temperatures: Sequence[float], ratio: Sequence[float], alpha: float,
                        kernel: str = "sq_l2", normalization: str = "joint", reduction: str = "mean",
                        scale: str = "vector_rms") -> None:
    """Refuse option values the objective cannot use, naming the field."""
    temps = list(temperatures)
    if not temps:
        raise TokenDriftError("objective.temperatures: must not be empty")
    if any(not (t > 0 and math.isfinite(t)) for t in temps):
        raise TokenDriftError(f"objective.temperatures: every temperature must be positive, got {temps}")
    if len(ratio) != 2 or any(r < 0 for r in ratio) or (ratio[0] == 0 and ratio[1] == 0):
        raise TokenDriftError(f"objective.ratio: expected two non-negative scales, not both 0, got {list(ratio)}")
    if not alpha > 0:
        raise TokenDriftError(f"objective.alpha: must be > 0, got {alpha}")
    for name, value, allowed in [("kernel", kernel, KERNELS), ("normalization", normalization, NORMALIZATIONS),
                                 ("reduction", reduction, REDUCTIONS), ("scale", scale, SCALES)]:
        if value not in allowed:
            raise TokenDriftError(f"objective.{name}: {value!r} is not one of {list(allowed)}")


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


def distances(h: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, kernel: str):
    """||h_i - y_j|| to every positive and negative (shared by all temperatures), and for
    ``l2_meannorm`` their mean distance."""
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


def barycenters(h, pos, neg, tau, exclude_self=False, *, kernel="sq_l2", normalization="joint", floor=0.0,
                dists=None):
    """b+_i = sum_j W+_ij u_j and b-_i = sum_k W-_ik v_k at one temperature (Sec. 3.2).

    ``dists``: the output of ``distances(h, pos, neg, kernel)``, when already computed."""
    d_pos, d_neg, mean_dist = dists if dists is not None else distances(h, pos, neg, kernel)
    s_pos = affinities(d_pos, tau, kernel, mean_dist)
    s_neg = affinities(d_neg, tau, kernel, mean_dist)
    if exclude_self:
        B = h.shape[0]
        eye = torch.zeros_like(s_neg)
        eye[:, :B] = torch.eye(B, dtype=h.dtype, device=h.device)
        s_neg = s_neg - eye * (SELF_MASK / tau)
    W_neg, W_pos = joint_weights(s_neg, s_pos, normalization, floor)
    if exclude_self:  # the masked pair carries exactly no weight
        W_neg = W_neg * (1 - eye)
    return W_pos @ pos, W_neg @ neg


def drift_field(h: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                temperatures: Sequence[float] = (0.02, 0.05, 0.2), ratio: Sequence[float] = (1.0, 1.0),
                exclude_self: bool = False, *, kernel: str = "sq_l2", normalization: str = "joint",
                reduction: str = "mean", scale: str = "vector_rms", floor: float = 0.0, eps: float = 1e-8,
                stats: dict | None = None) -> torch.Tensor:
    """V_i = (1/|T|) sum_tau V^tau_i / s^tau, V^tau_i = a b+_i - r b-_i (Sec. 3.2, multi-temperature drift).

    ``h`` [B, m] anchors; ``pos`` [P, m] real references; ``neg`` [N, m] generated references,
    where with ``exclude_self`` ``neg[:B]`` are the anchors' own features and anchor i ignores
    ``neg[i]``. Everything here is stop-gradient: the result is detached.
    """
    a, r = float(ratio[0]), float(ratio[1])
    with torch.no_grad():
        h, pos, neg = h.detach().float(), pos.detach().float(), neg.detach().float()
        total = torch.zeros_like(h)
        dists = distances(h, pos, neg, kernel)
        for tau in temperatures:
            b_pos, b_neg = barycenters(h, pos, neg, tau, exclude_self, kernel=kernel,
                                       normalization=normalization, floor=floor, dists=dists)
            V_tau = a * b_pos - r * b_neg
            if stats is not None:
                stats[f"drift_norm/tau={tau:g}"] = float(V_tau.norm(dim=-1).mean())
            if scale == "vector_rms":
                s = (V_tau.square().sum(-1).mean() + eps).sqrt()
            else:
                s = (V_tau.square().mean() + eps).sqrt()
            total += V_tau / s
        return total / len(temperatures) if reduction == "mean" else total


# --------------------------------------------------------------------------- Sec. 3.3


def fixed_point_loss(h: torch.Tensor, V: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """L_drift = 1/(2B) sum_i ||h_i - h*_i||^2 with h* = sg(h + alpha V) (Sec. 3.3); grad_h = -alpha V / B."""
    target = (h + alpha * V).detach()
    return 0.5 * (h - target).square().sum(-1).mean()


# --------------------------------------------------------------------------- Sec. 3.4


def mirror_teacher(logits: torch.Tensor, h: torch.Tensor, V: torch.Tensor, eta: float = 1.0) -> torch.Tensor:
    """l* = sg(l + eta g), g = grad_l <h(l), sg(V)> (Sec. 3.4); p* = softmax(l*) (Prop. D.1).

    ``h`` must have been computed from ``logits`` with its graph kept.
    """
    (g,) = torch.autograd.grad((h * V.detach()).sum(), logits, retain_graph=True)
    g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
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
        self.buffer = torch.cat([self.buffer, x])[-self.size:].clone()

    def tensor(self) -> torch.Tensor:
        return self.buffer

    def __len__(self) -> int:
        return self.buffer.shape[0]

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.clone(), "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        if int(state["size"]) != self.size or state["buffer"].shape[-1] != self.dim:
            raise TokenDriftError(f"queue state of size {state['size']} x {state['buffer'].shape[-1]} does not fit "
                                  f"a queue of {self.size} x {self.dim}")
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
