"""The data stage: a text corpus tokenized once, streamed to flat token files on disk.

``tokendrift prepare --kind ... (the source's options)`` turns the corpus of a text source (``openwebtext``:
a dataset with a ``text`` column, loaded from data files; ``textdir``: a folder of .txt
files) into a prepared folder that every training, NELBO, sampling and probe job maps
read-only (``tokendrift.core.data.BlockedText``). No job tokenizes a corpus itself.

Layout of ``<cache_dir>/<kind>-<digest of the source config>/``::

    train.bin, valid.bin   every document's token ids followed by EOS, concatenated
                           (uint16 when the vocabulary fits, as GPT-2's does; else uint32)
    tokenizer/             the tokenizer the ids come from (save_pretrained)
    meta.json              counts, dtype, ids, the data files and their manifest

The MDLM blocking is applied when a job reads the file: block i is
``[BOS] + tokens[i * (L - 2):(i + 1) * (L - 2)] + [EOS]``, the remainder dropped, and the last
``n_valid_docs`` documents form the validation split (kuleshov-group/mdlm
``dataloader.py::get_dataset`` with ``wrap=True``).

Documents are read in batches from the Arrow-backed dataset and written as they are
tokenized, so peak memory does not grow with the corpus (``bench/prepare_data.py``
measures it). With ``num_proc > 1`` worker processes tokenize consecutive document ranges
and the writer keeps their order.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ..core import owt
from ..core.hub import hub_snapshot, manifest_record, offline_hint
from ..core.owt import DATA_FORMATS
from ..core.source import add_source_args, normalize, prepared_dir, source_of
from ..core.utils import TokenDriftError, atomic_dir, config_digest, read_json

BATCH_DOCS = 1000  # documents tokenized and written at a time


# --------------------------------------------------------------------------- finding the corpus


def data_file_format(name: str) -> str | None:
    for ext in sorted(DATA_FORMATS, key=len, reverse=True):
        if name.endswith(ext):
            return DATA_FORMATS[ext]
    return None


def check_data_files(names: list[str], where: str, pattern: str | None, layout: str = "data_files") -> list[str]:
    """The files among ``names`` (relative paths) that ``layout`` reads, in reading order; stops
    at once, naming what ``where`` holds, when there are none (a loading script is never run)."""
    data = owt.check_files(names, where, layout, pattern)
    formats = {data_file_format(n) for n in data} if layout == "data_files" else set()
    if len(formats) > 1:
        raise TokenDriftError(f"source.data_files: {where} mixes formats {sorted(formats)}; set data_files to one")
    return data


def local_data_files(cfg: dict) -> list[Path]:
    """The data files of ``source.path`` (a file, or a folder searched recursively)."""
    p = Path(cfg["path"])
    if not p.exists():
        raise TokenDriftError(f"source.path: dataset not found: {p}")
    if p.is_file():
        check_data_files([p.name], str(p), None if cfg["layout"] == "data_files" else "*", cfg["layout"])
        return [p]
    names = [f.relative_to(p).as_posix() for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")]
    return [p / n for n in check_data_files(names, str(p), cfg["data_files"], cfg["layout"])]


def hub_data_files(cfg: dict, offline: bool = True) -> tuple[Path, list[Path]]:
    pattern = cfg["data_files"] or (owt.TAR_FILES if cfg["layout"] == "tar" else None)
    folder = hub_snapshot(cfg["name"], "dataset", cfg["revision"], pattern, offline=offline)
    names = [f.relative_to(folder).as_posix() for f in folder.rglob("*") if f.is_file()]
    where = f"dataset {cfg['name']}@{cfg['revision']}"
    return folder, [folder / n for n in check_data_files(names, where, cfg["data_files"], cfg["layout"])]


def corpus_files(cfg: dict) -> list[Path]:
    """The data files of an openwebtext source: under ``source.path``, or in the Hub cache."""
    return local_data_files(cfg) if cfg["path"] else hub_data_files(cfg)[1]


def load_corpus(cfg: dict):
    """The corpus as an Arrow-backed ``datasets.Dataset`` with a ``text`` column (memory-mapped),
    and its data files."""
    import datasets

    p = Path(cfg["path"]) if cfg["path"] else None
    if p is not None and p.is_dir() and ((p / "dataset_info.json").exists() or (p / "state.json").exists()):
        ds, files = datasets.load_from_disk(str(p)), sorted(p.glob("*.arrow"))
    else:
        files = corpus_files(cfg)
        try:
            ds = datasets.load_dataset(
                data_file_format(files[0].name), data_files=[str(f) for f in files], split="train"
            )
        except Exception as e:
            raise TokenDriftError(f"source: cannot load {files[0].parent} ({type(e).__name__}: {e})") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"]
    if "text" not in ds.column_names:
        raise TokenDriftError(
            f"source: dataset {cfg['path'] or cfg['name']!r} has no 'text' column (columns: {ds.column_names})"
        )
    return ds.select_columns(["text"]), files


def text_files(cfg: dict) -> list[Path]:
    folder = Path(cfg["path"] or "")
    if not cfg["path"] or not folder.is_dir():
        raise TokenDriftError(f"source.path: corpus folder not found: {cfg['path']}")
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise TokenDriftError(f"source.path: {folder} holds no .txt files")
    return files


def _read_texts(files: list[Path]):
    for f in files:
        text = f.read_text(errors="replace")
        if text.strip():
            yield text


def load_tokenizer(cfg: dict, texts=None):
    """openwebtext: the named tokenizer (a local folder, or a Hub name from the local cache);
    textdir: a byte-level BPE trained on the folder's documents."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if cfg["kind"] == "openwebtext":
        try:
            return AutoTokenizer.from_pretrained(cfg["tokenizer"])
        except Exception as e:
            local = Path(cfg["tokenizer"]).exists()
            why = (
                f"cannot load {cfg['tokenizer']!r} ({type(e).__name__}: {e})"
                if local
                else offline_hint(f"tokenizer {cfg['tokenizer']!r}")
            )
            raise TokenDriftError(f"source.tokenizer: {why}") from None
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=cfg["tokenizer_vocab_size"], special_tokens=["<|endoftext|>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


# --------------------------------------------------------------------------- streaming tokenization

_worker: dict = {}


def _init_worker(tok_dir: str, cfg: dict, arrow_dir: str | None) -> None:
    from transformers import PreTrainedTokenizerFast

    _worker["tok"] = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    _worker["docs"] = _Docs(cfg, arrow_dir)


class _Docs:
    """Random access to the corpus's documents by range (the dataset, or the .txt files). The
    tar layout is read once into Arrow files under ``arrow_dir`` (``owt.tar_to_arrow``)."""

    def __init__(self, cfg: dict, arrow_dir: str | os.PathLike | None = None):
        self.texts, self.ds = None, None
        if cfg["kind"] == "textdir":
            self.texts = list(_read_texts(text_files(cfg)))
        elif cfg["layout"] == "tar":
            self.ds = owt.arrow_corpus(sorted(Path(arrow_dir).glob("*.arrow")))
        else:
            self.ds = load_corpus(cfg)[0]

    def __len__(self) -> int:
        return len(self.ds) if self.ds is not None else len(self.texts)

    def range(self, start: int, stop: int) -> list[str]:
        return self.ds[start:stop]["text"] if self.ds is not None else self.texts[start:stop]


def _tokenize(tok, texts: list[str], dtype) -> np.ndarray:
    """Each document's token ids followed by EOS, concatenated."""
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    ends = np.cumsum(lens + 1) - 1  # where each document's EOS goes
    out = np.full(int(ends[-1]) + 1 if len(ids) else 0, tok.eos_token_id, dtype=dtype)
    body = np.ones(len(out), dtype=bool)
    body[ends] = False
    out[body] = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lens.sum()))
    return out


