"""OpenWebText as the Hub holds it: the original tar layout read in the loading script's order and
normalization, the same token files as the same documents in parquet, and a fetch that lists the
revision before downloading anything."""

from __future__ import annotations

import re
import types

import numpy as np
import pytest

from tests.paper_files import write_corpus_tar, write_gpt2_tokenizer, write_parquet
from tokendrift.core import owt
from tokendrift.core.utils import TokenDriftError
from tokendrift.jobs import prepare
from tokendrift.jobs.fetch import fetch_dataset

N_DOCS = 60
SHA = "0123456789abcdef0123456789abcdef01234567"  # a commit of the fake Hub listings below


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("owt_tar")
    texts = write_corpus_tar(root / "tar", N_DOCS, subsets=3, xz_per_subset=2)
    write_parquet(root / "parquet", texts, shards=2)
    tok = write_gpt2_tokenizer(root / "gpt2", texts, 400)
    return root, texts, tok


def config(root, layout, **kw):
    files = {"tar": "subsets/urlsf_subset*.tar", "data_files": "data/train-*.parquet"}[layout]
    return {
        "kind": "openwebtext",
        "layout": layout,
        "path": str(root / ("tar" if layout == "tar" else "parquet")),
        "data_files": files,
        "tokenizer": str(root / "gpt2"),
        "n_valid_docs": 7,
        "length": 32,
        "cache_dir": str(root / "cache"),
        **kw,
    }


def script_documents(archives):
    """openwebtext.py's _generate_examples, with the datasets library's own archive iteration
    (the loading script's calls, not our reader): archive order, then member order."""
    from datasets.utils.file_utils import ArchiveIterable

    for archive in archives:
        for xz_path, xz_f in ArchiveIterable.from_urlpath(str(archive)):
            if not xz_path.endswith(".xz"):
                continue
            for txt_path, txt_f in ArchiveIterable.from_buf(xz_f):
                if not txt_path.endswith(".txt"):
                    continue
                yield re.sub("\n\n\n+", "\n\n", txt_f.read().decode("utf-8")).strip()


def test_the_tar_layout_is_read_in_the_loading_scripts_order_and_normalization(corpus):
    root, texts, _ = corpus
    archives = sorted((root / "tar" / "subsets").glob("*.tar"))
    ours = [t for a in archives for t in owt.tar_documents(a)]
    assert ours == list(script_documents(archives)) == texts  # not name order: the fixture adds members out of it
    assert all("\n\n\n" not in t and t == t.strip() for t in ours) and sum("\n\n" in t for t in ours) == N_DOCS
    assert owt.count_tar_documents(archives, num_proc=2) == N_DOCS


