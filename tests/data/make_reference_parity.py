"""Run the MDLM and DUO reference code on fixed inputs and store its outputs for
tests/test_reference_parity.py (which needs only what this script writes, never the code).

Not part of the package and not run by the tests. It runs in a virtual environment of its
own, outside this repository, with the reference code's own dependencies (CPU torch 2.13.0,
lightning, hydra-core, omegaconf, einops, transformers, tokenizers, torchmetrics, datasets,
scipy), on unmodified checkouts of

  kuleshov-group/mdlm  (--mdlm DIR --mdlm-commit SHA)
  s-sahoo/duo          (--duo DIR --duo-commit SHA)

e.g. ``git --git-dir=MIRROR archive SHA | tar -x -C DIR``. The one stand-in: the CUDA-only
``flash_attn`` functions the DiTs import are replaced (below, in this script only) by
``flash_attn_stand_in``, the same arithmetic in plain torch: ``apply_rotary_emb_torch`` and
``rotate_half`` are flash-attention's own torch reference (Dao-AILab/flash-attention
``flash_attn/layers/rotary.py`` at 0251105a2fb19d2957484b7f023cd8c115286ced), the packed
rotary applies it to q and k in place, and the varlen attention is softmax(q k^T / sqrt(d)) v
per sequence of ``cu_seqlens``, written out (not torch's SDPA, which our model uses).
``mamba_ssm`` / ``causal_conv1d`` (imported by MDLM's unused DiMamba module), ``torchvision``
(DUO's image datasets) and ``timm`` (the LR scheduler's base class) are inert.

Writes tests/data/reference_parity.json (inputs, random draws, outputs, commits),
tests/data/reference_parity/dit.safetensors (the reference DiT's state dict, ``backbone.*``
keys as the reference Lightning modules hold it) and tests/data/reference_parity/evaluator/
(a tiny random GPT-2 and a byte-level BPE tokenizer built here: GPT-2's own tokenizer and
weights are not available offline; the Gen.-PPL routine is the same code whatever the LM).

    /work/refvenv/bin/python tests/data/make_reference_parity.py \
        --mdlm /work/ref/mdlm --mdlm-commit c112c526d193436838c98d81455ee51f90309470 \
        --duo /work/ref/duo --duo-commit 7c9b498f5b717de064d6fad7e2509c866e6cb620
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import json
import math
import sys
import types
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
OUT_JSON = HERE / "reference_parity.json"
OUT_DIR = HERE / "reference_parity"

# The tiny DiT (both backbones share it; MDLM runs it with sigma = 0, DUO with sigma = -log a_t)
SIZE = dict(hidden_size=64, cond_dim=32, n_blocks=2, n_heads=4, length=16, dropout=0.1)
N_DATA = 49  # data ids 0..48; id 49 is MDLM's mask / DUO's extra (pad) id: V = 50
B, L = 2, SIZE["length"]
STEPS = 8  # sampler grid linspace(1, 1e-5, STEPS + 1)
EVAL_MAX_LENGTH = 40  # Gen.-PPL retokenization length (two texts are truncated)
EVAL_BATCH = 4  # perplexity_batch_size: the reference pads the whole call (all TEXTS), then splits

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A language model assigns probabilities to sequences of tokens.",
    "Diffusion models corrupt data with noise and learn to reverse the process.",
    "She said it's not what they'd expected, but we're going anyway.",
    "In 1998, the committee met twice; neither meeting reached a decision!",
    "Numbers like 3.14, 2.71 and 1,000,000 appear in text too.",
    "Masked tokens are predicted from the tokens that remain visible.",
    "Uniform noise replaces tokens with random ones from the vocabulary.",
]
TEXTS = [  # what Gen.-PPL scores: EOS inside, at the start, twice, none; short and truncated; the
    # longest rows in the first half, so that padding the second half alone would differ
    "The model predicts the next token.",
    "A short one.<|endoftext|>Then more text after the end of text token, which counts once.",
    "<|endoftext|>Starts with the end of text token and goes on for quite a while longer than the others do.",
    "It's what we'd expected: tokens, noise, and a sampler that isn't greedy at all!",
    "Noise is removed step by step until the text is clean.",
    "Words",
    "Two ends<|endoftext|> here<|endoftext|> and after.",
    "Masked diffusion<|endoftext|>",
]


# ----------------------------------------------------------------------------- stand-ins


def _rotate_half(x, interleaved=False):  # flash_attn/layers/rotary.py rotate_half
    from einops import rearrange

    if not interleaved:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)
    x1, x2 = x[..., ::2], x[..., 1::2]
    return rearrange(torch.stack((-x2, x1), dim=-1), "... d two -> ... (d two)", two=2)


def _apply_rotary_emb_torch(x, cos, sin, interleaved=False):  # flash_attn/layers/rotary.py, verbatim
    from einops import repeat

    ro_dim = cos.shape[-1] * 2
    assert ro_dim <= x.shape[-1]
    cos = repeat(cos, "... d -> ... 1 (2 d)" if not interleaved else "... d -> ... 1 (d 2)")
    sin = repeat(sin, "... d -> ... 1 (2 d)" if not interleaved else "... d -> ... 1 (d 2)")
    return torch.cat(
        [x[..., :ro_dim] * cos + _rotate_half(x[..., :ro_dim], interleaved) * sin, x[..., ro_dim:]],
        dim=-1,
    )


def _apply_rotary_emb_qkv_(
    qkv, cos, sin, cos_k=None, sin_k=None, interleaved=False, seqlen_offsets=0, num_heads_q=None
):
    """flash_attn.layers.rotary.apply_rotary_emb_qkv_ for qkv [B, S, 3, H, D]: q and k rotated in place."""
    assert qkv.dim() == 5 and seqlen_offsets == 0 and num_heads_q is None
    cos_k = cos if cos_k is None else cos_k
    sin_k = sin if sin_k is None else sin_k
    qkv[:, :, 0] = _apply_rotary_emb_torch(qkv[:, :, 0], cos, sin, interleaved)
    qkv[:, :, 1] = _apply_rotary_emb_torch(qkv[:, :, 1], cos_k, sin_k, interleaved)
    return qkv


def _flash_attn_varlen_qkvpacked_func(
    qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False, **kwargs
):
    """qkv [total, 3, H, D] -> [total, H, D]: exact attention within each cu_seqlens segment."""
    assert dropout_p == 0.0
    scale = softmax_scale if softmax_scale is not None else qkv.shape[-1] ** -0.5
    out = torch.empty_like(qkv[:, 0])
    bounds = cu_seqlens.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        q, k, v = qkv[a:b].unbind(1)  # [S, H, D]
        scores = torch.einsum("shd,thd->hst", q.float(), k.float()) * scale
        if causal:
            S = b - a
            scores = scores.masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), float("-inf"))
        out[a:b] = torch.einsum("hst,thd->shd", scores.softmax(-1), v.float()).to(qkv.dtype)
    return out


def install_stand_ins():
    fa = types.ModuleType("flash_attn")
    fa.__doc__ = "flash_attn_stand_in (tests/data/make_reference_parity.py)"
    layers = types.ModuleType("flash_attn.layers")
    rotary = types.ModuleType("flash_attn.layers.rotary")
    rotary.apply_rotary_emb_torch = _apply_rotary_emb_torch
    rotary.apply_rotary_emb_qkv_ = _apply_rotary_emb_qkv_
    rotary.rotate_half = _rotate_half
    iface = types.ModuleType("flash_attn.flash_attn_interface")
    iface.flash_attn_varlen_qkvpacked_func = _flash_attn_varlen_qkvpacked_func
    fa.layers, layers.rotary, fa.flash_attn_interface = layers, rotary, iface
    fa.flash_attn_varlen_qkvpacked_func = _flash_attn_varlen_qkvpacked_func
    for mod in (fa, layers, rotary, iface):  # found by importlib, but no installed package to transformers
        mod.__spec__ = importlib.machinery.ModuleSpec(mod.__name__, None)
    sys.modules.update(
        {
            "flash_attn": fa,
            "flash_attn.layers": layers,
            "flash_attn.layers.rotary": rotary,
            "flash_attn.flash_attn_interface": iface,
        }
    )

    def inert(name):
        m = types.ModuleType(name)
        m.__spec__ = importlib.machinery.ModuleSpec(name, None)
        m.__path__ = []

        def attr(name):
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (), {"__init__": lambda self, *a, **k: None})  # subclassable, callable

        m.__getattr__ = attr
        return m

    for name in (
        "mamba_ssm",
        "mamba_ssm.ops",
        "mamba_ssm.ops.selective_scan_interface",
        "mamba_ssm.ops.triton",
        "mamba_ssm.ops.triton.selective_state_update",
        "mamba_ssm.ops.triton.layernorm",
        "causal_conv1d",
        "torchvision",
        "torchvision.transforms",
        "timm",
        "timm.scheduler",
    ):
        sys.modules[name] = inert(name)


def use_repo(path: Path):
    """Import a reference repository's top-level modules (both name theirs models, utils, ...)."""
    for name in list(sys.modules):
        if name.split(".")[0] in {
            "models",
            "utils",
            "dataloader",
            "diffusion",
            "noise_schedule",
            "algo",
            "trainer_base",
            "metrics",
        }:
            del sys.modules[name]
    sys.path = [p for p in sys.path if p not in {str(a) for a in REPOS}]
    sys.path.insert(0, str(path))