def _tokenize_range(args) -> np.ndarray:
    start, stop, dtype = args
    return _tokenize(_worker["tok"], _worker["docs"].range(start, stop), dtype)


def _stream(
    tok, tok_dir: Path, cfg: dict, docs: _Docs, ranges: list[tuple[int, int]], dtype, out: Path, progress, arrow_dir
) -> int:
    """Tokenize the document ranges in order and append them to ``out``; returns the token count."""
    n = 0
    with open(out, "wb") as f:
        if cfg["num_proc"] > 1 and len(ranges) > 1:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")  # no fork of a process holding Rust tokenizer threads
            with ctx.Pool(cfg["num_proc"], initializer=_init_worker, initargs=(str(tok_dir), cfg, arrow_dir)) as pool:
                for arr in pool.imap(_tokenize_range, [(a, b, dtype) for a, b in ranges]):
                    f.write(arr.tobytes())
                    n += len(arr)
                    progress(len(arr))
        else:
            for a, b in ranges:
                arr = _tokenize(tok, docs.range(a, b), dtype)
                f.write(arr.tobytes())
                n += len(arr)
                progress(len(arr))
    return n


def _ranges(start: int, stop: int) -> list[tuple[int, int]]:
    return [(a, min(a + BATCH_DOCS, stop)) for a in range(start, stop, BATCH_DOCS)]


