"""Data sources behind one interface (``make_source(cfg) -> TokenSource``).

* ``synthetic``: the embedded default (docs/embedded_default.md): a seeded hidden Markov language
  with sticky states that each emit from their own small set of pseudo-words and move along a
  sparse "grammar" of successor states. Its exact log-likelihood (forward algorithm) and
  entropy rate are computed, so Gen.-PPL has an oracle. Tokens drawn independently from the
  right per-position marginals form improbable combinations: the marginal trap that makes
  few-step parallel decoding fail.
* ``openwebtext``: OpenWebText (or any dataset with a "text" column) with the MDLM blocking:
  the last ``n_valid_docs`` documents are the validation split; each document + EOS,
  concatenated, cut into blocks of L - 2 with BOS and EOS added; remainder dropped.
* ``textdir``: a folder of the user's .txt files (one document each) with a byte-level BPE
  tokenizer trained on them by ``tokenizers``; same blocking.

Both text sources read the folder that the data stage (``tokendrift.jobs.prepare``) wrote once:
flat token files mapped read-only, and the tokenizer saved beside them.

Every source gives ``batch(split, index, batch_size)``: the index-th batch, computed without
the earlier ones, so training resumes exactly from a data position.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from .records import write_record
from .source import add_source_args, normalize, prepared_dir, source_of
from .utils import TokenDriftError, read_json

SPLITS = {"train": 0, "valid": 1}


def _check_split(split: str) -> int:
    if split not in SPLITS:
        raise TokenDriftError(f"split: {split!r} is not one of {list(SPLITS)}")
    return SPLITS[split]


def make_source(cfg: dict):
    """Validate a source config (tokendrift/schemas/source.schema.yaml) and build the source."""
    cfg = normalize(cfg)
    return {"synthetic": SyntheticHMM, "openwebtext": BlockedText, "textdir": BlockedText}[cfg["kind"]](cfg)


# --------------------------------------------------------------------------- synthetic


def pseudo_words(n: int, seed: int) -> list[str]:
    """n distinct readable pseudo-words (consonant-vowel syllables), fixed by the seed."""
    cons, vows = "bdfgklmnprstvz", "aeiou"
    syll = [c + v for c in cons for v in vows]
    rng = np.random.default_rng([seed, 7])
    words: list[str] = []
    seen = set()
    while len(words) < n:
        k = int(rng.integers(2, 4))
        w = "".join(syll[i] for i in rng.integers(0, len(syll), k))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


class SyntheticHMM:
    """A hidden Markov language over pseudo-words with exact log p(x)."""

    def __init__(self, cfg: dict):
        self.config = cfg
        self.name = f"synthetic-hmm(seed={cfg['seed']})"
        self.vocab_size, self.length = cfg["vocab_size"], cfg["length"]
        self.eos_id = self.bos_id = None
        S, V = cfg["n_states"], cfg["vocab_size"]
        rng = np.random.default_rng([cfg["seed"], 1])
        # transitions: stay with prob. stickiness, else move to one of a few successor states
        T = np.zeros((S, S))
        for s in range(S):
            others = [o for o in range(S) if o != s] or [s]
            succ = rng.choice(others, size=min(cfg["n_successors"], len(others)), replace=False)
            T[s, succ] = (1 - cfg["stickiness"]) * rng.dirichlet(np.ones(len(succ)))
            T[s, s] += cfg["stickiness"]
        # emissions: mostly the state's own token subset, plus uniform smoothing
        Em = np.zeros((S, V))
        k = min(cfg["tokens_per_state"], V)
        for s in range(S):
            own = rng.choice(V, size=k, replace=False)
            Em[s, own] = rng.dirichlet(np.full(k, 0.7))
        Em = (1 - cfg["smoothing"]) * Em + cfg["smoothing"] / V
        self.init = np.full(S, 1.0 / S)
        self.T, self.E = T / T.sum(1, keepdims=True), Em / Em.sum(1, keepdims=True)
        self._cumT, self._cumE = np.cumsum(self.T, 1), np.cumsum(self.E, 1)
        self.words = pseudo_words(V, cfg["seed"])

    # -- sampling
    def _sample(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        L, S = self.length, len(self.init)
        state = rng.integers(0, S, n)
        out = np.empty((n, L), dtype=np.int64)
        u_e, u_t = rng.random((L, n)), rng.random((L, n))
        for t in range(L):
            out[:, t] = np.minimum((u_e[t][:, None] > self._cumE[state]).sum(1), self.vocab_size - 1)
            state = np.minimum((u_t[t][:, None] > self._cumT[state]).sum(1), S - 1)
        return torch.from_numpy(out)

    def sample(self, n: int, generator: np.random.Generator | int = 0) -> torch.Tensor:
        rng = generator if isinstance(generator, np.random.Generator) else np.random.default_rng(generator)
        return self._sample(n, rng)

    def batch(self, split: str, index: int, batch_size: int, seed: int | None = None) -> torch.Tensor:
        """The index-th batch of a split; ``seed`` (the training seed) selects the data stream.
        Seed None or 0 is the source's own stream (what every seed drew before the training
        seed reached the data order)."""
        key = [self.config["seed"], 1000 + _check_split(split), int(index), int(batch_size)]
        return self._sample(batch_size, np.random.default_rng(key + ([int(seed)] if seed else [])))

    # -- exact likelihood
    def log_likelihood(self, ids: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) per sequence by the forward algorithm, in float64."""
        x = torch.as_tensor(ids).long()
        if x.ndim != 2 or x.shape[1] != self.length:
            raise TokenDriftError(f"ids: expected shape [N, {self.length}], got {list(x.shape)}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
            raise TokenDriftError(f"ids: token ids outside [0, {self.vocab_size})")
        with np.errstate(divide="ignore"):  # impossible transitions: log 0 = -inf
            logT = torch.from_numpy(np.log(self.T))
        logE = torch.from_numpy(np.log(self.E))  # [S, V]
        alpha = torch.from_numpy(np.log(self.init))[None] + logE[:, x[:, 0]].T
        for t in range(1, x.shape[1]):
            alpha = torch.logsumexp(alpha[:, :, None] + logT[None], dim=1) + logE[:, x[:, t]].T
        return torch.logsumexp(alpha, dim=1)

    @functools.cached_property
    def _entropy_mc(self) -> tuple[float, float]:
        n = self.config["mc_samples"]
        ll = self.log_likelihood(self.sample(n, np.random.default_rng([self.config["seed"], 99])))
        per_tok = -ll.numpy() / self.length
        return float(per_tok.mean()), float(per_tok.std(ddof=1) / math.sqrt(n))

    @property
    def entropy_rate(self) -> float:
        """H(X_1..L)/L in nats/token (Monte Carlo over exact log-likelihoods; SE in entropy_rate_se)."""
        return self._entropy_mc[0]

    @property
    def entropy_rate_se(self) -> float:
        return self._entropy_mc[1]

    # -- text
    def decode(self, ids) -> list[str]:
        return [" ".join(self.words[i] for i in row) for row in torch.as_tensor(ids).tolist()]

    @functools.cache
    def hf_tokenizer(self):
        """Word-level tokenizer over the pseudo-words: ids 0..V-1, then <eos> (= pad), <unk>."""
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        vocab = {w: i for i, w in enumerate(self.words)}
        vocab["<eos>"], vocab["<unk>"] = self.vocab_size, self.vocab_size + 1
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>", unk_token="<unk>", bos_token="<eos>"
        )


