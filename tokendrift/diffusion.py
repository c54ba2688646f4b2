"""The two backbone processes: MDLM (masked) and DUO (uniform-state), DESIGN.md section 3.

They share time sampling, the NELBO estimate and the sampler loop; they differ only in
corruption, the parameterization of log p_theta(x0 | x_t), the base loss and one sampler step.
The model vocabulary V holds the data ids 0..V-2 and one special id V-1 (MDLM: mask; DUO: pad,
never a data token). Both use the log-linear schedule alpha_t = 1 - (1 - eps) t, eps = 1e-3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .utils import TokenDriftError

NEG_INF = -1e6  # MDLM's "neg_infinity": large and finite, so exp gives 0 and nothing is NaN
PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


def sample_categorical(probs: torch.Tensor, generator=None, dtype=torch.float64) -> torch.Tensor:
    """Gumbel-max draw from (unnormalized) probs, as MDLM's _sample_categorical, in ``dtype``.

    float32 noise truncates the Gumbel tail and lowers entropy (Zheng et al. 2024): float64 is the default.
    """
    p = probs.to(dtype)
    u = torch.rand(p.shape, generator=generator, device=p.device, dtype=dtype)
    gumbel_norm = 1e-10 - (u + 1e-10).log()
    return (p / gumbel_norm).argmax(dim=-1)


class Diffusion:
    eps = 1e-3  # schedule floor and lower end of training times (MDLM sampling_eps)
    nfe_rule = ("NFE = number of denoising steps (model calls of the ancestral loop); one final "
                "noise-removal/greedy forward pass follows and is not counted, as in the MDLM and DUO "
                "evaluation code; forward_passes records all model calls")

    def __init__(self, vocab_size: int):
        if vocab_size < 3:
            raise TokenDriftError(f"model.vocab_size: {vocab_size} leaves fewer than 2 data tokens")
        self.vocab_size = vocab_size
        self.special_id = vocab_size - 1
        self.n_data = vocab_size - 1

    # -- schedule
    def alpha(self, t):
        return 1 - (1 - self.eps) * t

    def sample_t(self, batch_size: int, generator=None, device=None) -> torch.Tensor:
        """Antithetic (stratified) t in [eps, 1] (MDLM _sample_t)."""
        u = torch.rand(batch_size, generator=generator, device=device)
        u = (u / batch_size + torch.arange(batch_size, device=device) / batch_size) % 1
        return (1 - self.eps) * u + self.eps

    # -- what subclasses define
    def corrupt(self, x0, t, generator=None):
        raise NotImplementedError

    def sigma(self, t):
        raise NotImplementedError

    def predicted_positions(self, xt):
        raise NotImplementedError

    def log_probs(self, logits, xt):
        raise NotImplementedError

    def loss_per_token(self, log_p, x0, xt, t):
        raise NotImplementedError

    def sampler_step(self, log_p, x, t, s, generator, dtype):
        raise NotImplementedError

    # -- shared
    def base_loss(self, log_p, x0, xt, t) -> torch.Tensor:
        """The backbone's continuous-time NELBO: summed over tokens, divided by all tokens."""
        return self.loss_per_token(log_p, x0, xt, t).sum() / x0.numel()

    @torch.no_grad()
    def nelbo(self, model, x0: torch.Tensor, generator=None, n_t: int = 4) -> float:
        """Held-out NELBO per token (nats): the base loss averaged over n_t antithetic draws of t."""
        was_training = getattr(model, "training", False)
        if hasattr(model, "eval"):
            model.eval()
        total = 0.0
        for _ in range(n_t):
            t = self.sample_t(x0.shape[0], generator=generator, device=x0.device)
            xt = self.corrupt(x0, t, generator=generator)
            log_p = self.log_probs(model(xt, self.sigma(t)).float(), xt)
            total += float(self.base_loss(log_p, x0, xt, t))
        if was_training:
            model.train()
        return total / n_t

    def _tempered(self, log_p, temperature):
        """p_theta(x0 | x_t) at a sampling temperature, over the data ids only."""
        logits = log_p[..., : self.n_data].double() / temperature
        return torch.softmax(logits, -1)

    @torch.no_grad()
    def sample(self, model, n: int, length: int, nfe: int, *, temperature: float = 1.0, precision: str = "float64",
               generator=None, batch_size: int | None = None, progress: bool = False, info: dict | None = None):
        """Ancestral sampling with ``nfe`` denoising steps; returns Long [n, length] of data ids."""
        if int(nfe) < 1:
            raise TokenDriftError(f"nfe: must be >= 1, got {nfe}")
        if not temperature > 0:
            raise TokenDriftError(f"temperature: must be > 0, got {temperature}")
        if precision not in PRECISIONS:
            raise TokenDriftError(f"precision: {precision!r} is not one of {list(PRECISIONS)}")
        dtype = PRECISIONS[precision]
        device = next(model.parameters()).device if hasattr(model, "parameters") else torch.device("cpu")
        batch_size = batch_size or n
        times = torch.linspace(1, 1e-5, nfe + 1, dtype=torch.float64)
        out, max_passes = [], 0
        bar = tqdm(total=n, desc=f"sample nfe={nfe}", disable=not progress, mininterval=2.0)
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            x = self.prior_sample(b, length, generator, device)
            passes = 0
            for i in range(nfe):
                t, s = float(times[i]), float(times[i + 1])
                tt = torch.full((b,), t, device=device)
                log_p = self.log_probs(model(x, self.sigma(tt)).float(), x)
                passes += 1
                x = self.sampler_step(self._tempered(log_p, temperature), x, t, s, generator, dtype)
            x, extra = self.final_step(model, x, float(times[-1]), temperature)
            passes += extra
            max_passes = max(max_passes, passes)
            out.append(x)
            bar.update(b)
        bar.close()
        if info is not None:
            info["forward_passes"] = max_passes
        return torch.cat(out)