def prepare(cfg: dict, *, manifest: str | None = None, progress: bool | None = None) -> dict:
    """Build the prepared folder of a text source unless it exists; returns its meta."""
    from tqdm import tqdm

    cfg = normalize(cfg)
    if cfg["kind"] == "synthetic":
        raise TokenDriftError("source.kind: the synthetic language is generated on the fly; nothing to prepare")
    out = prepared_dir(cfg)
    if (out / "meta.json").exists():
        return read_json(out / "meta.json", "prepared data meta")
    t0 = time.perf_counter()
    with atomic_dir(out) as tmp:
        arrow_dir = None
        if cfg["kind"] == "openwebtext" and cfg["layout"] == "tar":  # read once, by our own code
            arrow_dir = str(tmp / "_corpus")
            owt.tar_to_arrow(corpus_files(cfg), Path(arrow_dir), cfg["num_proc"])
        docs = _Docs(cfg, arrow_dir)
        n_docs, n_valid = len(docs), cfg["n_valid_docs"]
        if cfg["kind"] == "openwebtext" and cfg["n_docs"] is not None and n_docs != cfg["n_docs"]:
            raise TokenDriftError(
                f"source.n_docs: the config expects {cfg['n_docs']} documents, "
                f"{cfg['path'] or cfg['name']} has {n_docs} (another copy or revision?)"
            )
        if n_docs <= n_valid:
            raise TokenDriftError(
                f"source.n_valid_docs: {n_valid} leaves no training documents (the corpus has {n_docs})"
            )
        tok = load_tokenizer(cfg, docs.texts)
        tok.save_pretrained(tmp / "tokenizer")
        dtype = np.uint16 if len(tok) <= 2**16 else np.uint32
        bar = tqdm(total=None, unit="tok", unit_scale=True, desc="prepare", disable=progress is False, mininterval=5.0)
        args = (tok, tmp / "tokenizer", cfg, docs)
        n_train = _stream(*args, _ranges(0, n_docs - n_valid), dtype, tmp / "train.bin", bar.update, arrow_dir)
        n_valid_tok = _stream(*args, _ranges(n_docs - n_valid, n_docs), dtype, tmp / "valid.bin", bar.update, arrow_dir)
        del docs, args
        if arrow_dir is not None:
            shutil.rmtree(arrow_dir)
        bar.close()
        L = cfg["length"]
        meta = {
            "source": cfg,
            "digest": config_digest(cfg),
            "dtype": np.dtype(dtype).name,
            "length": L,
            "vocab_size": len(tok),
            "eos_id": tok.eos_token_id,
            "bos_id": tok.eos_token_id,
            "docs": {"train": n_docs - n_valid, "valid": n_valid},
            "tokens": {"train": n_train, "valid": n_valid_tok},
            "blocks": {"train": n_train // (L - 2), "valid": n_valid_tok // (L - 2)},
            "manifest": manifest_record(manifest),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        for split, n in meta["blocks"].items():
            if n == 0:
                raise TokenDriftError(
                    f"source: the {split} split has no complete block of {L} tokens "
                    f"(corpus too small, or n_valid_docs={n_valid} too large/small)"
                )
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


# --------------------------------------------------------------------------- command line


def _run(args) -> int:
    meta = prepare(source_of(args), manifest=args.manifest or os.environ.get("TOKENDRIFT_MANIFEST"))
    print(json.dumps({k: meta[k] for k in ("docs", "tokens", "blocks", "seconds")}))
    return 0


def register(sub) -> None:
    p = sub.add_parser("prepare", help="tokenize a text source once into flat token files (the data stage)")
    add_source_args(p)
    p.add_argument("--manifest", help="the fetch manifest to record (default: $TOKENDRIFT_MANIFEST)")
    p.set_defaults(func=_run)