# --------------------------------------------------------------------------- OpenWebText / text folder


class BlockedText:
    """OpenWebText (or a dataset with a "text" column) or a folder of .txt files, MDLM-blocked,
    read from the data stage's prepared folder (tokendrift.jobs.prepare)."""

    def __init__(self, cfg: dict):
        self.config = cfg
        self.length = cfg["length"]
        self.folder = prepared_dir(cfg)
        if not (self.folder / "meta.json").exists():
            raise TokenDriftError(
                f"source: the prepared data {self.folder} does not exist: the data stage writes it "
                f"(Snakemake rule prepare_data, or `tokendrift prepare --kind ...`)"
            )
        self.meta = read_json(self.folder / "meta.json", "prepared data meta")
        from transformers import PreTrainedTokenizerFast

        self._tok = PreTrainedTokenizerFast.from_pretrained(self.folder / "tokenizer")
        self.vocab_size = len(self._tok)
        self.eos_id = self.bos_id = self._tok.eos_token_id
        self.name = f"{cfg['kind']}({cfg['path'] or cfg['name']})"
        dtype = np.dtype(self.meta["dtype"])
        self._flat = {s: np.memmap(self.folder / f"{s}.bin", dtype=dtype, mode="r") for s in SPLITS}
        self._n = {s: len(arr) // (self.length - 2) for s, arr in self._flat.items()}
        for s, n in self._n.items():
            if n == 0:
                raise TokenDriftError(
                    f"source: the {s} split of {self.folder} has no complete block of {self.length} tokens"
                )

    def _blocks_at(self, split: str, rows: np.ndarray) -> np.ndarray:
        """Blocks ``rows`` of a split: [BOS] + the row's L - 2 tokens + [EOS]."""
        body = self.length - 2
        idx = rows[:, None] * body + np.arange(body)
        out = np.empty((len(rows), self.length), dtype=np.int64)
        out[:, 0], out[:, -1] = self.bos_id, self.eos_id
        out[:, 1:-1] = self._flat[split][idx]
        return out

    def num_blocks(self, split: str) -> int:
        return self._n[split]

    def batch(self, split: str, index: int, batch_size: int, seed: int | None = None) -> torch.Tensor:
        """Train: a permutation per epoch, seeded by the source seed and ``seed`` (the training
        seed; None or 0 = the source's own order); valid: in order. Both wrap around."""
        _check_split(split)
        n = self._n[split]
        rows = np.arange(index * batch_size, (index + 1) * batch_size)
        if split == "train":
            rows = np.array([self._permutation(int(r // n), int(seed or 0))[r % n] for r in rows])
        else:
            rows = rows % n
        return torch.from_numpy(self._blocks_at(split, rows))

    @functools.lru_cache(maxsize=2)
    def _permutation(self, epoch: int, seed: int = 0) -> np.ndarray:
        key = [self.config["seed"], epoch] + ([seed] if seed else [])
        return np.random.default_rng(key).permutation(self._n["train"])

    def decode(self, ids) -> list[str]:
        return self._tok.batch_decode(torch.as_tensor(ids).tolist())

    def hf_tokenizer(self):
        return self._tok

    def log_likelihood(self, ids):
        raise NotImplementedError(f"{self.name} has no exact likelihood")

    entropy_rate = None


# --------------------------------------------------------------------------- command line


def write_entropy_rate(cfg: dict, out) -> float:
    """The entropy rate of a source with an exact likelihood (nats per token, with its Monte Carlo
    SE), written to ``out``: exp of it is the oracle Gen.-PPL floor of the tables and figures."""
    kind = normalize(cfg)["kind"]
    if kind != "synthetic":
        raise TokenDriftError(f"source: kind {kind} has no exact likelihood, hence no entropy rate (only synthetic)")
    source = make_source(cfg)
    write_record(out, {"entropy_rate": source.entropy_rate, "entropy_rate_se": source.entropy_rate_se, "source": cfg})
    return source.entropy_rate


def register(sub) -> None:
    p = sub.add_parser("entropy-rate", help="the synthetic source's entropy rate (the oracle Gen.-PPL floor)")
    add_source_args(p)
    p.add_argument("--out", required=True, help="JSON file to write")
    p.set_defaults(func=lambda a: write_entropy_rate(source_of(a), a.out) and 0)
