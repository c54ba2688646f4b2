"""The two backbone processes: MDLM (masked) and DUO (uniform-state); docs/method.md.

They share the schedule, time sampling, the held-out NELBO and the sampler loop; they differ
only in corruption, the parameterization of p_theta(x0 | x_t), the base loss and the sampler
step. The model vocabulary V holds the data ids 0..V-2 and one special id V-1 (MDLM: the mask;
DUO: the pad id, never a data token). The model is any callable ``model(x, sigma) -> logits
[B, L, V]``.

Facts taken from the reference code (kuleshov-group/mdlm, s-sahoo/duo):
- Log-linear schedule, eps = 1e-3: alpha_t = 1 - (1 - eps) t (mdlm noise_schedule.py
  LogLinearNoise: sigma = -log1p(-(1 - eps) t), dsigma = (1 - eps) / (1 - (1 - eps) t);
  duo trainer_base.py LogLinear: alpha_t, dalpha_t = -(1 - eps)).
- Training times: antithetic u_i = (U / B + i / B) mod 1, t = (1 - eps) u + eps
  (mdlm diffusion.py _sample_t, duo trainer_base.py Diffusion._sample_t; sampling_eps = 1e-3).
- Sampling times: linspace(1, 1e-5, steps + 1) (mdlm _sample, duo generate_samples).
- Categorical draws: the reference code races argmax(w / (1e-10 - log(u + 1e-10))) (mdlm
  _sample_categorical, duo sample_categorical), DUO in float64 (use_float64: True). Here a
  float64 draw is the inverse CDF instead (the same distribution, one uniform per position
  instead of one per vocabulary entry); float32 keeps the race, to reproduce its entropy loss.
"""

from __future__ import annotations

import math
import numbers

import torch
from tqdm import tqdm

from .utils import TokenDriftError

EPS = 1e-3  # schedule floor and lower end of training times (sampling_eps)
T_END = 1e-5  # last time of the sampling grid (MDLM/DUO `eps` argument of _sample)
NEG_INF = -1e6  # MDLM/DUO `neg_infinity`: finite, so exp() is 0 and nothing turns NaN
PRECISIONS = {"float64": torch.float64, "float32": torch.float32}
CHUNK = 1 << 25  # elements per categorical draw chunk (bounds sampler memory at V = 50k)


def race_noise(shape, generator=None, device=None, dtype=torch.float64) -> torch.Tensor:
    """Exponential noise E = 1e-10 - log(u + 1e-10), u ~ U[0, 1) drawn in ``dtype``.

    argmax_i w_i / E_i is a draw from w / sum(w) (MDLM _sample_categorical). In float32, u is a
    multiple of 2^-24, so E >= -log(1 - 2^-24) ~ 5.96e-8 and is quantized near 0: tokens whose
    weight is below ~1e-8 of the winner's are (almost) never drawn, which lowers entropy and
    flatters Gen.-PPL (Zheng et al. 2024, arXiv 2409.02908). float64 is the default.
    """
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    return u.add_(1e-10).log_().neg_().add_(1e-10)


def sample_categorical(weights: torch.Tensor, generator=None, dtype=torch.float64) -> torch.Tensor:
    """One draw per row from unnormalized non-negative ``weights`` [..., K], computed in ``dtype``.

    float64: inverse CDF, the first j with c_j >= v c_K, c = cumsum(w), v ~ U(0, 1]. Exact to
    float64 resolution, never an id of weight 0, and one uniform per row: the race's K uniforms
    and K logarithms per row were most of the sampler's cost beside a small model (BENCHMARKS.md,
    section 3). float32: the reference code's race argmax(w / E) with float32 ``race_noise``,
    kept to reproduce what float32 draws do to entropy (Zheng et al. 2024).
    """
    w = weights.to(dtype)
    if dtype == torch.float64:
        c = w.cumsum(-1)
        v = 1 - torch.rand(c.shape[:-1] + (1,), generator=generator, device=c.device, dtype=dtype)
        return torch.searchsorted(c, v * c[..., -1:]).squeeze(-1)  # v c_K <= c_K: always in range
    e = race_noise(w.shape, generator, w.device, dtype)
    return torch.div(w, e, out=e).argmax(dim=-1)


