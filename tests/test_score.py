"""Gen.-PPL (hand computation, first-EOS rule, token weighting), entropy, oracle, the score and
sample commands, and the held-out NELBO."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from tokendrift.cli import main as cli
from tokendrift.core.utils import TokenDriftError
from tokendrift.jobs.score import gen_ppl, load_evaluator, oracle_gen_ppl, sample_entropy

WORDS = ["ka", "lo", "mu", "pe", "ri", "so"]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A random tiny GPT-2 and a word-level tokenizer, saved like a hub model (no downloads)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("lm")
    vocab = {w: i for i, w in enumerate(WORDS)} | {"<eos>": 6, "<unk>": 7}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")  # no pad: pad = eos
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=8, n_positions=16, n_embd=16, n_layer=1, n_head=2, eos_token_id=6, bos_token_id=6)
    )
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return str(folder)


@torch.no_grad()
def hand_nll(model, ids):
    """Sum of -log p(x_t | x_<t) for t >= 1, computed one prefix at a time."""
    total = 0.0
    for t in range(1, len(ids)):
        logits = model(torch.tensor([ids[:t]])).logits[0, -1].double()
        total -= float(torch.log_softmax(logits, -1)[ids[t]])
    return total


def test_nll_matches_a_hand_computation(tiny_lm):
    model, tok = load_evaluator(tiny_lm)
    texts = ["ka lo mu pe", "ri so ka"]
    r = gen_ppl(texts, (model, tok), batch_size=2)
    ids = [tok(t)["input_ids"] for t in texts]
    ids[1] = ids[1] + [tok.eos_token_id]  # pad = EOS: the first pad counts as the row's first EOS (MDLM code)
    want = sum(hand_nll(model, x) for x in ids)
    assert r["n_tokens"] == 3 + 3  # targets x[1:]; later pads are excluded
    assert r["nll_sum"] == pytest.approx(want, rel=1e-5)
    assert r["gen_ppl"] == pytest.approx(math.exp(want / 6), rel=1e-5)


def test_token_weighting_is_not_a_mean_of_sample_perplexities(tiny_lm):
    model, tok = load_evaluator(tiny_lm)
    a, b = gen_ppl(["ka lo mu pe ri so"], (model, tok)), gen_ppl(["so so so ri ri ka"], (model, tok))
    both = gen_ppl(["ka lo mu pe ri so", "so so so ri ri ka"], (model, tok))
    assert both["gen_ppl"] == pytest.approx(math.exp((a["nll_sum"] + b["nll_sum"]) / (a["n_tokens"] + b["n_tokens"])))
    assert both["gen_ppl"] != pytest.approx((a["gen_ppl"] + b["gen_ppl"]) / 2, rel=1e-3)


def test_first_eos_counts_later_eos_do_not(tiny_lm):
    model, tok = load_evaluator(tiny_lm)
    r = gen_ppl(["ka lo <eos> mu <eos> <eos> pe"], (model, tok))
    # ids: ka lo E mu E E pe -> targets lo E mu E E pe; counted: lo, first E, mu, pe
    assert r["n_tokens"] == 4
    ids = tok("ka lo <eos> mu <eos> <eos> pe")["input_ids"]
    logits = model(torch.tensor([ids])).logits[0].detach().double().log_softmax(-1)
    want = -sum(float(logits[t - 1, ids[t]]) for t in (1, 2, 3, 6))
    assert r["nll_sum"] == pytest.approx(want, rel=1e-5)


def test_entropy_of_known_histograms():
    assert sample_entropy(torch.tensor([[0, 0, 0, 0]])) == 0.0
    assert sample_entropy(torch.tensor([[0, 1, 2, 3], [1, 1, 2, 2]])) == pytest.approx((math.log(4) + math.log(2)) / 2)


def test_oracle_gen_ppl():
    class Fake:
        def log_likelihood(self, ids):
            return torch.tensor([-4.0, -8.0], dtype=torch.float64)

    assert oracle_gen_ppl(torch.zeros(2, 4, dtype=torch.long), Fake()) == pytest.approx(math.exp(12 / 8))


def test_true_samples_score_near_the_entropy_rate_floor_under_the_oracle():
    from tokendrift.core.data import make_source

    src = make_source({"kind": "synthetic"})
    ppl = oracle_gen_ppl(src.sample(1024, 3), src)
    assert ppl == pytest.approx(math.exp(src.entropy_rate), rel=0.02)


def _gpt2_style_tokenizer():
    """A byte-level BPE tokenizer like GPT-2's (built here, no downloads), pad = EOS."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    corpus = ["It's a dog 's life . Isn't it , they 're here ! Why ? We 've seen I 'm fine ."] * 20
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=400, special_tokens=["<|endoftext|>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def test_round_trip_uses_the_reference_decode_options():
    from tokendrift.jobs.score import decode_samples, retokenize

    tok = _gpt2_style_tokenizer()
    ids = tok(["a dog 's life . Isn't it , they 're here !<|endoftext|> Why ?"])["input_ids"]
    # transformers 4.38 (MDLM/DUO): special tokens kept, clean_up_tokenization_spaces=True
    assert decode_samples(ids, tok) == ["a dog's life. Isn't it, they're here!<|endoftext|> Why?"]
    plain = tok.batch_decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    assert plain == ["a dog 's life . Isn't it , they 're here !<|endoftext|> Why ?"]  # what 5.x gives
    again = retokenize(decode_samples(ids, tok), tok, 1024)["input_ids"][0].tolist()
    assert again != ids[0] and again.count(tok.eos_token_id) == 1  # the EOS survives as EOS, not as text
    assert retokenize(decode_samples(ids, tok), tok, 5)["input_ids"].shape == (1, 5)  # right truncation


def test_padding_is_per_evaluation_batch(tiny_lm):
    model, tok = load_evaluator(tiny_lm)
    texts = ["ka lo mu", "ka lo mu pe ri", "so ka lo mu", "pe ri so ka"]  # 3, 5 | 4, 4 tokens
    # per batch of 2: only row 0 is shorter than its batch's longest and gets a counted EOS
    assert gen_ppl(texts, (model, tok), batch_size=2)["n_tokens"] == (2 + 4 + 3 + 3) + 1
    # one batch: rows 0, 2, 3 are padded to 5
    assert gen_ppl(texts, (model, tok), batch_size=4)["n_tokens"] == (2 + 4 + 3 + 3) + 3


def test_evaluator_that_cannot_load_is_named(tmp_path):
    with pytest.raises(TokenDriftError, match="evaluator.*no-such-model"):
        load_evaluator(str(tmp_path / "no-such-model"))


# ----------------------------------------------------------------------------- the jobs, end to end


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from tests.conftest import make_init

    return make_init(tmp_path_factory.mktemp("ck") / "mdlm")


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    from tests.conftest import TINY_SOURCE
    from tokendrift.core.data import make_source
    from tokendrift.jobs.evaluator import train_evaluator

    out = tmp_path_factory.mktemp("ev")
    train_evaluator(make_source(TINY_SOURCE), out, steps=3, batch_size=4, n_layer=1, n_embd=16, n_head=2)
    return str(out / "model")


def test_sample_then_score(tmp_path, checkpoint, evaluator):
    s = tmp_path / "s"
    assert cli(["sample", str(checkpoint), "--nfe", "4", "--n-samples", "6", "--batch-size", "4", "--out", str(s)]) == 0
    meta = json.loads((s / "meta.json").read_text())
    assert meta["nfe"] == 4 and meta["precision"] == "float64" and meta["temperature"] == 1.0
    assert meta["forward_passes"] in (4, 5) and "NFE" in meta["nfe_rule"] and len(meta["checkpoint_digest"]) == 16
    assert len((s / "text.jsonl").read_text().splitlines()) == 6
    assert cli(["score", str(s), "--evaluator", evaluator, "--out", str(tmp_path / "score.json")]) == 0
    r = json.loads((tmp_path / "score.json").read_text())
    assert r["gen_ppl"] > 1 and r["oracle_gen_ppl"] > 1 and 0 < r["entropy"] <= math.log(16) and r["nfe"] == 4
    assert (
        cli(["nelbo", str(checkpoint), "--out", str(tmp_path / "n.json"), "--n-batches", "2", "--batch-size", "4"]) == 0
    )
    n = json.loads((tmp_path / "n.json").read_text())
    assert n["nelbo"] > 0 and "entropy_rate" not in n  # computed once by the aggregation, not per job


def _corrupt(folder, how):
    if how == "out_of_vocab":
        save_file({"ids": torch.full((6, 16), 99, dtype=torch.long)}, str(folder / "ids.safetensors"))
    elif how == "truncated":
        data = (folder / "ids.safetensors").read_bytes()
        (folder / "ids.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "lines":
        (folder / "text.jsonl").write_text('{"text": "x"}\n')
    elif how == "meta":
        (folder / "meta.json").write_text("{not json")


@pytest.mark.parametrize(
    "how, names",
    [
        ("out_of_vocab", "ids.safetensors"),
        ("truncated", "ids.safetensors"),
        ("lines", "text.jsonl"),
        ("meta", "meta.json"),
    ],
)
def test_corrupted_sample_folder_is_refused(tmp_path, checkpoint, evaluator, capsys, how, names):
    import shutil

    s = tmp_path / "s"
    cli(["sample", str(checkpoint), "--nfe", "2", "--n-samples", "6", "--out", str(s)])
    _corrupt(s, how)
    capsys.readouterr()
    out = tmp_path / "score.json"
    assert cli(["score", str(s), "--evaluator", evaluator, "--out", str(out)]) == 2
    assert names in capsys.readouterr().err and not out.exists()
    shutil.rmtree(s)


def test_bad_sample_arguments(tmp_path, checkpoint, evaluator, capsys):
    assert cli(["sample", str(checkpoint), "--nfe", "0", "--out", str(tmp_path / "s")]) == 2
    assert "nfe" in capsys.readouterr().err and not (tmp_path / "s").exists()
    assert cli(["sample", str(tmp_path / "nope"), "--nfe", "2", "--out", str(tmp_path / "s")]) == 2
    assert "nope" in capsys.readouterr().err and not (tmp_path / "s").exists()
    cli(["sample", str(checkpoint), "--nfe", "2", "--n-samples", "2", "--out", str(tmp_path / "s")])
    assert (
        cli(["score", str(tmp_path / "s"), "--evaluator", str(tmp_path / "no-lm"), "--out", str(tmp_path / "o.json")])
        == 2
    )
    assert "no-lm" in capsys.readouterr().err and not (tmp_path / "o.json").exists()


def test_duo_pad_mass_model_samples_the_pad_and_scores_it(tmp_path, evaluator):
    """--duo-pad-mass model (the reference sampler): the pad may be drawn, is recorded, accepted by
    the scorer and decoded; the default never draws it."""
    from safetensors.torch import load_file

    from tests.conftest import make_init

    ck = make_init(tmp_path / "duo", "duo")
    for mass in ("model", "zero"):
        s = tmp_path / mass
        args = ["sample", str(ck), "--nfe", "2", "--n-samples", "8", "--duo-pad-mass", mass, "--out", str(s)]
        assert cli(args) == 0
        meta = json.loads((s / "meta.json").read_text())
        pad = meta["vocab_size"] - 1
        assert meta["duo_pad_mass"] == mass
        assert bool((load_file(s / "ids.safetensors")["ids"] == pad).any()) is (mass == "model")
        assert cli(["score", str(s), "--evaluator", evaluator, "--out", str(tmp_path / f"{mass}.json")]) == 0


def test_the_rules_out_template_with_one_nfe_and_one_temperature_names_the_folder(tmp_path, checkpoint):
    """A config with one NFE samples a trained model once: the template is still filled in."""
    out = tmp_path / "step1" / "T{temperature}_nfe{nfe}"
    assert cli(["sample", str(checkpoint), "--nfe", "2", "--n-samples", "2", "--out", str(out)]) == 0
    assert [p.name for p in (tmp_path / "step1").iterdir()] == ["T1.0_nfe2"]
    assert (tmp_path / "step1" / "T1.0_nfe2" / "meta.json").exists()


def test_unwritable_results_folder_is_named_and_nothing_written(tmp_path, checkpoint, evaluator, capsys):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the results folder should be")  # root ignores chmod; a file blocks anyone
    out = blocker / "samples" / "s"
    assert cli(["sample", str(checkpoint), "--nfe", "2", "--n-samples", "2", "--out", str(out)]) == 2
    assert str(blocker) in capsys.readouterr().err
    s = tmp_path / "s"
    cli(["sample", str(checkpoint), "--nfe", "2", "--n-samples", "2", "--out", str(s)])
    capsys.readouterr()
    assert cli(["score", str(s), "--evaluator", evaluator, "--out", str(blocker / "score.json")]) == 2
    assert str(blocker) in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "s"]  # no temporary left behind