def test_tar_and_parquet_copies_of_the_same_documents_give_the_same_token_files(corpus, tmp_path):
    root, texts, tok = corpus
    tar = config(root, "tar", n_docs=N_DOCS, num_proc=2, cache_dir=str(tmp_path / "a"))
    pq = config(root, "data_files", n_docs=N_DOCS, cache_dir=str(tmp_path / "b"))
    prepare.BATCH_DOCS, old = 5, prepare.BATCH_DOCS  # several ranges per worker
    try:
        meta = prepare.prepare(tar, progress=False)
    finally:
        prepare.BATCH_DOCS = old
    assert meta["docs"] == prepare.prepare(pq, progress=False)["docs"] == {"train": N_DOCS - 7, "valid": 7}
    for split in ("train", "valid"):
        a = (prepare.prepared_dir(tar) / f"{split}.bin").read_bytes()
        assert a and a == (prepare.prepared_dir(pq) / f"{split}.bin").read_bytes()
    eos, ids = tok.eos_token_id, [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    flat = np.fromfile(prepare.prepared_dir(tar) / "valid.bin", dtype=np.uint16).tolist()
    assert flat == [t for doc in ids[-7:] for t in (*doc, eos)]  # the last documents are the validation split
    assert {p.name for p in prepare.prepared_dir(tar).iterdir()} == {"train.bin", "valid.bin", "tokenizer", "meta.json"}


def test_a_corrupt_archive_or_a_wrong_count_stops_before_anything_is_written(corpus, tmp_path):
    root, _, _ = corpus
    with pytest.raises(TokenDriftError, match="source.n_docs: the config expects 61 documents.* hold 60"):
        fetch_dataset(config(root, "tar", n_docs=61))
    assert fetch_dataset(config(root, "tar", n_docs=N_DOCS))["n_docs"] == N_DOCS
    bad = tmp_path / "owt" / "subsets"
    bad.mkdir(parents=True)
    data = (root / "tar" / "subsets" / "urlsf_subset00.tar").read_bytes()
    (bad / "urlsf_subset00.tar").write_bytes(data[: len(data) // 2])
    cfg = dict(config(root, "tar", cache_dir=str(tmp_path / "c")), path=str(tmp_path / "owt"), n_valid_docs=1)
    with pytest.raises(TokenDriftError, match=r"urlsf_subset00.tar: truncated or corrupt archive"):
        prepare.prepare(cfg, progress=False)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


class FakeHub:
    """huggingface_hub.HfApi at the edge: ``dataset_info`` of one repository whose branch ``main``
    points at ``SHA``; records each call. (Listings follow the Hub's: siblings' rfilename.)"""

    def __init__(self, files):
        self.files, self.calls = files, []

    def dataset_info(self, repo_id, revision=None):
        self.calls.append((repo_id, revision))
        if revision not in ("main", SHA):
            raise RuntimeError(f"RevisionNotFoundError: {revision}")
        return types.SimpleNamespace(sha=SHA, siblings=[types.SimpleNamespace(rfilename=f) for f in self.files])


MAIN = [".gitattributes", "README.md", "openwebtext.py", *(f"subsets/urlsf_subset{k:02d}.tar" for k in range(21))]
CONVERTED = ["default/partial-train/0000.parquet", "default/partial-train/0001.parquet"]


def hub_config(**kw):
    return {
        "kind": "openwebtext",
        "name": "Skylion007/openwebtext",
        "revision": SHA,
        "layout": "tar",
        "data_files": "subsets/urlsf_subset*.tar",
        "n_docs": N_DOCS,
        **kw,
    }


@pytest.fixture
def no_download(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def download(*a, **k):
        raise AssertionError("downloaded before the listing was checked")

    monkeypatch.setattr(prepare, "hub_snapshot", download)


@pytest.mark.parametrize(
    "files, cfg, message",
    [
        (
            MAIN,
            hub_config(revision="main"),
            rf"source.revision: 'main' is not a commit SHA.*points at {SHA} now, which holds .*openwebtext.py.*"
            r"subsets/\*.tar \(21 files\)",
        ),
        (
            MAIN,
            hub_config(layout="data_files", data_files="data/train-*.parquet"),
            r"source.data_files: dataset Skylion007/openwebtext@0123.* holds no data/train-\*.parquet for source.layout: "
            r"data_files; it holds README.md, openwebtext.py, subsets/\*.tar \(21 files\); use source.layout: tar",
        ),
        (
            CONVERTED,
            hub_config(layout="data_files", data_files="default/*/*.parquet"),
            r"default/partial-train/0000.parquet is in a partial-\* folder, a partial conversion",
        ),
        (MAIN, hub_config(revision="f" * 40), r"cannot list dataset Skylion007/openwebtext at 'ffff"),
    ],
)
def test_the_fetch_lists_the_revision_first_and_names_what_it_holds(no_download, files, cfg, message):
    api = FakeHub(files)
    with pytest.raises(TokenDriftError, match=message):
        fetch_dataset(cfg, api=api)
    assert api.calls == [("Skylion007/openwebtext", cfg["revision"])]


def test_a_listed_commit_is_downloaded_and_recorded_with_its_document_count(corpus, monkeypatch, tmp_path):
    root, _, _ = corpus
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    snapshot = tmp_path / "datasets--Skylion007--openwebtext" / "snapshots" / SHA
    (snapshot / "subsets").mkdir(parents=True)
    for f in (root / "tar" / "subsets").glob("*.tar"):
        (snapshot / "subsets" / f.name).symlink_to(f)  # as the Hub cache links blobs
    asked = []
    monkeypatch.setattr(prepare, "hub_snapshot", lambda *a, **k: asked.append((a, k)) or snapshot)
    listing = [".gitattributes", "openwebtext.py", *(f"subsets/{f.name}" for f in (snapshot / "subsets").iterdir())]
    m = fetch_dataset(hub_config(), api=FakeHub(listing))
    assert asked[0][0][:4] == ("Skylion007/openwebtext", "dataset", SHA, "subsets/urlsf_subset*.tar")
    assert m["commit"] == SHA and m["layout"] == "tar" and m["n_docs"] == N_DOCS
    assert [f["name"] for f in m["files"]] == [f"subsets/urlsf_subset0{k}.tar" for k in range(3)]
    with pytest.raises(TokenDriftError, match="source.n_docs: the config expects 8013769 documents"):
        fetch_dataset(hub_config(n_docs=8013769), api=FakeHub(listing))
    with pytest.raises(TokenDriftError, match=r"lacks \['subsets/urlsf_subset03.tar'\]"):
        fetch_dataset(hub_config(), api=FakeHub([*listing, "subsets/urlsf_subset03.tar"]))
