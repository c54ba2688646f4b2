"""Downloads, only where the network is: ``tokendrift fetch`` and its manifests.

Everything a study reads from outside (the dataset's files, the tokenizer, the evaluator and
the released start checkpoints) is fetched by Snakemake local rules (the login node) into the
project's Hugging Face cache (``fetch.hf_home`` of the workflow config). Compute jobs run with
the Hub offline (``HF_HUB_OFFLINE=1``, ``HF_DATASETS_OFFLINE=1``) against that cache, so a file
that was not fetched fails a job at once with a message naming the ``fetch`` target, instead
of a download hanging on a node without internet.

Each fetched item writes a manifest: what it is, where it came from (the repository and the
commit its revision resolved to, or a local path), and every file's name, size and sha256 (and
the dataset's document count). ``tokendrift fetch manifest`` joins them into one file whose
sha256 every training, sampling and scoring result records (``$TOKENDRIFT_MANIFEST``), so a
result always says which weights and which data produced it.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from . import owt
from .prepare import hub_data_files, local_data_files, manifest_record, normalize
from .utils import TokenDriftError, atomic_write_json, file_digest, read_json

# the files a model or tokenizer needs (the Hub repositories also hold TF, Flax, ONNX and .bin copies)
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model"]
TOKENIZER_FILES = ["*.json", "*.txt", "*.model"]
LOGIN_NODE_PROCS = 4  # processes the fetch (a login-node rule) counts the tar layout's documents with
VERSIONED = ("torch", "transformers", "datasets", "tokenizers", "huggingface_hub", "safetensors")


def _files(folder: Path, files: list[Path]) -> list[dict]:
    return [
        {"name": f.relative_to(folder).as_posix(), "bytes": f.stat().st_size, "sha256": file_digest(f)}
        for f in sorted(files)
    ]


def _commit(folder: Path) -> str | None:
    """The commit of a Hub snapshot folder (.../snapshots/<commit>)."""
    return folder.name if folder.parent.name == "snapshots" else None


def fetch_dataset(source: dict, api=None) -> dict:
    """The dataset's files (a local copy, or a Hub revision into the cache) and their document
    count, checked against ``source.n_docs``. A Hub revision is listed first (``api``: a
    ``huggingface_hub.HfApi``, made here by default): it must be a commit SHA that holds the
    layout's files, or nothing is downloaded."""
    cfg = normalize(source)
    if cfg["kind"] != "openwebtext":
        raise TokenDriftError(f"source.kind: {cfg['kind']!r} has no dataset to fetch")
    if cfg["path"]:
        files = local_data_files(cfg)
        root = Path(cfg["path"]) if Path(cfg["path"]).is_dir() else Path(cfg["path"]).parent
        where = {"origin": "local", "path": str(Path(cfg["path"]).resolve())}
    else:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        listed = None if offline else owt.check_hub_revision(cfg, api)[1]
        root, files = hub_data_files(cfg, offline=offline)
        missing = sorted(set(listed or []) - {f.relative_to(root).as_posix() for f in files})
        if missing:
            raise TokenDriftError(f"source: the download of {cfg['name']}@{cfg['revision']} lacks {missing[:3]}")
        where = {
            "origin": "hub",
            "repo": cfg["name"],
            "repo_type": "dataset",
            "revision": cfg["revision"],
            "commit": _commit(root),
            "layout": cfg["layout"],
        }
    n_docs = count_documents(cfg, files)
    if cfg["n_docs"] is not None and n_docs is not None and n_docs != cfg["n_docs"]:
        raise TokenDriftError(
            f"source.n_docs: the config expects {cfg['n_docs']} documents, the fetched files of "
            f"{cfg['path'] or cfg['name']} hold {n_docs}"
        )
    return {"item": "dataset", **where, "files": _files(root, files), "n_docs": n_docs}


def count_documents(cfg: dict, files: list[Path]) -> int | None:
    """The documents of the fetched files: parquet from its metadata, the tar layout by reading
    every archive (at most ``LOGIN_NODE_PROCS`` at a time: the fetch runs on the login node); None
    for other formats (the data stage counts them)."""
    if cfg["layout"] == "tar":
        return owt.count_tar_documents(files, min(cfg["num_proc"], LOGIN_NODE_PROCS))
    if files[0].suffix == ".parquet":
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return None


