"""Everything that talks to the Hugging Face Hub or its local cache.

Compute jobs run with the Hub offline (``HF_HUB_OFFLINE=1``) against the project's cache, which
the ``fetch`` target fills on a machine with network (``tokendrift.jobs.fetch``): a file missing
from the cache fails a job at once with ``offline_hint``. Each result records its ``provenance``:
the fetch manifest it read (``manifest_record``) and the versions of the libraries that made it.
"""

from __future__ import annotations

import functools
import os
import posixpath
from pathlib import Path

from . import owt
from .utils import TokenDriftError, file_digest

FETCH_TARGET = "fetch"  # the Snakemake target that downloads what the compute jobs read offline
VERSIONED = ("torch", "transformers", "datasets", "tokenizers", "huggingface_hub", "safetensors")


def offline_hint(what: str) -> str:
    return (
        f"{what} is not in the local Hugging Face cache (HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}, "
        f"offline: HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}). Compute jobs never download: run "
        f"`snakemake --profile <profile> {FETCH_TARGET}` on a machine with network (the login node) first"
    )


# --------------------------------------------------------------------------- repositories and files


def hub_snapshot(repo_id: str, repo_type: str, revision: str, allow_patterns=None, offline: bool = True) -> Path:
    """A Hugging Face repository's files in the local cache (``offline``: never downloads)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id, repo_type=repo_type, revision=revision, allow_patterns=allow_patterns, local_files_only=offline
            )
        )
    except Exception as e:  # missing from the cache, network, auth, missing repo
        if offline:
            raise TokenDriftError(
                offline_hint(f"{repo_type} {repo_id}@{revision}") + f" ({type(e).__name__})"
            ) from None
        raise TokenDriftError(f"{repo_type} {repo_id}@{revision}: download failed ({type(e).__name__}: {e})") from None


def snapshot_commit(folder: Path) -> str | None:
    """The commit of a Hub snapshot folder (.../snapshots/<commit>)."""
    return folder.name if folder.parent.name == "snapshots" else None


def _hf_parts(src: str) -> tuple[str, str]:
    parts = str(src)[3:].split("/")
    if len(parts) < 3:
        raise TokenDriftError(f"checkpoint source {src!r}: expected hf:OWNER/REPO/FILE")
    return "/".join(parts[:2]), "/".join(parts[2:])


def _hf_error(src: str, e: Exception) -> TokenDriftError:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return TokenDriftError(f"checkpoint source {src!r}: " + offline_hint("this file"))
    return TokenDriftError(f"checkpoint source {src!r}: download failed: {e}")


def resolve_hf(src: str) -> str:
    """``hf:OWNER/REPO/FILE`` -> the local path of that file, downloaded into the HF cache; a
    ``.safetensors`` file's ``config.json`` beside it in the repository comes with it (into the
    same snapshot folder), where the repository has one."""
    if not str(src).startswith("hf:"):
        return src
    repo, name = _hf_parts(src)
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import RemoteEntryNotFoundError

    try:
        path = hf_hub_download(repo, name)
    except Exception as e:  # network, missing repo/file, auth: all reported as bad input
        raise _hf_error(src, e) from None
    if not name.endswith(".safetensors"):
        return path
    config = posixpath.join(posixpath.dirname(name), "config.json")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        cached = try_to_load_from_cache(repo, config)
        if cached is None:  # neither fetched nor known to be absent
            raise _hf_error(f"hf:{repo}/{config}", FileNotFoundError(config))
    else:
        try:
            hf_hub_download(repo, config)
        except RemoteEntryNotFoundError:
            pass  # the repository has no config.json: the model config decides (import_checkpoint)
        except Exception as e:
            raise _hf_error(f"hf:{repo}/{config}", e) from None
    return path


# --------------------------------------------------------------------------- a dataset revision


def check_hub_revision(cfg: dict, api=None) -> tuple[str, list[str]]:
    """Before any download: the commit ``source.revision`` names and the files of the layout it
    holds. ``api`` is a ``huggingface_hub.HfApi`` (its ``dataset_info``); a branch or a tag is
    refused, naming the commit it points at now and what that commit holds."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    repo, rev = cfg["name"], cfg["revision"]
    try:
        info = api.dataset_info(repo, revision=rev)
    except Exception as e:  # missing repository or revision, network, auth
        raise TokenDriftError(
            f"source.revision: cannot list dataset {repo} at {rev!r} ({type(e).__name__}: {e})"
        ) from None
    names = [s.rfilename for s in (info.siblings or [])]
    where = f"dataset {repo}@{rev}"
    if not owt.COMMIT.fullmatch(rev) or info.sha != rev:
        raise TokenDriftError(
            f"source.revision: {rev!r} is not a commit SHA but a moving name (it points at {info.sha} now, which "
            f"holds {owt.holdings(names)}); the document order, hence the validation split, is only fixed by a commit: "
            f"set source.revision to a 40-hex commit SHA after checking its files"
        )
    return info.sha, owt.check_files(names, where, cfg["layout"], cfg["data_files"])


# --------------------------------------------------------------------------- provenance


def manifest_record(path: str | os.PathLike | None) -> dict | None:
    """Which fetched files a result comes from: the fetch manifest's path and sha256."""
    if not path:
        return None
    p = Path(path)
    if not p.exists():
        raise TokenDriftError(f"fetch manifest not found: {p}: run `snakemake --profile <profile> {FETCH_TARGET}`")
    return {"path": str(p), "sha256": file_digest(p)}


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
