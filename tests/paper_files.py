"""Files in the formats the paper run downloads, made small: an OpenWebText-like corpus in the
original release's layout (nested tar and xz archives) and as parquet shards with a ``text`` column, a GPT-2-format tokenizer trained by ``tokenizers`` and
saved as the Hub's files are, a GPT-2 evaluator saved with ``save_pretrained``, and start
checkpoints as MDLM and DUO release them (a Hugging Face folder with ``backbone.*`` keys, and
a Lightning ``.ckpt`` with ``state_dict`` and the EMA's ``shadow_params``).

The tests, ``tests/configs/paper_mini.yaml`` and ``bench/prepare_data.py`` use them; everything
downstream reads them through the same calls as the real files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

WORDS = (
    "the river stone cloud light market city garden letter window morning evening story music paper "
    "teacher doctor family friend water mountain forest ocean island bridge road train station school "
    "house kitchen table chair summer winter spring autumn people number history science game team "
    "player coach season money bank price company report news world country state"
).split()
PUNCT = [".", ",", "'s", "?", "!"]


def corpus_texts(n_docs: int, seed: int = 0, min_words: int = 40, max_words: int = 400) -> list[str]:
    """Documents of varying length with punctuation and contractions (as web text has)."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n_docs):
        n = int(rng.integers(min_words, max_words))
        words = rng.choice(WORDS, size=n)
        marks = rng.random(n)
        parts = []
        for w, m in zip(words, marks):
            parts.append(str(w))
            if m < 0.08:
                parts[-1] += PUNCT[int(m * 100) % len(PUNCT)]
        docs.append(f"Document {i}. " + " ".join(parts).capitalize() + ".")
    return docs


def write_corpus(folder, n_docs: int, shards: int = 3, seed: int = 0) -> list[str]:
    """``folder/data/train-0000k-of-0000n.parquet`` shards with a ``text`` column, as the parquet
    conversions of Skylion007/openwebtext lay them out; returns the documents in order."""
    texts = corpus_texts(n_docs, seed)
    write_parquet(folder, texts, shards)
    return texts


def write_parquet(folder, texts: list[str], shards: int = 3) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = Path(folder) / "data"
    data.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(texts), shards + 1).astype(int)
    for k in range(shards):
        table = pa.table({"text": texts[bounds[k] : bounds[k + 1]]})
        pq.write_table(table, data / f"train-{k:05d}-of-{shards:05d}.parquet")


def raw_document(text: str) -> str:
    """A document as the original release stores it, before openwebtext.py's normalization:
    paragraph breaks of more than two newlines, whitespace around it."""
    return "\n  " + text.replace("\n\n", "\n\n\n\n", 1) + " \n\n"


def _tar_member(tar, name: str, data: bytes | None = None) -> None:
    import io
    import tarfile

    info = tarfile.TarInfo(name)
    if data is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def write_corpus_tar(folder, n_docs: int, subsets: int = 3, xz_per_subset: int = 2, seed: int = 0) -> list[str]:
    """OpenWebText in its original layout, made small: ``folder/subsets/urlsf_subsetNN.tar``, each
    an uncompressed tar of ``.xz`` files that each hold a tar of ``.txt`` documents, as the 21
    archives of Skylion007/openwebtext do (names after the original release: members
    ``openwebtext/urlsf_subsetNN-K_data.xz``, documents ``NNNNNNN-<hash>.txt``; only the suffixes
    matter to the reader). Members are added out of name order (the reader keeps archive order),
    with a folder entry, a hidden ``._`` file and a non-.txt member the loading script skips.
    Returns the documents in the loading script's order, normalized as it normalizes them
    (each has a paragraph break; the stored text has extra newlines and surrounding whitespace)."""
    import hashlib
    import io
    import lzma
    import tarfile

    texts = [t.replace(". ", ".\n\n", 1) for t in corpus_texts(n_docs, seed)]
    out = Path(folder) / "subsets"
    out.mkdir(parents=True, exist_ok=True)
    chunks = np.array_split(np.arange(n_docs), subsets * xz_per_subset)
    for k in range(subsets):
        with tarfile.open(out / f"urlsf_subset{k:02d}.tar", "w", format=tarfile.GNU_FORMAT) as outer:
            _tar_member(outer, "openwebtext")
            for j in range(xz_per_subset):
                docs = chunks[k * xz_per_subset + j]
                buf = io.BytesIO()
                with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as inner:
                    for i in docs:
                        digest = hashlib.md5(texts[i].encode()).hexdigest()
                        _tar_member(inner, f"{9_999_999 - int(i):07d}-{digest}.txt", raw_document(texts[i]).encode())
                    _tar_member(inner, "README", b"not a document")
                name = f"openwebtext/urlsf_subset{k:02d}-{xz_per_subset - j}_data.xz"
                if j == 0:
                    _tar_member(outer, "openwebtext/._" + name.split("/")[1], b"resource fork")
                _tar_member(outer, name, lzma.compress(buf.getvalue()))
    return texts


