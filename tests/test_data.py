"""Data sources: the synthetic language's exact likelihood, the MDLM blocking, bad input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from tests.conftest import mdlm_blocks
from tokendrift.core.data import SyntheticHMM, make_source
from tokendrift.core.utils import TokenDriftError
from tokendrift.jobs.prepare import prepare

TINY = {
    "kind": "synthetic",
    "n_states": 3,
    "vocab_size": 4,
    "length": 4,
    "tokens_per_state": 2,
    "n_successors": 1,
    "seed": 1,
    "mc_samples": 2000,
}


def test_forward_algorithm_equals_brute_force_enumeration():
    src = make_source(TINY)
    seqs = torch.tensor(list(itertools.product(range(4), repeat=4)))
    ll = src.log_likelihood(seqs)
    # brute force: sum over all hidden paths
    brute = []
    for x in seqs.tolist():
        total = 0.0
        for path in itertools.product(range(3), repeat=4):
            p = src.init[path[0]] * src.E[path[0], x[0]]
            for t in range(1, 4):
                p *= src.T[path[t - 1], path[t]] * src.E[path[t], x[t]]
            total += p
        brute.append(math.log(total))
    assert torch.allclose(ll, torch.tensor(brute, dtype=torch.float64), atol=1e-10)
    assert float(ll.exp().sum()) == pytest.approx(1.0, abs=1e-10)


def test_sample_frequencies_match_exact_probabilities():
    src = make_source(TINY)
    x = src.sample(40000, 3)
    seqs, counts = torch.unique(x, dim=0, return_counts=True)
    p = src.log_likelihood(seqs).exp()
    top = counts.argsort(descending=True)[:5]
    for i in top:
        assert float(counts[i]) / 40000 == pytest.approx(float(p[i]), abs=0.01)


def test_batches_are_deterministic_and_splits_differ():
    src = make_source({"kind": "synthetic"})
    a = src.batch("train", 7, 16)
    assert torch.equal(a, src.batch("train", 7, 16)) and a.shape == (16, 64) and a.dtype == torch.long
    assert not torch.equal(a, src.batch("train", 8, 16))
    assert not torch.equal(a, src.batch("valid", 7, 16))
    with pytest.raises(TokenDriftError, match="split"):
        src.batch("test", 0, 2)


def test_the_training_seed_selects_the_train_stream_and_leaves_validation_alone():
    src = make_source({"kind": "synthetic"})
    base = src.batch("train", 3, 8)
    assert torch.equal(src.batch("train", 3, 8, seed=0), base)  # seed 0 = the source's own stream
    assert torch.equal(src.batch("train", 3, 8, seed=None), base)
    one, two = src.batch("train", 3, 8, seed=1), src.batch("train", 3, 8, seed=2)
    assert not torch.equal(one, base) and not torch.equal(one, two) and not torch.equal(two, base)
    assert torch.equal(src.batch("train", 3, 8, seed=1), one)  # deterministic per (seed, index)


def test_pseudo_words_are_distinct_and_round_trip_through_the_tokenizer():
    src = make_source({"kind": "synthetic"})
    assert len(set(src.words)) == 256 and all(w.isalpha() for w in src.words)
    x = src.batch("valid", 0, 4)
    text = src.decode(x)
    tok = src.hf_tokenizer()
    assert tok(text, return_tensors="pt")["input_ids"].tolist() == x.tolist()
    assert tok.eos_token_id == 256 and len(tok) == 258


def test_true_samples_score_at_the_entropy_rate_and_the_marginal_trap():
    src = make_source({"kind": "synthetic"})
    x = src.sample(2048, 11)
    nll = -src.log_likelihood(x) / src.length
    assert float(nll.mean()) == pytest.approx(src.entropy_rate, abs=4 * float(nll.std()) / math.sqrt(2048))
    assert 0 < src.entropy_rate_se < 0.01
    # tokens drawn independently from the correct per-position marginals form improbable sequences
    g = torch.Generator().manual_seed(0)
    shuffled = torch.stack([x[torch.randperm(2048, generator=g), j] for j in range(src.length)], 1)
    gap = float((-src.log_likelihood(shuffled) / src.length).mean()) - float(nll.mean())
    assert gap > 0.5


def test_mdlm_blocking():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]]  # + EOS (0) each: 14 tokens, bodies of 3
    blocks = mdlm_blocks(docs, length=5, bos=0, eos=0)
    assert blocks.tolist() == [[0, 1, 2, 3, 0], [0, 0, 4, 5, 0], [0, 0, 6, 7, 0], [0, 8, 9, 0, 0]]  # (10, EOS) dropped


def _write_dataset(path, n_docs=60):
    import datasets

    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "light"]
    texts = [" ".join(rng.choice(words, size=rng.integers(20, 60))) + "." for _ in range(n_docs)]
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(path))
    return texts


def _train_tokenizer(folder, texts):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=300, special_tokens=["<|endoftext|>"])
    PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>").save_pretrained(folder)


def test_openwebtext_path_on_a_local_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    texts = _write_dataset(tmp_path / "owt")
    _train_tokenizer(tmp_path / "tok", texts)
    cfg = {
        "kind": "openwebtext",
        "path": str(tmp_path / "owt"),
        "tokenizer": str(tmp_path / "tok"),
        "n_valid_docs": 10,
        "length": 32,
        "cache_dir": str(tmp_path / "cache"),
    }
    prepare(cfg, progress=False)  # the data stage; jobs only read what it wrote
    src = make_source(cfg)
    tok = src.hf_tokenizer()
    eos = tok.eos_token_id
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    want_valid = mdlm_blocks(ids[-10:], 32, eos, eos)
    want_train = mdlm_blocks(ids[:-10], 32, eos, eos)
    assert src.num_blocks("valid") == len(want_valid) and src.num_blocks("train") == len(want_train)
    assert src.batch("valid", 0, 3).tolist() == want_valid[:3].tolist()
    train_rows = {tuple(r) for r in want_train.tolist()}
    assert all(tuple(r) in train_rows for r in src.batch("train", 5, 4).tolist())
    assert (src.batch("train", 0, 2)[:, 0] == eos).all() and src.vocab_size == len(tok)
    again = make_source(cfg)  # from the cache
    assert torch.equal(again.batch("train", 3, 4), src.batch("train", 3, 4))
    assert not list((tmp_path / "cache").rglob("*.tmp"))


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"kind": "wikipedia"}, "source.kind"),
        ({"kind": "synthetic", "n_states": 0}, "source.n_states"),
        ({"kind": "synthetic", "stickiness": 1.5}, "source.stickiness"),
        ({"kind": "synthetic", "tokenizer": "gpt2"}, "tokenizer"),
        ({"kind": "textdir", "path": "/nonexistent/corpus"}, "/nonexistent/corpus"),
        ({"kind": "openwebtext", "path": "/nonexistent/owt", "tokenizer": "/nonexistent/tok"}, "/nonexistent/owt"),
    ],
)
def test_bad_source_config_names_the_field(cfg, message, tmp_path):
    with pytest.raises(TokenDriftError, match=message):
        prepare({**cfg, "cache_dir": str(tmp_path)} if cfg["kind"] != "synthetic" else cfg, progress=False)


def test_empty_corpus_folder_is_refused(tmp_path):
    (tmp_path / "notes.md").write_text("not a txt file")
    with pytest.raises(TokenDriftError, match=f"{tmp_path}.*no .txt files"):
        prepare({"kind": "textdir", "path": str(tmp_path), "cache_dir": str(tmp_path / "c")}, progress=False)


def test_log_likelihood_checks_ids():
    src = SyntheticHMM(make_source(TINY).config)
    with pytest.raises(TokenDriftError, match="ids"):
        src.log_likelihood(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TokenDriftError, match="ids"):
        src.log_likelihood(torch.full((1, 4), 9))