def fetch_pretrained(name: str, item: str, patterns: list[str]) -> dict:
    """A tokenizer or a causal LM: a local folder, or a Hub repository into the cache."""
    p = Path(name)
    if p.is_dir():
        return {
            "item": item,
            "origin": "local",
            "path": str(p.resolve()),
            "files": _files(p, [f for f in p.rglob("*") if f.is_file()]),
        }
    from .prepare import hub_snapshot

    folder = hub_snapshot(name, "model", "main", patterns, offline=os.environ.get("HF_HUB_OFFLINE") == "1")
    return {
        "item": item,
        "origin": "hub",
        "repo": name,
        "repo_type": "model",
        "revision": "main",
        "commit": _commit(folder),
        "files": _files(folder, [f for f in folder.rglob("*") if f.is_file()]),
    }


def fetch_checkpoint(src: str, item: str) -> dict:
    """A released start checkpoint: ``hf:OWNER/REPO/FILE`` into the cache, or a local file or folder."""
    if str(src).startswith("hf:"):
        from .checkpoint import release_config_file, resolve_hf

        f = Path(resolve_hf(src))  # and the config.json beside a .safetensors file
        config = release_config_file(f)
        return {
            "item": item,
            "origin": "hub",
            "repo": "/".join(src[3:].split("/")[:2]),
            "repo_type": "model",
            "commit": _commit(f.parent) if f.parent.parent.name == "snapshots" else None,
            "files": _files(f.parent, [f, *([config] if config else [])]),
        }
    p = Path(src)
    if not p.exists():
        raise TokenDriftError(f"start checkpoint not found: {p}")
    files = [f for f in p.rglob("*") if f.is_file()] if p.is_dir() else [p]
    return {
        "item": item,
        "origin": "local",
        "path": str(p.resolve()),
        "files": _files(p if p.is_dir() else p.parent, files),
    }


def versions() -> dict:
    return dict(_versions())


@functools.cache
def _versions() -> dict:
    """Read once per process: every record of a job carries them (importlib.metadata parses each
    package's METADATA file, about 50 ms for the list)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def provenance() -> dict:
    """What a result records of where its inputs came from: the fetch manifest (path and sha256,
    from $TOKENDRIFT_MANIFEST; null when the study downloads nothing) and the library versions."""
    return {"manifest": manifest_record(os.environ.get("TOKENDRIFT_MANIFEST")), "versions": versions()}


def join_manifests(parts: list[str]) -> dict:
    items = {}
    for p in parts:
        m = read_json(p, "fetch manifest")
        items[m["item"]] = m
    return {"items": items, "versions": versions()}


# --------------------------------------------------------------------------- command line


def _run(args) -> int:
    if args.what == "dataset":
        try:
            source = json.loads(args.spec)
        except json.JSONDecodeError as e:
            raise TokenDriftError(f"fetch dataset: the source config is not valid JSON: {e}") from None
        m = fetch_dataset(source)
    elif args.what in ("tokenizer", "evaluator"):
        m = fetch_pretrained(args.spec, args.what, TOKENIZER_FILES if args.what == "tokenizer" else MODEL_FILES)
    elif args.what == "checkpoint":
        m = fetch_checkpoint(args.spec, args.item or "checkpoint")
    else:  # manifest: join the items' manifests
        m = join_manifests([args.spec, *args.parts])
    atomic_write_json(args.out, m)
    print(f"{args.out}: {args.what}, {len(m.get('files', m.get('items', [])))} entries")
    return 0


def register(sub) -> None:
    p = sub.add_parser("fetch", help="download what a study reads (login node) and write its manifest")
    p.add_argument("what", choices=["dataset", "tokenizer", "evaluator", "checkpoint", "manifest"])
    p.add_argument(
        "spec",
        nargs="?",
        default="",
        help="dataset: the source config as JSON; tokenizer/evaluator: a Hub name or local folder; "
        "checkpoint: hf:OWNER/REPO/FILE or a local path",
    )
    p.add_argument("parts", nargs="*", help="manifest: the item manifests to join")
    p.add_argument("--item", help="checkpoint: the manifest's item name (e.g. start_mdlm)")
    p.add_argument("--out", required=True, help="the manifest to write (JSON)")
    p.set_defaults(func=_run)