def write_gpt2_tokenizer(folder, texts, vocab_size: int = 512):
    """A byte-level BPE with GPT-2's single special token, saved as the Hub's gpt2 files are
    (vocab.json, merges.txt, tokenizer.json, tokenizer_config.json), loadable with
    ``AutoTokenizer.from_pretrained``."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=["<|endoftext|>"])
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(folder))  # vocab.json, merges.txt
    tok = GPT2TokenizerFast(
        tokenizer_object=bpe._tokenizer, unk_token="<|endoftext|>", bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    tok.save_pretrained(folder)
    return tok


def write_gpt2_evaluator(folder, tokenizer, n_layer: int = 1, n_embd: int = 32, n_head: int = 2, seed: int = 0):
    """A GPT-2 causal LM (random weights) and its tokenizer, saved with ``save_pretrained``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=1024,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def random_dit(diffusion: str, model_cfg: dict):
    """A randomly initialized DiT with every zero-initialized (adaLN-zero) weight drawn from
    N(0, 0.02), so the model is not constant (from torch's current random state)."""
    from tokendrift.core.model import DiT, DiTConfig

    cfg = dict(model_cfg)
    model = DiT(DiTConfig.preset(cfg.pop("preset", "small"), time_conditioning=diffusion == "duo", **cfg))
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return model


def released_state(diffusion: str, model_cfg: dict, seed: int = 0):
    """(model, state) of ``random_dit`` drawn from ``seed``."""
    torch.manual_seed(seed)
    model = random_dit(diffusion, model_cfg)
    return model, model.state_dict()


def random_model_dir(
    path, diffusion: str, source_config: dict, vocab_size: int, length: int, preset: str = "tiny", **overrides
) -> Path:
    """A model folder of ``random_dit``: a stand-in "released" checkpoint for tests and benchmarks."""
    from tokendrift.core.checkpoint import save_model_dir

    model = random_dit(diffusion, {"preset": preset, "vocab_size": vocab_size, "length": length, **overrides})
    state = model.state_dict()
    meta = {"diffusion": diffusion, "source": source_config, "step": 0}
    save_model_dir(path, state, state, meta, config=model.config)
    return Path(path)


def release_config_classes():
    """The config classes the releases' config.json files come from, with their key names and
    defaults: kuleshov-group/mdlm-owt's MDLMConfig (kuleshov-group/mdlm models/hf/
    configuration_mdlm.py; a public copy: denaxen/discrete-diffusion-guidance) and DUO's Hub
    release's DUOConfig (remote code on the Hub, not in s-sahoo/duo; public copies of it, e.g.
    "adapted from https://github.com/s-sahoo/duo", keep these names and defaults). Their
    ``save_pretrained`` writes config.json as the Hub files are written."""
    from transformers import PretrainedConfig

    class MDLMConfig(PretrainedConfig):
        model_type = "mdlm"

        def __init__(
            self,
            vocab_size=50258,
            model_length=1024,
            hidden_dim=768,
            cond_dim=129,
            n_blocks=12,
            n_heads=12,
            dropout=0.1,
            time_conditioning=False,
            **kwargs,
        ):
            super().__init__(**kwargs)
            self.vocab_size, self.model_length, self.hidden_dim, self.cond_dim = (
                vocab_size,
                model_length,
                hidden_dim,
                cond_dim,
            )
            self.n_blocks, self.n_heads, self.dropout = n_blocks, n_heads, dropout
            self.time_conditioning = time_conditioning

    class DUOConfig(PretrainedConfig):
        model_type = "duo"

        def __init__(
            self,
            vocab_size=50258,
            model_length=1024,
            causal=False,
            hidden_dim=768,
            cond_dim=129,
            n_blocks=12,
            n_heads=12,
            dropout=0.1,
            var_min=True,
            **kwargs,
        ):
            super().__init__(**kwargs)
            self.causal, self.vocab_size, self.model_length = causal, vocab_size, model_length
            self.hidden_dim, self.cond_dim, self.n_blocks, self.n_heads = hidden_dim, cond_dim, n_blocks, n_heads
            self.dropout, self.var_min = dropout, var_min

    return {"mdlm": MDLMConfig, "duo": DUOConfig}


