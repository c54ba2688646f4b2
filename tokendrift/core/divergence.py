"""Distributional scores of a sample set beside Gen.-PPL (docs/evaluation.md).

* MAUVE (Pillutla et al., NeurIPS 2021) by the authors' package ``mauve-text`` from the
  evaluator's features: the hidden state of the last token of each text, of the samples against as
  many reference texts (held-out validation blocks of a text source, fresh samples of the synthetic
  source), fixed by the source's seed and the sample seed.
* An exact divergence where the source is known (the synthetic hidden Markov language): for
  each order n, KL(p̂_n ‖ p_n) between the samples' pooled n-gram frequencies p̂_n and the
  source's exact n-gram marginal p_n (position-averaged, from its initial, transition and
  emission probabilities), with its sampling-noise floor: the same statistic for samples of the
  source itself, of the same count.
"""

from __future__ import annotations

import numpy as np
import torch

from .utils import TokenDriftError

# -------------------------------------------------------------------------------------- MAUVE


def reference_ids(source, n: int, seed: int) -> tuple[torch.Tensor, dict]:
    """``n`` reference sequences of the source, fixed by its seed and the sample ``seed``, and
    the record of which: validation blocks (chosen without replacement) of a text source, or
    fresh samples of the synthetic source (a random stream of their own)."""
    key = [int(source.config["seed"]), 28, int(seed)]
    rng = np.random.default_rng(key)
    if hasattr(source, "num_blocks"):
        total = source.num_blocks("valid")
        if n > total:
            raise TokenDriftError(
                f"score.mauve_n_reference: {n} reference texts asked for, the validation split has {total} blocks"
            )
        rows = np.sort(rng.choice(total, size=n, replace=False))
        ids = torch.from_numpy(source._blocks_at("valid", rows))
        return ids, {"kind": "validation blocks", "split": "valid", "rng_key": key, "rows": rows.tolist()}
    return source.sample(n, rng), {"kind": "source samples", "rng_key": key, "n": n}


def mauve(p_features: np.ndarray, q_features: np.ndarray, opts: dict) -> dict:
    """MAUVE of the samples' features ``p`` against the reference's ``q`` by ``mauve.compute_mauve``;
    ``opts`` are the score options ``mauve_*`` (tokendrift/schemas/score.schema.yaml)."""
    import mauve as mauve_lib

    out = mauve_lib.compute_mauve(
        p_features=p_features,
        q_features=q_features,
        num_buckets=opts["mauve_clusters"] or "auto",
        kmeans_explained_var=opts["mauve_explained_var"],
        kmeans_num_redo=opts["mauve_kmeans_redo"],
        kmeans_max_iter=opts["mauve_kmeans_iter"],
        mauve_scaling_factor=opts["mauve_scaling"],
        seed=opts["mauve_seed"],
        verbose=False,
    )
    return {
        "mauve": float(out.mauve),
        "frontier_integral": float(out.frontier_integral),
        "mauve_star": float(out.mauve_star),
        "num_buckets": int(out.num_buckets),
    }


# ---------------------------------------------------------------------- exact n-gram divergence


def ngrams(ids: torch.Tensor, n: int) -> np.ndarray:
    """Every n-gram of every sequence (windows within a sequence, pooled over positions): [M, n]."""
    x = torch.as_tensor(ids).long().numpy()
    if x.shape[1] < n:
        raise TokenDriftError(f"score.ngram_max_order: {n} exceeds the sequence length {x.shape[1]}")
    return np.lib.stride_tricks.sliding_window_view(x, n, axis=1).reshape(-1, n)


def position_average(source, n: int) -> np.ndarray:
    """π̄ = mean over start positions t = 0..L-n of the hidden-state law π_t = π_0 Tᵗ."""
    pi, acc = source.init.copy(), np.zeros_like(source.init)
    starts = source.length - n + 1
    for _ in range(starts):
        acc += pi
        pi = pi @ source.T
    return acc / starts


def exact_marginal(source, grams: np.ndarray) -> np.ndarray:
    """p_n(w) = π̄ᵀ diag(E[:, w₁]) T diag(E[:, w₂]) ⋯ T E[:, wₙ]: the probability that a window of n
    tokens, at a start position drawn uniformly, reads w (forward algorithm over the window)."""
    emit = np.ascontiguousarray(source.E.T)  # [V, S]: a token's emission probability in every state
    alpha = position_average(source, grams.shape[1])[None] * emit[grams[:, 0]]
    for j in range(1, grams.shape[1]):
        alpha = (alpha @ source.T) * emit[grams[:, j]]
    return alpha.sum(1)


def ngram_kl(ids: torch.Tensor, source, n: int) -> float:
    """KL(p̂_n ‖ p_n) in nats: the samples' pooled n-gram frequencies p̂_n against the source's exact
    marginal p_n (finite: the emission smoothing gives every n-gram p_n > 0)."""
    V = int(source.vocab_size)
    codes, counts = np.unique(ngrams(ids, n) @ V ** np.arange(n - 1, -1, -1), return_counts=True)
    grams = (codes[:, None] // V ** np.arange(n - 1, -1, -1)) % V  # each distinct n-gram once
    p_hat = counts / counts.sum()
    return float(np.sum(p_hat * (np.log(p_hat) - np.log(exact_marginal(source, grams)))))


def noise_floor(source, count: int, max_order: int, draws: int, seed: int) -> dict:
    """KL(p̂_n ‖ p_n) of ``draws`` sets of ``count`` source samples (fixed by the source seed and the
    sample seed): its mean and SD per order n = 1..max_order, and the random stream's key."""
    key = [int(source.config["seed"]), 2602, int(seed)]
    rng = np.random.default_rng(key)
    sets = [source.sample(count, rng) for _ in range(draws)]
    floor = {n: [ngram_kl(x, source, n) for x in sets] for n in range(1, max_order + 1)}
    return {
        "rng_key": key,
        "mean": {n: float(np.mean(v)) for n, v in floor.items()},
        "sd": {n: float(np.std(v, ddof=1)) for n, v in floor.items()},
    }


def ngram_divergence(ids: torch.Tensor, source, max_order: int, draws: int, seed: int, floor: dict | None = None):
    """KL(p̂_n ‖ p_n) for n = 1..max_order, each with its noise floor: mean and SD of the same
    statistic over ``draws`` sets of source samples of the samples' count (``noise_floor``; pass
    ``floor`` to reuse it for every cell of a seed)."""
    floor = floor or noise_floor(source, ids.shape[0], max_order, draws, seed)
    out = {}
    for n in range(1, max_order + 1):
        out[str(n)] = {
            "kl": ngram_kl(ids, source, n),
            "floor_mean": floor["mean"][n],
            "floor_sd": floor["sd"][n],
            "windows": int(ids.shape[0] * (ids.shape[1] - n + 1)),
            "cells": int(source.vocab_size) ** n,
        }
    key = floor["rng_key"]
    return {
        "statistic": "KL(p̂_n ‖ p_n), nats: pooled n-gram frequencies of the samples against the source's exact "
        "position-averaged n-gram marginal; floor = the same for source samples of the same count",
        "floor_draws": draws,
        "floor_rng_key": key,
        "orders": out,
    }
