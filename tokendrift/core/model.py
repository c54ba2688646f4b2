"""The DiT backbone of MDLM and DUO (docs/method.md), at any size.

Parameter names and registration order match kuleshov-group/mdlm ``models/dit.py``, so a
Lightning ``state_dict`` (``backbone.*``) or a list of EMA shadow parameters in
``backbone.parameters()`` order loads as is. MDLM runs with time conditioning off (sigma fed
as 0), DUO with it on (sigma = -log alpha_t): the network is the same.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from .utils import TokenDriftError


@dataclass(frozen=True)
class DiTConfig:
    """Size of the DiT. Preset "small" is the 170M OWT configuration of MDLM and DUO:
    169,627,218 parameters with vocabulary 50258 (tests/test_model.py checks it)."""

    vocab_size: int
    hidden_size: int = 768
    n_blocks: int = 12
    n_heads: int = 12
    cond_dim: int = 128
    length: int = 1024
    dropout: float = 0.1
    time_conditioning: bool = False

    PRESETS = {
        "small": dict(vocab_size=50258, hidden_size=768, n_blocks=12, n_heads=12, cond_dim=128, length=1024),
        "tiny": dict(hidden_size=128, n_blocks=4, n_heads=4, cond_dim=64),
    }

    def __post_init__(self):
        for f in ("vocab_size", "hidden_size", "n_blocks", "n_heads", "cond_dim", "length"):
            if int(getattr(self, f)) < 1:
                raise TokenDriftError(f"model.{f}: must be >= 1, got {getattr(self, f)}")
        if self.n_blocks < 2:
            raise TokenDriftError("model.n_blocks: the encoder features need the last two blocks, so >= 2")
        if self.hidden_size % self.n_heads or (self.hidden_size // self.n_heads) % 2:
            raise TokenDriftError(
                f"model.hidden_size: {self.hidden_size} must split into n_heads={self.n_heads} heads of even size"
            )
        if not 0 <= self.dropout < 1:
            raise TokenDriftError(f"model.dropout: must be in [0, 1), got {self.dropout}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "DiTConfig":
        if name not in cls.PRESETS:
            raise TokenDriftError(f"model.preset: {name!r} is not one of {sorted(cls.PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TokenDriftError(f"model: unknown key(s) {unknown}")
        kw = {**cls.PRESETS[name], **overrides}
        if "vocab_size" not in kw:
            raise TokenDriftError("model.vocab_size: required for preset " + name)
        return cls(**kw)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DiTConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class LayerNorm(nn.Module):
    """LayerNorm without bias, computed in fp32 even under autocast (MDLM)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.dim = dim

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            x = F.layer_norm(x.float(), [self.dim])
        return x * self.weight[None, None, :]


class EmbeddingLayer(nn.Module):
    def __init__(self, dim: int, vocab: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab, dim))
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))

    def forward(self, x):
        return self.embedding[x]