REPOS: list[Path] = []


# ----------------------------------------------------------------------------- helpers


class DataTokenizer:
    """The backbone tokenizer's size, which is all the reference modules read from it."""

    def __init__(self, n):
        self.vocab_size, self.mask_token, self.pad_token_id = n, None, None
        self.bos_token_id = self.eos_token_id = 0

    def __len__(self):
        return self.vocab_size


def compose(config_dir: Path, overrides: list[str]):
    import omegaconf
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    for name, fn in {
        "cwd": lambda: "/tmp",
        "device_count": lambda: 1,
        "eval": eval,
        "div_up": lambda x, y: (x + y - 1) // y,
    }.items():
        if not omegaconf.OmegaConf.has_resolver(name):
            omegaconf.OmegaConf.register_new_resolver(name, fn)
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return hcompose(config_name="config", overrides=overrides)


def size_overrides():
    return [f"model.{k}={v}" for k, v in SIZE.items()] + ["trainer.accelerator=cpu", "loader.global_batch_size=2"]


def randomize(backbone, seed=0):
    """Every weight perturbed (the adaLN-zero and output layers drawn), so that each enters the
    logits: a test on the reference's zero init would not see a wrong modulation or output layer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in backbone.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.abs().sum() == 0:
                p.copy_(0.1 * noise)
            else:
                p.add_(0.05 * noise)


def tolist(x):
    return x.detach().cpu().tolist()


class Recorder:
    """Wraps a bound method and keeps what it returned last."""

    def __init__(self, obj, name):
        self.obj, self.name, self.fn = obj, name, getattr(obj, name)
        self.value = None

        def wrapped(*a, **k):
            self.value = self.fn(*a, **k)
            return self.value

        setattr(obj, name, wrapped)

    def restore(self):
        setattr(self.obj, self.name, self.fn)


def fixed_backbone(module, logits):
    """Make module.backbone return ``logits`` (a fresh copy each call: the reference edits them in place)."""
    real = module.backbone

    class Fixed(torch.nn.Module):
        def forward(self, *a, **k):
            return logits.clone()

    module.backbone = Fixed()
    return real


# ----------------------------------------------------------------------------- evaluator


def make_evaluator(folder: Path) -> None:
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS + TEXTS, trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    fast.save_pretrained(folder)
    eos = fast.convert_tokens_to_ids("<|endoftext|>")
    cfg = transformers.GPT2Config(
        vocab_size=len(fast),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        initializer_range=0.2,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(folder, safe_serialization=True)


# ----------------------------------------------------------------------------- MDLM


def run_mdlm(repo: Path, state: dict, evaluator: Path, x0: torch.Tensor) -> dict:
    use_repo(repo)
    import diffusion  # kuleshov-group/mdlm diffusion.py

    cfg = compose(
        repo / "configs",
        [
            "model=tiny",
            *size_overrides(),
            "sampling.predictor=ddpm_cache",
            f"eval.gen_ppl_eval_model_name_or_path={evaluator}",
            f"eval.perplexity_batch_size={EVAL_BATCH}",
        ],
    )
    m = diffusion.Diffusion(cfg, tokenizer=DataTokenizer(N_DATA))
    assert m.vocab_size == N_DATA + 1 and m.mask_index == N_DATA and not m.time_conditioning
    m.backbone.load_state_dict(state)
    m.eval()
    out = {
        "time_conditioning": bool(m.time_conditioning),
        "mask_index": m.mask_index,
        "parameter_order": [n for n, _ in m.backbone.named_parameters()],
        "ema_parameter_count": len(m.ema.shadow_params),
    }

    # training loss on one batch: float32 end to end, recording the time and noise draws
    rec_t, rec_x = Recorder(m, "_sample_t"), Recorder(m, "q_xt")
    torch.manual_seed(11)
    with torch.no_grad():
        loss = m._loss(x0, torch.ones_like(x0))
    t, xt = rec_t.value, rec_x.value
    rec_t.restore(), rec_x.restore()
    sigma_in = m._process_sigma(m.noise(t)[0][:, None])  # what forward feeds the DiT: zeros
    with torch.no_grad():
        logits = m.backbone(xt, sigma_in)
    out["loss"] = {
        "seed": 11,
        "t": tolist(t),
        "xt": tolist(xt),
        "sigma_in": tolist(sigma_in),
        "loss_float32": float(loss.loss),
        "nlls_float32": tolist(loss.nlls),
    }
    out["logits"] = {"xt": tolist(xt), "sigma_in": tolist(sigma_in), "logits": tolist(logits)}

    # the same loss in float64 from the same logits and draws
    real = fixed_backbone(m, logits.double())
    m._sample_t = lambda n, device: t.double()
    m.q_xt = lambda x, move_chance: xt
    loss64 = m._loss(x0, torch.ones_like(x0))
    del m._sample_t, m.q_xt
    m.backbone = real
    out["loss"]["loss_float64"] = float(loss64.loss)
    out["loss"]["nlls_float64"] = tolist(loss64.nlls)

    # sampler steps (ddpm_cache): the first from all masks, the second from its result; then
    # the noise removal (argmax of the SUBS output) from a partly masked state
    steps = []
    x = m._sample_prior(B, L)
    timesteps = torch.linspace(1, 1e-5, STEPS + 1)
    dt = (1 - 1e-5) / STEPS
    for i, seed in ((0, 21), (1, 22)):
        tt = timesteps[i] * torch.ones(B, 1)
        with torch.no_grad():
            model_logits = m.backbone(x, m._process_sigma(m.noise(tt)[0]))
        torch.manual_seed(seed)
        u = torch.rand(B, L, m.vocab_size)  # what rand_like draws inside _sample_categorical
        torch.manual_seed(seed)
        with torch.no_grad():
            p_x0, x_next = m._ddpm_caching_update(x, tt, dt)
        q_xs = p_x0 * (tt[:, :, None] - (tt - dt)[:, :, None])
        q_xs[:, :, m.mask_index] = tt - dt
        steps.append(
            {
                "t": float(timesteps[i]),
                "dt": dt,
                "x": tolist(x),
                "model_logits": tolist(model_logits),
                "uniforms": tolist(u),
                "q_xs": tolist(q_xs),
                "x_next": tolist(x_next),
                "seed": seed,
            }
        )
        x = x_next
    out["steps"] = steps
    x_partial = x.clone()
    x_partial[:, ::3] = m.mask_index
    t0 = timesteps[-1] * torch.ones(B, 1)
    with torch.no_grad():
        final = m.forward(x_partial, m.noise(t0)[0]).argmax(dim=-1)
        final_logits = m.backbone(x_partial, m._process_sigma(m.noise(t0)[0]))
    out["noise_removal"] = {
        "t": float(timesteps[-1]),
        "x": tolist(x_partial),
        "model_logits": tolist(final_logits),
        "x_next": tolist(final),
    }

    # Gen.-PPL (compute_generative_perplexity, retokenize=True)
    m.compute_generative_perplexity(TEXTS, retokenize=True, max_length=EVAL_MAX_LENGTH)
    out["gen_ppl"] = {
        "gen_ppl": float(m.gen_ppl_metric.compute()),
        "nll_sum": float(m.gen_ppl_metric.mean_value),
        "n_tokens": float(m.gen_ppl_metric.weight),
    }
    return out


# ----------------------------------------------------------------------------- DUO


def run_duo(repo: Path, state: dict, evaluator: Path, x0: torch.Tensor, sample_ids: torch.Tensor) -> dict:
    use_repo(repo)
    import algo  # s-sahoo/duo algo.py
    import trainer_base

    cfg = compose(
        repo / "configs",
        [
            "algo=duo_base",
            "model=tiny",
            *size_overrides(),
            f"eval.gen_ppl_eval_model_name_or_path={evaluator}",
            f"eval.perplexity_batch_size={EVAL_BATCH}",
        ],
    )
    m = algo.DUO_BASE(cfg, tokenizer=DataTokenizer(N_DATA + 1))
    assert m.vocab_size == N_DATA + 1 and m.time_conditioning and cfg.sampling.use_float64
    m.backbone.load_state_dict(state)
    m.eval()
    out = {
        "time_conditioning": bool(m.time_conditioning),
        "use_float64": bool(cfg.sampling.use_float64),
        "noise_removal": cfg.sampling.noise_removal,
    }

    rec_t, rec_x = Recorder(m, "_sample_t"), Recorder(m, "q_xt")
    torch.manual_seed(12)
    with torch.no_grad():
        loss = m._loss(x0, None, torch.ones_like(x0))
    t, xt = rec_t.value, rec_x.value
    rec_t.restore(), rec_x.restore()
    sigma_in = m._process_sigma(m._sigma_from_alphat(m.noise(t)[1].unsqueeze(-1)))
    with torch.no_grad():
        logits = m.backbone(xt, sigma_in)
    out["loss"] = {
        "seed": 12,
        "t": tolist(t),
        "xt": tolist(xt),
        "sigma_in": tolist(sigma_in),
        "loss_float32": float(loss.loss),
        "nll_sum_float32": float(loss.nlls),
    }
    out["logits"] = {"xt": tolist(xt), "sigma_in": tolist(sigma_in), "logits": tolist(logits)}

    real = fixed_backbone(m, logits.double())
    m._sample_t = lambda n, accum_step: t.double()
    m.q_xt = lambda x, alpha_t: xt
    loss64 = m._loss(x0, None, torch.ones_like(x0))
    nll64 = m.nll(x0, None, None)  # per token
    del m._sample_t, m.q_xt
    m.backbone = real
    out["loss"]["loss_float64"] = float(loss64.loss)
    out["loss"]["nlls_float64"] = tolist(nll64)

    # sampler: ancestral steps from the prior, then the ancestral noise removal (alpha_s = 1)
    captured = {}
    real_sample = trainer_base.sample_categorical

    def sample_categorical(probs):
        captured["probs"] = probs.clone()
        return real_sample(probs)

    trainer_base.sample_categorical = sample_categorical
    torch.manual_seed(30)
    x = m.prior_sample(B, L)
    timesteps = torch.linspace(1, 1e-5, STEPS + 1)
    steps = []
    for i, seed in ((0, 31), (1, 32), (STEPS, 33)):
        final = i == STEPS
        tt = timesteps[i] * torch.ones(B, 1)
        dt = None if final else timesteps[i] - timesteps[i + 1]
        with torch.no_grad():
            model_logits = m.backbone(x, m._process_sigma(m._sigma_from_alphat(m.noise(tt)[1])))
        torch.manual_seed(seed)
        u = torch.rand(B, L, m.vocab_size, dtype=torch.float64)
        torch.manual_seed(seed)
        with torch.no_grad():
            _, x_next = m._ancestral_update(x, tt, None, dt, noise_removal_step=final)
        steps.append(
            {
                "t": float(timesteps[i]),
                "s": 0.0 if final else float(timesteps[i + 1]),
                "noise_removal_step": final,
                "x": tolist(x),
                "model_logits": tolist(model_logits),
                "uniforms": tolist(u),
                "q_xs": tolist(captured["probs"]),
                "x_next": tolist(x_next),
                "seed": seed,
            }
        )
        x = x_next
    trainer_base.sample_categorical = real_sample
    out["steps"] = steps

    # Gen.-PPL and entropy (metrics.Metrics)
    m.metrics.record_generative_perplexity(TEXTS, max_length=EVAL_MAX_LENGTH, retokenize=True, device="cpu")
    m.metrics.record_entropy(sample_ids)
    g = m.metrics.gen_ppl
    out["gen_ppl"] = {
        "gen_ppl": float(g.compute()),
        "nll_sum": float(g.mean_value),
        "n_tokens": float(g.weight),
        "entropy": float(m.metrics.sample_entropy.compute()),
    }
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mdlm", type=Path, required=True)
    ap.add_argument("--mdlm-commit", required=True)
    ap.add_argument("--duo", type=Path, required=True)
    ap.add_argument("--duo-commit", required=True)
    a = ap.parse_args()
    REPOS.extend([a.mdlm.resolve(), a.duo.resolve()])
    torch.set_num_threads(1)
    OUT_DIR.mkdir(exist_ok=True)
    evaluator = OUT_DIR / "evaluator"
    make_evaluator(evaluator)
    # imported before the stand-ins, which they (and transformers, in make_evaluator) probe for
    importlib.import_module("datasets"), importlib.import_module("lightning")
    install_stand_ins()

    g = torch.Generator().manual_seed(5)
    x0 = torch.randint(0, N_DATA, (B, L), generator=g)
    sample_ids = torch.randint(0, 12, (3, L), generator=g)  # for the entropy: repeated ids

    # the reference DiT: MDLM's class, randomized; DUO's class loads the same state dict
    use_repo(a.mdlm)
    cfg = compose(a.mdlm / "configs", ["model=tiny", *size_overrides()])
    import models.dit

    torch.manual_seed(0)
    dit = models.dit.DIT(cfg, vocab_size=N_DATA + 1)
    randomize(dit)
    state = {k: v.clone() for k, v in dit.state_dict().items()}

    from safetensors.torch import save_file

    save_file({"backbone." + k: v.contiguous() for k, v in state.items()}, str(OUT_DIR / "dit.safetensors"))
    mdlm = run_mdlm(a.mdlm.resolve(), state, evaluator, x0)
    duo = run_duo(a.duo.resolve(), state, evaluator, x0, sample_ids)
    import transformers

    data = {
        "about": (
            "Outputs of the MDLM and DUO reference code on fixed inputs and draws, made by "
            "tests/data/make_reference_parity.py (see its docstring) and compared by tests/test_reference_parity.py."
        ),
        "reference": {
            "kuleshov-group/mdlm": a.mdlm_commit,
            "s-sahoo/duo": a.duo_commit,
            "flash_attn_stand_in": "Dao-AILab/flash-attention 0251105a2fb19d2957484b7f023cd8c115286ced "
            "flash_attn/layers/rotary.py apply_rotary_emb_torch; exact varlen attention",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "model": {**SIZE, "vocab_size": N_DATA + 1, "weights": "reference_parity/dit.safetensors"},
        "x0": tolist(x0),
        "sample_ids": tolist(sample_ids),
        "texts": TEXTS,
        "eval": {
            "folder": "reference_parity/evaluator",
            "max_length": EVAL_MAX_LENGTH,
            "batch_size": EVAL_BATCH,
            "call_size": len(TEXTS),
        },
        "mdlm": mdlm,
        "duo": duo,
    }
    assert all(math.isfinite(v) for v in (mdlm["loss"]["loss_float64"], duo["loss"]["loss_float64"]))
    OUT_JSON.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(f"wrote {OUT_JSON} ({OUT_JSON.stat().st_size} bytes) and {OUT_DIR}")


if __name__ == "__main__":
    main()