class MDLM(Diffusion):
    """Masked diffusion with the SUBS parameterization (Sahoo et al. 2024)."""

    name = "mdlm"

    def corrupt(self, x0, t, generator=None):
        """Mask each token with probability 1 - alpha_t = (1 - eps) t."""
        move = (1 - self.alpha(t))[:, None]
        u = torch.rand(x0.shape, generator=generator, device=x0.device)
        return torch.where(u < move, torch.full_like(x0, self.special_id), x0)

    def sigma(self, t):
        return torch.zeros_like(t)  # time conditioning off

    def predicted_positions(self, xt):
        return xt == self.special_id

    def log_probs(self, logits, xt):
        """SUBS: no mass on the mask; unmasked positions copy x_t (log p = 0 there)."""
        logits = logits.clone()
        logits[..., self.special_id] = NEG_INF
        log_p = logits.log_softmax(-1)
        copy = torch.full_like(log_p, NEG_INF).scatter_(-1, xt[..., None], 0.0)
        return torch.where((xt != self.special_id)[..., None], copy, log_p)

    def loss_per_token(self, log_p, x0, xt, t):
        """-log p(x0) * dsigma/expm1(sigma) = -log p(x0) / t on masked tokens, 0 elsewhere (MDLM, SUBS)."""
        sigma = -torch.log(self.alpha(t))
        dsigma = (1 - self.eps) / self.alpha(t)
        weight = (dsigma / torch.expm1(sigma))[:, None]
        nll = -log_p.gather(-1, x0[..., None])[..., 0]
        return torch.where(xt == self.special_id, nll * weight, torch.zeros_like(nll))

    def prior_sample(self, b, length, generator, device):
        return torch.full((b, length), self.special_id, dtype=torch.long, device=device)

    def sampler_step(self, p_x0, x, t, s, generator, dtype):
        """Unmask each masked position with probability (mc_t - mc_s)/mc_t, drawing from p_x0 (MDLM _ddpm_update)."""
        mc_t, mc_s = 1 - self.alpha(t), 1 - self.alpha(s)
        q = torch.cat([p_x0 * (mc_t - mc_s), torch.full_like(p_x0[..., :1], mc_s)], -1)
        draw = sample_categorical(q, generator, dtype)
        return torch.where(x == self.special_id, draw, x)

    def final_step(self, model, x, t, temperature):
        """Noise removal: argmax for positions still masked (only run when some are)."""
        masked = x == self.special_id
        if not masked.any():
            return x, 0
        log_p = self.log_probs(model(x, self.sigma(torch.full((x.shape[0],), t, device=x.device))).float(), x)
        return torch.where(masked, log_p[..., : self.n_data].argmax(-1), x), 1


