"""Scoring: Gen.-PPL, sample entropy, oracle Gen.-PPL, and the held-out NELBO of a checkpoint.

Gen.-PPL follows the MDLM/DUO evaluation code (``compute_generative_perplexity``;
docs/evaluation.md): the samples' ids are decoded by the backbone's tokenizer and the text retokenized
by the evaluator's with the reference's options (``decode_samples``, ``retokenize``: special
tokens kept, the transformers 4.38 clean-up, pad = eos per evaluation batch, truncation at
``max_length``), scored by the causal LM in fp32; the NLL is taken over the
targets x[1:], counting a target when it is not EOS or when it is the first EOS of its row
(later EOS and pad tokens are excluded; since pad = EOS, the first pad of a row shorter than
the batch's longest counts as its EOS, exactly as in that code); Gen.-PPL = exp(sum NLL / counted tokens) over all
samples: token-weighted, not a mean of per-sample perplexities.

Gen.-PPL falls when a model merely sharpens (docs/evaluation.md), so a score file always
carries the entropy too, and checkpoints get their held-out NELBO (``tokendrift nelbo``).
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from tqdm import tqdm

from ..core import config as configlib
from ..core.hub import provenance
from ..core.records import check, write_record
from ..core.utils import TokenDriftError, read_json, resolve_device

OPTIONS = configlib.defaults("score")  # tokendrift/schemas/score.schema.yaml
NELBO = configlib.defaults("nelbo")  # tokendrift/schemas/nelbo.schema.yaml


def load_evaluator(evaluator: str, device: str = "cpu"):
    """A Hugging Face causal LM and its tokenizer, by name or local folder (never remote code)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(evaluator, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(evaluator, trust_remote_code=False, torch_dtype=torch.float32)
    except Exception as e:  # OSError, ValueError, safetensors errors...
        if not Path(evaluator).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
            from ..core.hub import offline_hint

            raise TokenDriftError("evaluator: " + offline_hint(f"{evaluator!r}")) from None
        raise TokenDriftError(
            f"evaluator: cannot load {evaluator!r} ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model.to(device).eval(), tok


# ----------------------------------------------------------------------------- the text round trip
# The reference evaluation decodes the samples with the backbone's tokenizer and retokenizes the
# text with the evaluator's (kuleshov-group/mdlm diffusion.py: ``self.tokenizer.batch_decode(samples)``
# then ``eval_retokenize``; s-sahoo/duo main.py ``_generate_samples`` then metrics.py
# ``Metrics._eval_retokenize``), both under transformers 4.38.2, whose defaults they took. Every
# option is set here to that value, so a transformers release with other defaults (5.x: no
# clean-up, and none at all for BPE tokenizers) does not change Gen.-PPL.

DECODE_OPTIONS = {"skip_special_tokens": False, "clean_up_tokenization_spaces": True}
RETOKENIZE_OPTIONS = {
    "add_special_tokens": True,
    "split_special_tokens": False,
    "padding": "longest of each evaluation batch, on the right, with EOS",
    "truncation": "right, at max_length",
}


def clean_up_tokenization(text: str) -> str:
    """transformers 4.38.2 ``PreTrainedTokenizerBase.clean_up_tokenization`` (what
    ``clean_up_tokenization_spaces=True`` applied): no space before . ? ! , and English clitics."""
    for a, b in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
        text = text.replace(a, b)
    return text


def decode_samples(ids, tokenizer, pad_id: int | None = None) -> list[str]:
    """The samples as the reference evaluation's text: ``batch_decode`` keeping special tokens
    (an EOS stays "<|endoftext|>" and retokenizes to EOS), then the 4.38 clean-up, applied by us.

    ``pad_id``: DUO's pad, sampled under ``duo_pad_mass: model``. Where it is the id after the
    tokenizer's last (GPT-2: 50257), it decodes as DUO's tokenizer has it, the added special
    token "[PAD]" (s-sahoo/duo dataloader.py get_tokenizer); otherwise as the tokenizer's own."""
    if pad_id is not None and pad_id == len(tokenizer) and bool((torch.as_tensor(ids) == pad_id).any()):
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    texts = tokenizer.batch_decode(
        torch.as_tensor(ids).tolist(), skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    return [clean_up_tokenization(t) for t in texts]


def retokenize(texts: list[str], tok, max_length: int) -> dict:
    """The reference's ``eval_retokenize``: no special tokens added beyond the tokenizer's own
    post-processing (GPT-2 adds none), special-token text parsed as special tokens, right
    truncation at ``max_length``, right padding with pad = EOS to the longest text given."""
    tok.padding_side, tok.truncation_side = "right", "right"
    return tok(
        list(texts),
        return_tensors="pt",
        return_token_type_ids=False,
        return_attention_mask=True,
        add_special_tokens=True,
        split_special_tokens=False,
        truncation=True,
        padding=True,
        max_length=max_length,
    )


@torch.no_grad()
def gen_ppl(
    texts: list[str],
    evaluator,
    *,
    batch_size: int = OPTIONS["batch_size"],
    max_length: int = OPTIONS["max_length"],
    device: str = "cpu",
    progress: bool = False,
    layer: int | None = None,
) -> dict:
    """Token-weighted Gen.-PPL of ``texts`` under a causal LM (name, folder, or (model, tokenizer)).

    Texts are retokenized and padded one evaluation batch at a time, as the reference pads each
    call of its Gen.-PPL function (one sampling batch): a row shorter than its batch's longest
    gets the pad (= EOS) counted as its first EOS, so the padding unit is part of the metric.
    With ``layer``, the same forward pass also gives MAUVE's features (``features``: [N, d]): the
    hidden state at that layer (-1 = the last, as MAUVE's featurizer) of each text's last token."""
    model, tok = load_evaluator(evaluator, device) if isinstance(evaluator, (str, Path)) else evaluator
    texts = list(texts)
    eos = tok.eos_token_id
    nll_sum, n_tokens, feats = 0.0, 0, []
    for i in tqdm(range(0, len(texts), batch_size), desc="score", disable=not progress, mininterval=2.0):
        enc = retokenize(texts[i : i + batch_size], tok, max_length)
        x, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        out = model(x, attention_mask=mask, use_cache=False, output_hidden_states=layer is not None)
        logits = out.logits.float()
        if layer is not None:  # right padding: the last attended position is each text's last token
            last = mask.sum(1) - 1
            feats.append(out.hidden_states[layer][torch.arange(len(x), device=device), last].float().cpu())
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten(), reduction="none").view_as(x[:, 1:])
        first_eos = (x == eos).cumsum(-1) == 1
        counted = (first_eos | (x != eos))[:, 1:]
        nll_sum += float((nll * counted).sum())
        n_tokens += int(counted.sum())
    if n_tokens == 0:
        raise TokenDriftError("samples: no token left to score after retokenization")
    result = {
        "gen_ppl": math.exp(nll_sum / n_tokens),
        "nll_sum": nll_sum,
        "n_tokens": n_tokens,
        "n_samples": len(texts),
    }
    if layer is not None:
        result["features"] = torch.cat(feats).numpy()
    return result


def sample_entropy(ids: torch.Tensor) -> float:
    """Mean over samples of the unigram entropy (nats) of each sample's own token-id histogram."""
    ids = torch.as_tensor(ids).long()
    ents = []
    for row in ids:
        q = torch.bincount(row).double()
        q = q[q > 0] / row.numel()
        ents.append(float(-(q * q.log()).sum()))
    return sum(ents) / len(ents)


def oracle_gen_ppl(ids: torch.Tensor, source) -> float:
    """exp(-sum_i log p(x_i) / (N L)) under the true distribution of the source."""
    ll = source.log_likelihood(ids)
    return math.exp(-float(ll.sum()) / ids.numel())


def read_samples(folder) -> tuple[torch.Tensor, list[str], dict]:
    """Read and cross-check a sample folder (ids, text, meta), naming the bad file."""
    folder = Path(folder)
    meta = read_json(folder / "meta.json", "sample metadata")
    check(folder / "meta.json", "the sample folder's record")
    try:
        ids = load_file(folder / "ids.safetensors")["ids"]
    except FileNotFoundError:
        raise TokenDriftError(f"{folder / 'ids.safetensors'}: missing") from None
    except (SafetensorError, KeyError, OSError) as e:
        raise TokenDriftError(f"{folder / 'ids.safetensors'}: corrupt or truncated ({e})") from None
    try:
        texts = [json.loads(line)["text"] for line in (folder / "text.jsonl").read_text().splitlines()]
    except FileNotFoundError:
        raise TokenDriftError(f"{folder / 'text.jsonl'}: missing") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise TokenDriftError(f"{folder / 'text.jsonl'}: corrupt ({e})") from None
    n_data = int(meta.get("vocab_size", 0)) - 1 + (meta.get("duo_pad_mass") == "model")  # + DUO's pad
    if ids.ndim != 2 or ids.shape[0] != meta.get("n_samples") or ids.shape[1] != meta.get("length"):
        raise TokenDriftError(
            f"{folder / 'ids.safetensors'}: shape {list(ids.shape)} does not match meta.json "
            f"(n_samples={meta.get('n_samples')}, length={meta.get('length')})"
        )
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n_data):
        raise TokenDriftError(
            f"{folder / 'ids.safetensors'}: token ids outside the checkpoint's data vocabulary "
            f"[0, {n_data}) recorded in meta.json"
        )
    if len(texts) != ids.shape[0]:
        raise TokenDriftError(f"{folder / 'text.jsonl'}: {len(texts)} lines for {ids.shape[0]} samples")
    return ids, texts, meta


def score_samples(
    samples: str,
    evaluator,
    out: str,
    *,
    batch_size: int = OPTIONS["batch_size"],
    device: str = "cpu",
    max_length: int = OPTIONS["max_length"],
    evaluator_name: str | None = None,
    options: dict | None = None,
    references: dict | None = None,
) -> dict:
    """Score one sample folder; ``evaluator`` is a name/folder or a loaded (model, tokenizer).
    ``options`` holds the score options ``mauve_*`` and ``ngram_*`` (defaults: the schema's);
    ``references`` caches the reference texts' features (and the n-gram noise floor) across the
    folders of one job."""
    from ..core import divergence
    from ..core.data import make_source

    opts = {**OPTIONS, **(options or {})}
    evaluator_name = evaluator_name or (str(evaluator) if isinstance(evaluator, (str, Path)) else None)
    if isinstance(evaluator, (str, Path)):
        evaluator = load_evaluator(evaluator, device)
    ids, texts, meta = read_samples(samples)
    source = make_source(meta["source"])
    pad_id = int(meta["vocab_size"]) - 1 if meta.get("duo_pad_mass") == "model" else None
    texts = decode_samples(ids, source.hf_tokenizer(), pad_id)  # the reference's round trip, from the ids
    layer = _feature_layer(evaluator[0], opts["mauve_layer"])
    ppl = gen_ppl(
        texts, evaluator, batch_size=batch_size, max_length=max_length, device=device, progress=True, layer=layer
    )
    n_ref = opts["mauve_n_reference"] or ids.shape[0]
    key = (int(meta.get("seed") or 0), n_ref)
    references = {} if references is None else references
    if key not in references:  # the same reference texts for every cell of a seed
        ref_ids, record = divergence.reference_ids(source, n_ref, key[0])
        ref = gen_ppl(
            decode_samples(ref_ids, source.hf_tokenizer()),
            evaluator,
            batch_size=batch_size,
            max_length=max_length,
            device=device,
            layer=layer,
        )
        references[key] = (ref["features"], {**record, "n": n_ref, "gen_ppl": ref["gen_ppl"]})
    ref_features, ref_record = references[key]
    mv = divergence.mauve(ppl["features"], ref_features, opts)
    oracle, ngram = None, None
    # A hidden Markov source: exact likelihood and n-gram marginals (none for samples holding
    # DUO's pad: the source gives it probability 0).
    if hasattr(source, "T") and not (pad_id is not None and bool((ids == pad_id).any())):
        oracle = oracle_gen_ppl(ids, source)
        fkey = ("floor", key[0], ids.shape[0])
        if fkey not in references:  # the same noise floor for every cell of a seed
            references[fkey] = divergence.noise_floor(
                source, ids.shape[0], opts["ngram_max_order"], opts["ngram_floor_draws"], key[0]
            )
        ngram = divergence.ngram_divergence(
            ids, source, opts["ngram_max_order"], opts["ngram_floor_draws"], key[0], references[fkey]
        )
    result = {
        "gen_ppl": ppl["gen_ppl"],
        "n_tokens": ppl["n_tokens"],
        "n_samples": ppl["n_samples"],
        "entropy": sample_entropy(ids),
        "oracle_gen_ppl": oracle,
        "mauve": mv["mauve"],
        "ngram_kl2": ngram["orders"]["2"]["kl"] if ngram and "2" in ngram["orders"] else None,
        "ngram_kl2_floor": ngram["orders"]["2"]["floor_mean"] if ngram and "2" in ngram["orders"] else None,
        "ngram_kl2_floor_sd": ngram["orders"]["2"]["floor_sd"] if ngram and "2" in ngram["orders"] else None,
        "evaluator": evaluator_name,
        "samples": str(samples),
        **{
            k: meta.get(k)
            for k in (
                "nfe",
                "nfe_rule",
                "forward_passes",
                "temperature",
                "precision",
                "duo_pad_mass",
                "seed",
                "diffusion",
                "checkpoint",
                "checkpoint_digest",
                "step",
                "variant",
            )
        },
        "text_round_trip": {
            "decode": DECODE_OPTIONS,
            "retokenize": RETOKENIZE_OPTIONS,
            "batch_size": batch_size,
            "max_length": max_length,
        },
        "mauve_details": {
            **mv,
            "library": f"mauve-text {_version('mauve-text')}",
            "features": f"evaluator hidden state {layer} of each text's last token (retokenized as for Gen.-PPL)",
            "settings": {k: opts[k] for k in OPTIONS if k.startswith("mauve_")},
            "reference": ref_record,
        },
        "ngram": ngram,
        "provenance": provenance(),
    }
    write_record(out, result)
    return result


def _feature_layer(model, layer: int) -> int:
    """The hidden-state index of MAUVE's features, checked against the evaluator's depth
    (hidden_states holds the embeddings and every block's output: n_layer + 1 entries)."""
    n = model.config.num_hidden_layers + 1
    if not -n <= layer < n:
        raise TokenDriftError(f"score.mauve_layer: {layer} is outside the evaluator's hidden states [-{n}, {n})")
    return layer


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def checkpoint_nelbo(
    checkpoint: str,
    out: str | None = None,
    *,
    n_batches: int = NELBO["n_batches"],
    batch_size: int = NELBO["batch_size"],
    n_t: int = NELBO["n_t"],
    seed: int = 0,
    device: str = NELBO["device"],
    weights: str = "ema",
) -> dict:
    """Held-out NELBO per token of a checkpoint on the validation split of its source."""
    from ..core.checkpoint import open_checkpoint

    device = resolve_device(device)
    model, meta, diffusion, source = open_checkpoint(checkpoint, weights=weights, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    vals = [
        diffusion.nelbo(model, source.batch("valid", i, batch_size).to(device), generator=gen, n_t=n_t)
        for i in range(n_batches)
    ]
    mean = sum(vals) / len(vals)
    sd = (sum((v - mean) ** 2 for v in vals) / max(1, len(vals) - 1)) ** 0.5
    result = {
        "nelbo": mean,
        "nelbo_se": sd / len(vals) ** 0.5,
        "n_sequences": n_batches * batch_size,
        "n_t": n_t,
        "checkpoint": str(checkpoint),
        "diffusion": meta["diffusion"],
        "step": meta.get("step"),
        "variant": meta.get("variant"),
        "provenance": provenance(),
    }
    if out:
        write_record(out, result)
    return result


def run_score(a) -> int:
    """Score every sample folder with the evaluator loaded once; then the checkpoint's NELBO."""
    if len(a.samples) != len(a.out):
        raise TokenDriftError(f"--out: {len(a.out)} files for {len(a.samples)} sample folders")
    if bool(a.checkpoint) != bool(a.nelbo_out):
        raise TokenDriftError("--checkpoint and --nelbo-out go together")
    for samples in a.samples:  # every input is checked before anything is written
        read_samples(samples)
    options, nelbo = configlib.read_options(a, "score"), configlib.read_options(a, "nelbo", prefix="nelbo_")
    device = resolve_device(options["device"])
    evaluator = load_evaluator(a.evaluator, device=device)
    references: dict = {}
    for samples, out in zip(a.samples, a.out):
        score_samples(
            samples,
            evaluator,
            out,
            batch_size=options["batch_size"],
            device=device,
            max_length=options["max_length"],
            evaluator_name=a.evaluator,
            options=options,
            references=references,
        )
    if a.checkpoint:
        checkpoint_nelbo(a.checkpoint, a.nelbo_out, seed=a.nelbo_seed, **nelbo)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "score",
        help="Gen.-PPL, entropy, MAUVE, oracle Gen.-PPL and n-gram divergence of sample folders "
        "(and a checkpoint's NELBO)",
    )
    p.add_argument("samples", nargs="+", help="sample folder(s) written by `tokendrift sample`")
    p.add_argument("--evaluator", required=True, help="causal LM name or local folder (paper: gpt2-large)")
    p.add_argument("--out", required=True, nargs="+", help="score JSON to write, one per sample folder")
    configlib.add_options(p, "score")
    p.add_argument("--checkpoint", help="also write this checkpoint's held-out NELBO (to --nelbo-out)")
    p.add_argument("--nelbo-out")
    configlib.add_options(p, "nelbo", prefix="nelbo_")
    p.add_argument("--nelbo-seed", type=int, default=0)
    p.set_defaults(func=run_score)
    q = sub.add_parser("nelbo", help="held-out NELBO per token of a checkpoint (the likelihood side)")
    q.add_argument("checkpoint")
    q.add_argument("--out", required=True)
    configlib.add_options(q, "nelbo")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(
        func=lambda a: checkpoint_nelbo(a.checkpoint, a.out, seed=a.seed, **configlib.read_options(a, "nelbo")) and 0
    )