def write_release_config(folder, diffusion: str, model_cfg, **changes) -> dict:
    """``folder/config.json`` of a DiT config as the release of ``diffusion`` writes it (its
    class's key names; ``changes`` overrides or adds keys); returns the JSON."""
    c = model_cfg
    keys = dict(
        vocab_size=c.vocab_size,
        model_length=c.length,
        hidden_dim=c.hidden_size,
        cond_dim=c.cond_dim,
        n_blocks=c.n_blocks,
        n_heads=c.n_heads,
        dropout=c.dropout,
        architectures=[diffusion.upper()],
        **({"time_conditioning": c.time_conditioning} if diffusion == "mdlm" else {}),
    )
    release_config_classes()[diffusion](**{**keys, **changes}).save_pretrained(folder)
    return json.loads((Path(folder) / "config.json").read_text())


def write_hf_release(folder, diffusion: str, model_cfg: dict, seed: int = 0) -> dict:
    """A Hugging Face model folder as kuleshov-group/mdlm-owt (and DUO's release) publish one:
    ``config.json`` in the release's key names and ``model.safetensors`` whose keys carry the
    ``backbone.`` prefix."""
    from safetensors.torch import save_file

    model, state = released_state(diffusion, model_cfg, seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_release_config(folder, diffusion, model.config)
    save_file({f"backbone.{k}": v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    return state


def write_lightning_release(path, diffusion: str, model_cfg: dict, seed: int = 0, num_updates: int = 1000) -> dict:
    """A Lightning ``.ckpt`` laid out as MDLM's and DUO's trainers save it: raw weights in
    ``state_dict`` (``backbone.*``), the EMA's ``shadow_params`` (a list in parameter order)
    and update count, optimizer and loop state beside them. Returns the EMA state."""
    model, state = released_state(diffusion, model_cfg, seed)
    g = torch.Generator().manual_seed(seed + 1)
    shadow = [p.detach() + 0.01 * torch.randn(p.shape, generator=g) for p in model.parameters()]
    ema = dict(state, **{n: s for (n, _), s in zip(model.named_parameters(), shadow)})
    torch.save(
        {
            "epoch": 3,
            "global_step": num_updates,
            "pytorch-lightning_version": "2.2.1",
            "state_dict": {f"backbone.{k}": v for k, v in state.items()},
            "ema": {"decay": 0.9999, "num_updates": num_updates, "shadow_params": shadow, "collected_params": None},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 3e-4}]}],
            "lr_schedulers": [],
            "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 3}}}},
        },
        path,
    )
    return ema


def write_paper_files(root, n_docs: int = 240, tokenizer_vocab: int = 512, model_cfg: dict | None = None) -> dict:
    """Every file the paper run downloads, made small, under ``root`` (the names
    tests/configs/paper_mini.yaml points to)."""
    root = Path(root)
    texts = write_corpus_tar(root / "owt", n_docs)
    tok = write_gpt2_tokenizer(root / "gpt2", texts, tokenizer_vocab)
    write_gpt2_evaluator(root / "gpt2-large", tok)
    cfg = model_cfg or {
        "preset": "small",
        "vocab_size": len(tok) + 1,
        "hidden_size": 32,
        "n_blocks": 2,
        "n_heads": 2,
        "cond_dim": 16,
    }
    write_hf_release(root / "mdlm-owt", "mdlm", cfg, seed=1)
    write_lightning_release(root / "duo.ckpt", "duo", cfg, seed=2)
    return {"texts": texts, "tokenizer": tok, "model": cfg}
