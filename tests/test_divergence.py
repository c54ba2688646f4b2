"""MAUVE through mauve-text on the evaluator's features, and the exact n-gram divergence of the
synthetic source with its sampling-noise floor (tokendrift/core/divergence.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tokendrift.core import divergence
from tokendrift.core.data import make_source
from tokendrift.core.records import write_record
from tokendrift.jobs.score import OPTIONS, decode_samples, gen_ppl, load_evaluator, score_samples

# the embedded default's language (workflow/config/default.yaml), shortened to 32 tokens
SOURCE = {"kind": "synthetic", "seed": 0, "stickiness": 0.7, "tokens_per_state": 6, "smoothing": 0.005, "length": 32}


@pytest.fixture(scope="module")
def source():
    return make_source(SOURCE)


def shuffled_columns(ids: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The marginal trap: every position keeps its exact marginal, the tokens are independent."""
    g = torch.Generator().manual_seed(seed)
    out = ids.clone()
    for t in range(ids.shape[1]):
        out[:, t] = ids[torch.randperm(ids.shape[0], generator=g), t]
    return out


def test_exact_marginals_are_distributions_and_match_the_sources_frequencies(source):
    V = source.vocab_size
    every = np.array([[a, b] for a in range(V) for b in range(V)])
    assert divergence.exact_marginal(source, every).sum() == pytest.approx(1.0, abs=1e-12)
    p1 = divergence.exact_marginal(source, np.arange(V)[:, None])
    assert p1.sum() == pytest.approx(1.0, abs=1e-12)
    # 4000 sequences: the pooled unigram frequencies converge to the position-averaged marginal
    grams = divergence.ngrams(source.sample(4000, 11), 1)[:, 0]
    freq = np.bincount(grams, minlength=V) / len(grams)
    assert np.abs(freq - p1).max() < 0.004 and np.abs(freq - p1).max() > 0  # a real estimate, not a copy
    # position 0 alone follows the initial law: pi_0 E, which is what position_average gives for n = L
    start = source.init @ source.E
    first = np.bincount(source.sample(4000, 12)[:, 0].numpy(), minlength=V) / 4000
    assert np.abs(first - start).max() < 0.02


def test_source_samples_sit_at_the_floor_and_the_marginal_trap_does_not(source):
    ids = source.sample(64, 5)
    floor = divergence.noise_floor(source, 64, 3, 16, seed=1)
    own = divergence.ngram_divergence(ids, source, 3, 16, 1, floor)["orders"]
    trap = divergence.ngram_divergence(shuffled_columns(ids), source, 3, 16, 1, floor)["orders"]
    for n in ("1", "2", "3"):
        assert abs(own[n]["kl"] - own[n]["floor_mean"]) < 4 * own[n]["floor_sd"]  # the source is at its floor
    # independent tokens with the right marginals: unigrams unchanged, bigrams and trigrams far off
    assert trap["1"]["kl"] == pytest.approx(own["1"]["kl"])
    for n in ("2", "3"):
        assert trap[n]["kl"] > own[n]["floor_mean"] + 20 * own[n]["floor_sd"]
    assert own["2"]["windows"] == 64 * 31 and own["3"]["cells"] == 256**3


def test_the_floor_is_fixed_by_the_seed(source):
    a, b = divergence.noise_floor(source, 16, 2, 4, seed=3), divergence.noise_floor(source, 16, 2, 4, seed=3)
    assert a == b and a != divergence.noise_floor(source, 16, 2, 4, seed=4)


@pytest.fixture(scope="module")
def evaluator(source, tmp_path_factory):
    from tokendrift.jobs.evaluator import train_evaluator

    out = tmp_path_factory.mktemp("ev")
    train_evaluator(source, out, steps=60, batch_size=16, n_layer=1, n_head=2, n_embd=32)
    return load_evaluator(str(out / "model"))


def features(ids, source, evaluator):
    texts = decode_samples(ids, source.hf_tokenizer())
    return gen_ppl(texts, evaluator, batch_size=64, max_length=1024, layer=-1)["features"]


def test_mauve_real_text_near_1_uniform_noise_near_0(source, evaluator):
    """mauve-text's own numbers on the evaluator's features, 200 texts each (20 clusters):
    the reference against itself 1.0, against fresh source samples about 0.94-0.98, uniform
    random tokens about 0.13-0.17 (a 60-step one-layer evaluator; its last hidden state mostly
    encodes the last word, which noise and text share)."""
    ref = features(source.sample(200, 1), source, evaluator)
    real = features(source.sample(200, 2), source, evaluator)
    noise = features(torch.from_numpy(np.random.default_rng(3).integers(0, 256, (200, 32))), source, evaluator)
    same, fresh, bad = (divergence.mauve(x, ref, OPTIONS) for x in (ref, real, noise))
    assert same["mauve"] == pytest.approx(1.0) and same["num_buckets"] == 20  # the authors' n / 10
    assert fresh["mauve"] > 0.9
    assert bad["mauve"] < 0.25


def test_score_file_records_mauve_and_the_exact_divergence(tmp_path, source, evaluator):
    """Through score_samples, as the pipeline: the reference is fixed by the seed and recorded; a
    second folder of the same seed reuses its features; the settings are written."""
    from safetensors.torch import save_file

    def folder(name, ids, seed):
        d = tmp_path / name
        d.mkdir()
        save_file({"ids": ids.contiguous()}, str(d / "ids.safetensors"))
        (d / "text.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in source.decode(ids)))
        meta = {"source": SOURCE, "n_samples": ids.shape[0], "length": 32, "vocab_size": 257, "seed": seed}
        write_record(d / "meta.json", meta, [d / "ids.safetensors", d / "text.jsonl"])  # as the sample job
        return d

    refs: dict = {}
    good = score_samples(folder("a", source.sample(40, 7), 0), evaluator, tmp_path / "a.json", references=refs)
    trap = score_samples(
        folder("b", shuffled_columns(source.sample(40, 7)), 0), evaluator, tmp_path / "b.json", references=refs
    )
    assert len([k for k in refs if k[0] != "floor"]) == 1  # one reference per seed, featurized once
    r = json.loads((tmp_path / "a.json").read_text())
    ref = r["mauve_details"]["reference"]
    assert ref["kind"] == "source samples" and ref["n"] == 40 and ref["rng_key"] == [0, 28, 0]
    assert r["mauve_details"]["settings"]["mauve_scaling"] == 5 and r["mauve_details"]["num_buckets"] == 4
    assert 0 < good["mauve"] <= 1 and math.isfinite(r["ngram_kl2_floor_sd"])
    assert trap["ngram_kl2"] > good["ngram_kl2"] + 10 * good["ngram_kl2_floor_sd"]
    assert r["ngram"]["orders"]["2"]["kl"] == good["ngram_kl2"]


def test_a_layer_the_evaluator_lacks_is_named(tmp_path, source, evaluator):
    from tokendrift.core.utils import TokenDriftError

    d = tmp_path / "s"
    d.mkdir()
    ids = source.sample(4, 0)
    from safetensors.torch import save_file

    save_file({"ids": ids}, str(d / "ids.safetensors"))
    (d / "text.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in source.decode(ids)))
    meta = {"source": SOURCE, "n_samples": 4, "length": 32, "vocab_size": 257}
    write_record(d / "meta.json", meta, [d / "ids.safetensors", d / "text.jsonl"])
    with pytest.raises(TokenDriftError, match="score.mauve_layer: 5"):
        score_samples(d, evaluator, tmp_path / "x.json", options={"mauve_layer": 5})
    assert not (tmp_path / "x.json").exists()