class DUO(Diffusion):
    """Uniform-state diffusion (Sahoo et al. 2025): tokens drift to uniform random data ids."""

    name = "duo"

    def corrupt(self, x0, t, generator=None):
        """Replace each token by a uniform random data id with probability 1 - alpha_t."""
        move = (1 - self.alpha(t))[:, None]
        u = torch.rand(x0.shape, generator=generator, device=x0.device)
        noise = torch.randint(0, self.n_data, x0.shape, generator=generator, device=x0.device)
        return torch.where(u < move, noise, x0)

    def sigma(self, t):
        return -torch.log(self.alpha(t))

    def predicted_positions(self, xt):
        return torch.ones_like(xt, dtype=torch.bool)

    def log_probs(self, logits, xt):
        logits = logits.clone()
        logits[..., self.special_id] = NEG_INF
        return logits.log_softmax(-1)

    def loss_per_token(self, log_p, x0, xt, t):
        """Continuous-time uniform-state NELBO integrand (UDLM/DUO closed form).

        With c = -alpha'/(N alpha), xb = N alpha x0_onehot + (1 - alpha), xbt = N alpha p_theta + (1 - alpha),
        z = x_t:  c [ N/xbt_z - N/xb_z + (1/xb_z) (sum_j xb_j log xb_j - N log xb_z + N log xbt_z - sum_j xb_j log xbt_j) ],
        i.e. sum_{j != z} of the reverse-rate Bregman divergence R_theta - R + R log(R / R_theta).
        """
        N = self.n_data
        a = self.alpha(t)[:, None]  # [B, 1]
        c = (1 - self.eps) / (N * a)
        p = log_p[..., :N].exp()
        xbt = N * a[..., None] * p + (1 - a[..., None])  # [B, L, N]
        big, small = N * a + 1 - a, 1 - a  # xb at j = x0, and elsewhere
        xb_z = torch.where(xt == x0, big, small)
        xbt_z = xbt.gather(-1, xt[..., None])[..., 0]
        log_xbt = xbt.log()
        sum_xb_log_xb = big * big.log() + (N - 1) * small * torch.log(small)
        sum_xb_log_xbt = small * log_xbt.sum(-1) + N * a * log_xbt.gather(-1, x0[..., None])[..., 0]
        inner = sum_xb_log_xb - N * xb_z.log() + N * xbt_z.log() - sum_xb_log_xbt
        return c * (N / xbt_z - N / xb_z + inner / xb_z)

    def prior_sample(self, b, length, generator, device):
        return torch.randint(0, self.n_data, (b, length), generator=generator, device=device)

    def sampler_step(self, p_x0, x, t, s, generator, dtype):
        """q(z_s | z_t, x_theta) ∝ (a_ts 1[j = z_t] + (1 - a_ts)/N)(a_s p_theta_j + (1 - a_s)/N) (DUO/UDLM posterior)."""
        N = self.n_data
        a_t, a_s = self.alpha(t), self.alpha(s)
        a_ts = a_t / a_s
        from_zt = a_ts * F.one_hot(x, N).to(p_x0.dtype) + (1 - a_ts) / N
        q = from_zt * (a_s * p_x0 + (1 - a_s) / N)
        return sample_categorical(q, generator, dtype)

    def final_step(self, model, x, t, temperature):
        """Greedy final step: the argmax of the posterior q(z_0 | z_t, x_theta) (alpha_0 = 1).

        Not the argmax of x_theta itself: under DUO's parameterization x_theta is not a
        posterior that copies z_t, and its argmax would replace tokens by modes.
        """
        log_p = self.log_probs(model(x, self.sigma(torch.full((x.shape[0],), t, device=x.device))).float(), x)
        p_x0 = self._tempered(log_p, temperature)
        a_t = self.alpha(t)
        q = (a_t * F.one_hot(x, self.n_data).to(p_x0.dtype) + (1 - a_t) / self.n_data) * p_x0
        return q.argmax(-1), 1


def make_diffusion(name: str, vocab_size: int) -> Diffusion:
    classes = {"mdlm": MDLM, "duo": DUO}
    if name not in classes:
        raise TokenDriftError(f"diffusion: {name!r} is not one of {list(classes)}")
    return classes[name](vocab_size)
