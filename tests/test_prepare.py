"""The data stage and the downloads: a corpus tokenized once into flat token files that jobs
map read-only, the MDLM blocking, refusals of script-only datasets, and compute jobs that fail
at once, naming the fetch target, when a file was not fetched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.conftest import mdlm_blocks
from tests.paper_files import (
    random_model_dir,
    write_corpus,
    write_gpt2_tokenizer,
    write_hf_release,
    write_lightning_release,
)
from tokendrift.core.data import make_source
from tokendrift.core.utils import TokenDriftError
from tokendrift.jobs import prepare
from tokendrift.jobs.fetch import fetch_checkpoint, fetch_dataset, fetch_pretrained, join_manifests
from tokendrift.jobs.sample import sample_checkpoint


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("owt")
    texts = write_corpus(root / "owt", 90, shards=3)
    tok = write_gpt2_tokenizer(root / "gpt2", texts, 400)
    return root, texts, tok


def owt_config(root, **kw):
    return {
        "kind": "openwebtext",
        "path": str(root / "owt"),
        "data_files": "data/train-*.parquet",
        "tokenizer": str(root / "gpt2"),
        "n_valid_docs": 10,
        "length": 64,
        "cache_dir": str(root / "cache"),
        **kw,
    }


def test_prepared_blocks_equal_the_mdlm_blocking_of_the_documents(corpus, monkeypatch):
    root, texts, tok = corpus
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = owt_config(root, n_docs=90)
    meta = prepare.prepare(cfg, progress=False)
    folder = prepare.prepared_dir(cfg)
    assert meta["dtype"] == "uint16" and meta["docs"] == {"train": 80, "valid": 10}
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    eos = tok.eos_token_id
    flat = np.fromfile(folder / "train.bin", dtype=np.uint16)
    assert flat.tolist() == [t for doc in ids[:-10] for t in (*doc, eos)]  # every document + EOS, in order
    want_train, want_valid = mdlm_blocks(ids[:-10], 64, eos, eos), mdlm_blocks(ids[-10:], 64, eos, eos)
    src = make_source(cfg)
    assert src.num_blocks("train") == len(want_train) and src.num_blocks("valid") == len(want_valid)
    assert src.batch("valid", 0, len(want_valid)).tolist() == want_valid.tolist()
    rows = {tuple(r) for r in want_train.tolist()}
    epoch = src.batch("train", 0, len(want_train))  # one epoch is a permutation of the blocks
    assert sorted(map(tuple, epoch.tolist())) == sorted(rows)
    assert src.vocab_size == len(tok) and src._flat["train"].flags.writeable is False  # mapped read-only
    assert not list((root / "cache").rglob("*.tmp"))


def test_workers_write_the_same_files_and_a_prepared_source_is_not_rebuilt(corpus, tmp_path):
    root, _, _ = corpus
    one = owt_config(root, cache_dir=str(tmp_path / "a"))
    two = owt_config(root, cache_dir=str(tmp_path / "b"), num_proc=2)
    prepare.BATCH_DOCS, old = 7, prepare.BATCH_DOCS  # several ranges per worker
    try:
        prepare.prepare(one, progress=False)
        prepare.prepare(two, progress=False)
    finally:
        prepare.BATCH_DOCS = old
    for split in ("train", "valid"):
        a = (prepare.prepared_dir(one) / f"{split}.bin").read_bytes()
        assert a == (prepare.prepared_dir(two) / f"{split}.bin").read_bytes() and a
    f = prepare.prepared_dir(one) / "train.bin"
    before = f.stat().st_mtime_ns
    prepare.prepare(one, progress=False)
    assert f.stat().st_mtime_ns == before


def test_a_job_never_tokenizes_a_corpus_itself(corpus, tmp_path):
    root, _, _ = corpus
    with pytest.raises(TokenDriftError, match="prepared data .* does not exist.*prepare_data"):
        make_source(owt_config(root, cache_dir=str(tmp_path / "empty")))


def test_a_script_only_dataset_is_refused_at_once(tmp_path):
    (tmp_path / "openwebtext.py").write_text("raise SystemExit('never run')\n")
    (tmp_path / "README.md").write_text("# a loading-script dataset\n")
    cfg = {"kind": "openwebtext", "path": str(tmp_path), "cache_dir": str(tmp_path / "c")}
    t0 = time.perf_counter()
    with pytest.raises(TokenDriftError, match=r"script-only dataset \(openwebtext.py.*Skylion007/openwebtext"):
        prepare.prepare(cfg, progress=False)
    with pytest.raises(TokenDriftError, match="script-only"):
        fetch_dataset(cfg)
    assert time.perf_counter() - t0 < 5
    with pytest.raises(TokenDriftError, match="script-only"):  # what a Hub listing with only a script gives
        prepare.check_data_files(["openwebtext.py", "README.md", ".gitattributes"], "dataset openwebtext@main", None)
    assert prepare.check_data_files(["data/a.parquet", "x.py"], "d", "data/*.parquet") == ["data/a.parquet"]


def test_a_wrong_copy_of_the_corpus_is_refused(corpus, tmp_path):
    root, _, _ = corpus
    with pytest.raises(TokenDriftError, match="source.n_docs: the config expects 100 documents.*90"):
        fetch_dataset(owt_config(root, n_docs=100))
    with pytest.raises(TokenDriftError, match="source.n_docs"):
        prepare.prepare(owt_config(root, n_docs=100, cache_dir=str(tmp_path)), progress=False)


def test_textdir_is_prepared_by_the_same_stage(tmp_path):
    for i in range(12):
        (tmp_path / f"doc{i}.txt").write_text(f"Document {i} talks about rivers and stones. " * 20)
    cfg = {
        "kind": "textdir",
        "path": str(tmp_path),
        "n_valid_docs": 2,
        "length": 16,
        "tokenizer_vocab_size": 300,
        "cache_dir": str(tmp_path / "cache"),
    }
    prepare.prepare(cfg, progress=False)
    src = make_source(cfg)
    x = src.batch("train", 0, 2)
    assert x.shape == (2, 16) and int(x.max()) < src.vocab_size
    assert "rivers" in "".join(src.decode(src.batch("valid", 0, 1)))


def test_manifests_name_every_file_with_its_sha256(corpus, tmp_path):
    root, texts, _ = corpus
    m = fetch_dataset(owt_config(root))
    assert m["n_docs"] == len(texts) and m["origin"] == "local"
    assert [f["name"] for f in m["files"]] == [f"data/train-0000{k}-of-00003.parquet" for k in range(3)]
    assert all(len(f["sha256"]) == 64 for f in m["files"])
    t = fetch_pretrained(str(root / "gpt2"), "tokenizer", [])
    assert {"vocab.json", "merges.txt", "tokenizer.json"} <= {f["name"] for f in t["files"]}
    cfg = {"preset": "tiny", "vocab_size": 50, "hidden_size": 16, "n_blocks": 2, "n_heads": 2, "cond_dim": 8}
    write_hf_release(tmp_path / "hf", "mdlm", cfg)
    write_lightning_release(tmp_path / "duo.ckpt", "duo", cfg)
    assert [f["name"] for f in fetch_checkpoint(str(tmp_path / "hf"), "start_mdlm")["files"]] == [
        "config.json",
        "model.safetensors",
    ]
    assert fetch_checkpoint(str(tmp_path / "duo.ckpt"), "start_duo")["files"][0]["name"] == "duo.ckpt"
    for name, item in (("d.json", m), ("t.json", t)):
        (tmp_path / name).write_text(json.dumps(item))
    joined = join_manifests([str(tmp_path / "d.json"), str(tmp_path / "t.json")])
    assert set(joined["items"]) == {"dataset", "tokenizer"} and joined["versions"]["torch"] == torch.__version__


def _offline(tmp_path) -> dict:
    return {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


@pytest.mark.parametrize(
    "argv, names",
    [
        (["score", "S", "--evaluator", "gpt2-large", "--out", "o.json"], "'gpt2-large'"),
        (
            ["checkpoint", "import", "hf:kuleshov-group/mdlm-owt/model.safetensors", "out", "--diffusion", "mdlm"],
            "hf:kuleshov-group/mdlm-owt",
        ),
        (["prepare", "--kind", "openwebtext", "--cache-dir", "c"], "Skylion007/openwebtext"),
    ],
)
def test_a_file_missing_on_an_offline_node_fails_at_once_naming_the_fetch_target(tmp_path, argv, names):
    src = {"kind": "synthetic", "length": 8}
    random_model_dir(tmp_path / "m", "mdlm", src, 257, 8, "tiny", hidden_size=16, n_blocks=2, n_heads=2, cond_dim=8)
    sample_checkpoint(str(tmp_path / "m"), str(tmp_path / "S"), nfe=2, n_samples=2, batch_size=2)
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "tokendrift.cli", *argv],
        cwd=tmp_path,
        env=_offline(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert names in r.stderr and "not in the local Hugging Face cache" in r.stderr, r.stderr
    assert "snakemake --profile <profile> fetch" in r.stderr
    assert time.perf_counter() - t0 < 60  # no download attempt, no retry loop
    assert not (tmp_path / "out").exists() and not (tmp_path / "o.json").exists()