def nucleus(p: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the most likely ids until their mass reaches top_p, renormalize (duo utils.py
    top_k_top_p_filtering: an id is kept when the mass before it is <= top_p)."""
    if top_p >= 1.0:
        return p
    sp, idx = p.sort(dim=-1, descending=True)
    drop_sorted = (sp.cumsum(-1) - sp) > top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, idx, drop_sorted)
    p = p.masked_fill(drop, 0.0)
    return p / p.sum(-1, keepdim=True)


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


class Diffusion:
    """What MDLM and DUO share: schedule, time sampling, base-loss reduction, NELBO, sampler loop.

    Each subclass defines corrupt(x0, t, generator), sigma(t), predicted_positions(xt),
    log_probs(logits, xt), loss_per_token(log_p, x0, xt, t), prior_sample(b, length, generator,
    device), step(...) and final_step(...), plus name, nfe_rule and noise_removals.
    """

    name = ""
    eps = EPS
    nfe_rule = ""
    noise_removals = ()

    def __init__(self, vocab_size: int):
        if int(vocab_size) < 3:
            raise TokenDriftError(f"vocab_size: {vocab_size} leaves fewer than 2 data ids (the last id is special)")
        self.vocab_size = int(vocab_size)
        self.special_id = self.vocab_size - 1
        self.n_data = self.vocab_size - 1
        self.n_drawn = self.n_data  # ids p_x0 may give mass to: the data ids (DUO: see pad_mass)
        self.last_forward_passes = None

    # -- schedule (log-linear) ------------------------------------------------------------
    def alpha(self, t):
        """alpha_t = 1 - (1 - eps) t: the probability that a token is still clean at time t."""
        return 1 - (1 - self.eps) * t

    def sample_t(self, batch_size: int, generator=None, device=None) -> torch.Tensor:
        """Antithetic (stratified) times in [eps, 1] (MDLM/DUO _sample_t)."""
        if device is None and generator is not None:
            device = generator.device
        u = torch.rand(batch_size, generator=generator, device=device)
        u = (u / batch_size + torch.arange(batch_size, device=device) / batch_size) % 1
        return (1 - self.eps) * u + self.eps

    # -- shared -------------------------------------------------------------------------------
    def base_loss(self, log_p, x0, xt, t) -> torch.Tensor:
        """The backbone's continuous-time NELBO: summed over tokens, divided by all tokens
        (mdlm _loss / duo trainer_base _loss: nlls.sum() / number of tokens)."""
        return self.loss_per_token(log_p, x0, xt, t).sum() / x0.numel()

    @torch.no_grad()
    def nelbo(self, model, x0: torch.Tensor, generator=None, n_t: int = 4) -> float:
        """Held-out NELBO (nats/token): the base loss averaged over n_t antithetic draws of t.

        The model runs in eval mode (restored afterwards). With eps = 1e-3 the estimate omits
        the prior term at t = 1, so an exact MDLM denoiser of an i.i.d. source gives (1 - eps) H.
        """
        if int(n_t) < 1:
            raise TokenDriftError(f"n_t: must be >= 1, got {n_t}")
        was_training = bool(getattr(model, "training", False))
        if hasattr(model, "eval"):
            model.eval()
        try:
            total = 0.0
            for _ in range(int(n_t)):
                t = self.sample_t(x0.shape[0], generator=generator, device=x0.device)
                xt = self.corrupt(x0, t, generator=generator)
                log_p = self.log_probs(model(xt, self.sigma(t)).float(), xt)
                total += float(self.base_loss(log_p, x0, xt, t))
        finally:
            if was_training:
                model.train()
        return total / int(n_t)

    def p_x0(self, logits: torch.Tensor, dtype, temperature: float, top_p: float) -> torch.Tensor:
        """p_theta(x0 | x_t) over the V ids for sampling: softmax(logits / temperature) in
        ``dtype``, then the optional nucleus. The special id (the last) gets probability 0 (MDLM:
        SUBS removes the mask; DUO: the pad is never a data token), unless DUO's ``pad_mass`` is
        "model". The samplers turn the result into their weights in place: beside a small model,
        every extra [rows, V] float64 pass shows in the sampler's overhead."""
        x = logits.to(dtype, copy=True)
        x[..., self.n_drawn :] = -math.inf
        return nucleus(torch.softmax(x.div_(temperature) if temperature != 1 else x, dim=-1), top_p)

    def _draw(self, rows: int, weight_fn, generator, dtype, device) -> torch.Tensor:
        """Categorical draws for ``rows`` rows whose weights ``weight_fn(slice)`` builds, in
        chunks so a [B, L, 50258] float64 tensor is never held at once."""
        out = torch.empty(rows, dtype=torch.long, device=device)
        step = max(1, CHUNK // self.vocab_size)
        for a in range(0, rows, step):
            sl = slice(a, min(rows, a + step))
            out[sl] = sample_categorical(weight_fn(sl), generator, dtype)
        return out

    def _forward(self, model, x, t: float, state: dict) -> torch.Tensor:
        """One model call at time t (counted in state['passes'])."""
        sig = self.sigma(torch.full((x.shape[0],), t, device=x.device))
        state["passes"] += 1
        return model(x, sig).float()

    def _check_sample_args(self, n, length, nfe, temperature, precision, batch_size, top_p, noise_removal):
        def integer(v):
            return not isinstance(v, bool) and isinstance(v, numbers.Integral)

        def real(v):
            return not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(v)

        if not integer(nfe) or nfe < 1:
            raise TokenDriftError(f"nfe: must be an integer >= 1, got {nfe!r}")
        if not real(temperature) or temperature <= 0:
            raise TokenDriftError(f"temperature: must be a finite number > 0, got {temperature!r}")
        if precision not in PRECISIONS:
            raise TokenDriftError(f"precision: {precision!r} is not one of {list(PRECISIONS)}")
        if not integer(n) or n < 1:
            raise TokenDriftError(f"n: must be an integer >= 1, got {n!r}")
        if not integer(length) or length < 1:
            raise TokenDriftError(f"length: must be an integer >= 1, got {length!r}")
        if batch_size is not None and (not integer(batch_size) or batch_size < 1):
            raise TokenDriftError(f"batch_size: must be an integer >= 1, got {batch_size!r}")
        if not real(top_p) or not 0 < top_p <= 1:
            raise TokenDriftError(f"top_p: must be in (0, 1], got {top_p!r}")
        if noise_removal is not None and noise_removal not in self.noise_removals:
            raise TokenDriftError(
                f"noise_removal: {noise_removal!r} is not one of {list(self.noise_removals)} for {self.name}"
            )

    @torch.no_grad()
    def sample(
        self,
        model,
        n: int,
        length: int,
        nfe: int,
        *,
        temperature: float = 1.0,
        precision: str = "float64",
        generator=None,
        batch_size: int | None = None,
        progress: bool = False,
        top_p: float = 1.0,
        noise_removal: str | None = None,
        info: dict | None = None,
    ) -> torch.Tensor:
        """Ancestral sampling with ``nfe`` denoising steps; returns Long [n, length] of data ids.

        Times linspace(1, 1e-5, nfe + 1); one final noise-removal step at t = 1e-5 (see
        ``nfe_rule``). ``generator`` must live on the model's device. The number of model calls
        per batch is stored in ``self.last_forward_passes`` (the largest over batches) and, if
        ``info`` is a dict, in info["forward_passes"] (same) and info["forward_passes_per_batch"].
        """
        self._check_sample_args(n, length, nfe, temperature, precision, batch_size, top_p, noise_removal)
        dtype = PRECISIONS[precision]
        noise_removal = noise_removal or self.noise_removals[0]
        device = _model_device(model)
        n, length, nfe = int(n), int(length), int(nfe)
        batch_size = int(batch_size or n)
        times = torch.linspace(1.0, T_END, nfe + 1, dtype=torch.float64).tolist()
        was_training = bool(getattr(model, "training", False))
        if hasattr(model, "eval"):
            model.eval()
        out, passes = [], []
        n_batches = -(-n // batch_size)
        bar = tqdm(total=n_batches * nfe, desc=f"sample {self.name} nfe={nfe}", disable=not progress, mininterval=2.0)
        try:
            for start in range(0, n, batch_size):
                b = min(batch_size, n - start)
                state = {"passes": 0}
                x = self.prior_sample(b, length, generator, device)
                for i in range(nfe):
                    x = self.step(model, x, times[i], times[i + 1], state, generator, dtype, temperature, top_p)
                    bar.update(1)
                x = self.final_step(model, x, times[-1], state, generator, dtype, temperature, top_p, noise_removal)
                passes.append(state["passes"])
                out.append(x)
        finally:
            bar.close()
            if was_training:
                model.train()
        self.last_forward_passes = max(passes)
        if info is not None:
            info["forward_passes"] = self.last_forward_passes
            info["forward_passes_per_batch"] = passes
        return torch.cat(out)


class MDLM(Diffusion):
    """Masked diffusion with the SUBS parameterization (Sahoo et al. 2024, kuleshov-group/mdlm)."""

    name = "mdlm"
    noise_removals = ("greedy",)
    nfe_rule = (
        "NFE = number of ancestral denoising steps (times linspace(1, 1e-5, NFE + 1)); a step whose "
        "input equals the previous model call's input reuses that output, as MDLM's default ddpm_cache "
        "sampler does (exact: MDLM has no time conditioning). The final noise-removal pass at t = 1e-5 "
        "(argmax at still-masked positions) is not counted in NFE, as in the MDLM/DUO evaluation code; "
        "it runs only if masked positions remain and the cached output is stale. forward_passes counts "
        "the model calls actually made per batch (largest over batches): at most NFE + 1."
    )

    def corrupt(self, x0, t, generator=None):
        """Mask each token with probability 1 - alpha_t = (1 - eps) t (mdlm q_xt)."""
        move = (1 - self.alpha(t)).reshape(-1, 1)
        u = torch.rand(x0.shape, generator=generator, device=x0.device)
        return torch.where(u < move, torch.full_like(x0, self.special_id), x0)

    def sigma(self, t):
        """Time conditioning off: the DiT is fed sigma = 0 (mdlm _process_sigma)."""
        return torch.zeros_like(t)

    def predicted_positions(self, xt):
        return xt == self.special_id

    def log_probs(self, logits, xt):
        """SUBS (mdlm _subs_parameterization): mask logit -inf, log_softmax; unmasked positions
        copy x_t (log p = 0 at x_t, -inf elsewhere)."""
        special = torch.full((1,), self.special_id, device=logits.device)  # not torch.tensor([...]): a copy, a sync
        logits = logits.index_fill(-1, special, NEG_INF)
        log_p = logits.log_softmax(-1)
        ids = torch.arange(self.vocab_size, device=logits.device)
        copy = torch.where(ids == xt[..., None], 0.0, NEG_INF).to(log_p.dtype)
        return torch.where((xt != self.special_id)[..., None], copy, log_p)

    def loss_weight(self, t):
        """Continuous NELBO weight dsigma / expm1(sigma) (mdlm _forward_pass_diffusion), with
        sigma = -log1p(-(1 - eps) t) and dsigma = (1 - eps) / (1 - (1 - eps) t): equals 1 / t."""
        sigma = -torch.log1p(-(1 - self.eps) * t)
        dsigma = (1 - self.eps) / (1 - (1 - self.eps) * t)
        return dsigma / torch.expm1(sigma)

    def loss_per_token(self, log_p, x0, xt, t):
        """-log p_theta(x0) * dsigma / expm1(sigma) on masked tokens, 0 on unmasked ones."""
        nll = -log_p.gather(-1, x0[..., None])[..., 0]
        w = self.loss_weight(t).reshape(-1, 1).to(nll.dtype)
        return torch.where(xt == self.special_id, nll * w, torch.zeros_like(nll))

    def prior_sample(self, b, length, generator, device):
        return torch.full((b, length), self.special_id, dtype=torch.long, device=device)

    def _cached_forward(self, model, x, t, state):
        """Model output at x, reusing the last one if x has not changed (mdlm ddpm_cache)."""
        cache = state.pop("cache", None)
        if cache is not None and torch.equal(cache[0], x):
            state["cache"] = cache
            return cache[1]
        del cache  # free the stale output before the next call
        logits = self._forward(model, x, t, state)
        state["cache"] = (x.clone(), logits)
        return logits

    def step(self, model, x, t, s, state, generator, dtype, temperature, top_p):
        """t -> s (mdlm _ddpm_update): each masked position draws from
        [p_x0 * (mc_t - mc_s), mask: mc_s] with mc = 1 - alpha, i.e. it is unmasked with
        probability (t - s) / t to a token drawn from p_x0; unmasked positions are kept."""
        where = (x == self.special_id).flatten().nonzero().squeeze(1)
        if where.numel() == 0:
            return x
        logits = self._cached_forward(model, x, t, state).reshape(-1, self.vocab_size)
        mc_t, mc_s = 1 - self.alpha(t), 1 - self.alpha(s)

        def weights(sl):
            w = self.p_x0(logits[where[sl]], dtype, temperature, top_p).mul_(mc_t - mc_s)
            w[:, self.special_id] = mc_s
            return w

        x = x.clone()
        x.view(-1)[where] = self._draw(where.numel(), weights, generator, dtype, x.device)
        return x

    def final_step(self, model, x, t, state, generator, dtype, temperature, top_p, noise_removal):
        """Noise removal (mdlm _sample, noise_removal=True): argmax of p_theta at still-masked
        positions; unmasked positions are copied (SUBS)."""
        masked = x == self.special_id
        if not masked.any():
            return x
        logits = self._cached_forward(model, x, t, state)
        return torch.where(masked, logits[..., : self.n_data].argmax(-1), x)


class DUO(Diffusion):
    """Uniform-state diffusion (Sahoo et al. 2025, s-sahoo/duo, DUO_BASE / UniformState).

    As in DUO's code, the uniform noise ranges over all N = V ids, the pad id included
    (trainer_base.py UniformState.q_xt and prior_sample: randint(0, vocab_size)), and every
    formula uses N = V; log_probs is a plain log_softmax over the V ids (algo.py
    DUO_BASE._process_model_output). The pad is never a data token: by default
    (``pad_mass="zero"``) the sampler gives it no mass in x_theta, so the final step never
    outputs it (intermediate states may hold it). ``pad_mass="model"`` is the reference sampler
    (trainer_base.py _get_posterior_from_xt: x_theta = exp(log_softmax) over all V ids): the pad
    keeps the model's mass and may appear in the samples (docs/choices.md, DUO's pad id).
    """

    name = "duo"
    noise_removals = ("ancestral", "greedy")
    nfe_rule = (
        "NFE = number of ancestral denoising steps (times linspace(1, 1e-5, NFE + 1)), one model call "
        "each (DUO is time conditioned: no caching). The final noise-removal step at t = 1e-5 "
        "(ancestral: a draw from q(z_0 | z_t, x_theta), DUO's default; greedy: argmax of x_theta) is "
        "one more model call, not counted in NFE, as in the MDLM/DUO evaluation code: "
        "forward_passes = NFE + 1."
    )
    PAD_MASS = ("zero", "model")

    def __init__(self, vocab_size: int, pad_mass: str = "zero"):
        super().__init__(vocab_size)
        if pad_mass not in self.PAD_MASS:
            raise TokenDriftError(f"duo_pad_mass: {pad_mass!r} is not one of {list(self.PAD_MASS)}")
        self.pad_mass = pad_mass
        self.n_drawn = self.vocab_size if pad_mass == "model" else self.n_data

    def corrupt(self, x0, t, generator=None):
        """Replace each token, with probability 1 - alpha_t, by a uniform id in [0, V) (duo q_xt)."""
        move = (1 - self.alpha(t)).reshape(-1, 1)
        u = torch.rand(x0.shape, generator=generator, device=x0.device)
        noise = torch.randint(0, self.vocab_size, x0.shape, generator=generator, device=x0.device)
        return torch.where(u < move, noise, x0)

    def sigma(self, t):
        """Time conditioning: sigma = -log alpha_t (duo _sigma_from_alphat)."""
        return -torch.log1p(-(1 - self.eps) * t)

    def predicted_positions(self, xt):
        return torch.ones_like(xt, dtype=torch.bool)

    def log_probs(self, logits, xt):
        """x_theta = softmax over the V ids (duo DUO_BASE._process_model_output)."""
        return logits.log_softmax(-1)

    def loss_per_token(self, log_p, x0, xt, t):
        """Continuous-time uniform-state NELBO integrand (duo algo.py DUO_BASE.nll_per_token).

        With N = V, a = alpha_t, S = 1 - a, xb = N a onehot(x0) + S, xbt = N a x_theta + S,
        z = x_t and c = -alpha'_t / (N a) = (1 - eps) / (N a), the integrand is
            c * sum_{j != z} [ xbt_j/xbt_z - xb_j/xb_z + (xb_j/xb_z) log((xb_j xbt_z) / (xb_z xbt_j)) ],
        the Bregman divergence between the true reverse rates R(z -> j) = c xb_j / xb_z and the
        model's, and the limit of KL(q(z_s | z_t, x0) || q(z_s | z_t, x_theta)) / (t - s).
        Summing over j in closed form with D_j = log(xbt_j / S) = log1p(N a x_theta_j / S):
            c [ N/xbt_z - N/xb_z + (T + (N - xb_z)(log xbt_z - log xb_z)) / xb_z ],
            T = sum_{j != z} xb_j (log xb_j - log xbt_j)
              = -S (sum_j D_j - D_z)                                     if z = x0,
              = -S (sum_j D_j - D_z - D_x0) + (N a + S)(log1p(N a / S) - D_x0)   otherwise.
        Numerically equal to DUO's term1/term2 expression (checked to 1e-15 in float64).
        """
        N = self.vocab_size
        S = ((1 - self.eps) * t).reshape(-1, 1).to(log_p.dtype)  # 1 - alpha_t, exact for small t
        a = 1 - S
        big = N * a + S
        c = (1 - self.eps) / (N * a)
        D = torch.log1p((N * a / S)[..., None] * log_p.exp())
        sum_d = D.sum(-1)
        d_z = D.gather(-1, xt[..., None])[..., 0]
        d_x = D.gather(-1, x0[..., None])[..., 0]
        same = xt == x0
        log_big = torch.log1p(N * a / S)  # log(big / S)
        xb_z = torch.where(same, big, S)
        xbt_z = S * torch.exp(d_z)
        tail = torch.where(same, -S * (sum_d - d_z), -S * (sum_d - d_z - d_x) + big * (log_big - d_x))
        log_ratio_z = torch.where(same, d_z - log_big, d_z)  # log xbt_z - log xb_z
        return c * (N / xbt_z - N / xb_z + (tail + (N - xb_z) * log_ratio_z) / xb_z)

    def prior_sample(self, b, length, generator, device):
        """Uniform over all V ids (duo UniformState.prior_sample)."""
        return torch.randint(0, self.vocab_size, (b, length), generator=generator, device=device)

    def _posterior_weights(self, p, z, a_t, a_s):
        """q(z_s = j | z_t = z, x) ∝ q(z_t = z | z_s = j) q(z_s = j | x) with x = p (0 at the pad):
        (a_ts 1[j = z] + (1 - a_ts)/N)(a_s x_j + (1 - a_s)/N), a_ts = a_t / a_s. This is Bayes'
        rule behind duo DUO_BASE._posterior_from_x0 (same values up to normalization). ``p`` is
        p_x0's own [rows, V] tensor (0 at the pad) and is overwritten."""
        N = self.vocab_size
        a_ts = a_t / a_s
        base = p.mul_(a_s).add_((1 - a_s) / N)
        at_z = base.gather(-1, z[:, None]).mul_(a_ts)
        return base.mul_((1 - a_ts) / N).scatter_add_(-1, z[:, None], at_z)

    def _posterior_draw(self, model, x, t, a_s, state, generator, dtype, temperature, top_p):
        logits = self._forward(model, x, t, state).reshape(-1, self.vocab_size)
        z = x.reshape(-1)
        a_t = self.alpha(t)

        def weights(sl):
            return self._posterior_weights(self.p_x0(logits[sl], dtype, temperature, top_p), z[sl], a_t, a_s)

        return self._draw(z.numel(), weights, generator, dtype, x.device).view_as(x)

    def step(self, model, x, t, s, state, generator, dtype, temperature, top_p):
        """t -> s: a draw from q(z_s | z_t, x_theta) (duo _ancestral_update)."""
        return self._posterior_draw(model, x, t, self.alpha(s), state, generator, dtype, temperature, top_p)

    def final_step(self, model, x, t, state, generator, dtype, temperature, top_p, noise_removal):
        """duo generate_samples noise removal at t = 1e-5: 'ancestral' (default) draws from
        q(z_0 | z_t, x_theta) (alpha_s = 1); 'greedy' (DUO's greedy-tail) takes argmax x_theta."""
        if noise_removal == "greedy":
            return self._forward(model, x, t, state)[..., : self.n_drawn].argmax(-1)
        return self._posterior_draw(model, x, t, 1.0, state, generator, dtype, temperature, top_p)


def make_diffusion(name: str, vocab_size: int, duo_pad_mass: str = "zero") -> Diffusion:
    """The process of a backbone: "mdlm" or "duo"; vocab_size is the model vocabulary V;
    ``duo_pad_mass`` is DUO's sampler option (MDLM's mask never gets mass, as in its SUBS)."""
    if name == "mdlm":
        return MDLM(vocab_size)
    if name == "duo":
        return DUO(vocab_size, duo_pad_mass)
    raise TokenDriftError(f"diffusion: {name!r} is not one of ['mdlm', 'duo']")