class TimestepEmbedder(nn.Module):
    """sigma -> 256-dim sinusoid -> Linear -> SiLU -> Linear (sigma_map.mlp.{0,2})."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t):
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class Rotary(nn.Module):
    def __init__(self, dim: int, base: int = 10_000):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)))

    def forward(self, seq_len: int, device):
        t = torch.arange(seq_len, device=device, dtype=self.inv_freq.dtype)
        freqs = torch.outer(t, self.inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)  # rotate-half (GPT-NeoX) convention, as MDLM
        return emb.cos()[None, :, None, :], emb.sin()[None, :, None, :]


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


def dropout(x, p: float, training: bool, shard: tuple[int, int] = (0, 1)):
    """F.dropout; under data parallel training (``shard`` = (rank, world)) the mask is drawn for
    all ranks' rows and this rank keeps its own, so that the ranks together draw what one
    process draws for the concatenated batch (torch's CPU dropout: a bernoulli mask in x's
    dtype). Only this rank's rows are kept for the backward, as a bool mask, and the kept
    entries are scaled by exactly 1 / (1 - p) (a scalar product in float, rounded once to x's
    dtype, as F.dropout does: a mask divided in bf16 would scale by 1.109375 for p = 0.1)."""
    rank, world = shard
    if not training or p == 0 or world == 1:
        return F.dropout(x, p, training)
    B = x.shape[0]
    draw = torch.empty((B * world, *x.shape[1:]), dtype=x.dtype, device=x.device).bernoulli_(1 - p)
    keep = draw[rank * B : (rank + 1) * B].bool()  # a copy: the all-rank draw is freed here
    return x * keep * (1.0 / (1 - p))


class DDiTBlock(nn.Module):
    """Pre-LN adaLN-zero block: x + gate * dropout(out), for attention then MLP."""

    def __init__(self, dim: int, n_heads: int, cond_dim: int, dropout: float, mlp_ratio: int = 4):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.shard = (0, 1)  # (rank, world) of data parallel training: see dropout()
        self.norm1 = LayerNorm(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.norm2 = LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(approximate="tanh"), nn.Linear(mlp_ratio * dim, dim)
        )
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * dim)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x, cos_sin, c):
        B, L, D = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c)[:, None].chunk(
            6, dim=2
        )
        qkv = self.attn_qkv(modulate(self.norm1(x), shift_msa, scale_msa)).view(
            B, L, 3, self.n_heads, D // self.n_heads
        )
        q, k, v = qkv.unbind(2)
        cos, sin = cos_sin
        with torch.autocast(x.device.type, enabled=False):
            q = (q.float() * cos + rotate_half(q.float()) * sin).to(v.dtype)
            k = (k.float() * cos + rotate_half(k.float()) * sin).to(v.dtype)
        att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=False)
        att = att.transpose(1, 2).reshape(B, L, D)
        x = x + gate_msa * dropout(self.attn_out(att), self.dropout, self.training, self.shard)
        h = self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x + gate_mlp * dropout(h, self.dropout, self.training, self.shard)


class DDitFinalLayer(nn.Module):
    def __init__(self, dim: int, vocab: int, cond_dim: int):
        super().__init__()
        self.norm_final = LayerNorm(dim)
        self.linear = nn.Linear(dim, vocab)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.adaLN_modulation = nn.Linear(cond_dim, 2 * dim)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=2)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """f_theta: token ids (or input embeddings) and sigma -> logits [B, L, V] in float32."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.vocab_embed = EmbeddingLayer(d, config.vocab_size)
        self.sigma_map = TimestepEmbedder(config.cond_dim)
        self.rotary_emb = Rotary(d // config.n_heads)
        self.blocks = nn.ModuleList(
            DDiTBlock(d, config.n_heads, config.cond_dim, config.dropout) for _ in range(config.n_blocks)
        )
        self.output_layer = DDitFinalLayer(d, config.vocab_size, config.cond_dim)

    def shard_dropout(self, rank: int, world: int) -> None:
        """Draw dropout masks as rank ``rank`` of ``world`` data-parallel ranks (see dropout())."""
        for b in self.blocks:
            b.shard = (rank, world)

    @property
    def embedding(self) -> nn.Parameter:
        """E, the [V, d] token embedding matrix."""
        return self.vocab_embed.embedding

    def _trunk(self, x, sigma, inputs_embeds):
        h = self.vocab_embed(x) if inputs_embeds is None else inputs_embeds
        B, L = h.shape[:2]
        if sigma is None or not self.config.time_conditioning:
            sigma = torch.zeros(B, device=h.device)
        c = F.silu(self.sigma_map(sigma))
        cos_sin = self.rotary_emb(L, h.device)
        states = []
        for block in self.blocks:
            h = block(h, cos_sin, c)
            states.append(h)
        return states, c

    def forward(self, x=None, sigma=None, *, inputs_embeds=None):
        states, c = self._trunk(x, sigma, inputs_embeds)
        return self.output_layer(states[-1], c).float()

    def hidden_states(self, x=None, sigma=None, *, inputs_embeds=None):
        """(H^(L-1), H^(L)): outputs of the last two blocks; the output layer is not run."""
        states, _ = self._trunk(x, sigma, inputs_embeds)
        return states[-2], states[-1]
