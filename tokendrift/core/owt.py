"""OpenWebText as the Hub holds it: its original tar layout read by our own code, and the check
of a file listing against the layout (the Hub revision itself is listed by ``tokendrift.core.hub``).

The original layout (``source.layout: tar``) is the 21 archives ``subsets/urlsf_subset00.tar`` ..
``urlsf_subset20.tar``; each archive's ``.xz`` members hold a tar of ``.txt`` documents. The
dataset's loading script ``openwebtext.py`` (Skylion007/openwebtext; copies of it are public, e.g.
github.com/yuki-nyaa/myGPT ``dataset/build.py`` at a6956cd7cc83e11fa099d412acacda532df911bf)
lists the archives in index order (``_DATA_FILES``), iterates each archive's members with
``datasets``' ``iter_archive`` (tarfile in stream mode, archive order; only regular files, none
whose base name starts with "." or "__"), skips members not ending in ``.xz``, iterates the
``.txt`` members of the tar inside each ``.xz`` the same way, and yields
``re.sub("\\n\\n\\n+", "\\n\\n", text.decode("utf-8")).strip()``. MDLM and DUO load it with
``load_dataset("openwebtext", split="train[-100000:]")`` for validation, so this order decides
which documents are held out. Nothing downloaded is ever run: the documents are read here with
``tarfile`` and ``lzma`` in the same order and with the same normalization.
"""

from __future__ import annotations

import fnmatch
import lzma
import os
import re
import tarfile
from collections import Counter
from pathlib import Path, PurePosixPath

from .utils import TokenDriftError

TAR_FILES = "subsets/urlsf_subset*.tar"  # the original layout's archives (source.data_files: null)
# data file formats that datasets.load_dataset reads without a loading script (layout data_files)
DATA_FORMATS = {
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".json": "json",
    ".jsonl": "json",
    ".json.gz": "json",
    ".jsonl.gz": "json",
}
ARROW_BATCH = 1000  # documents per record batch of the data stage's Arrow copy
COMMIT = re.compile(r"[0-9a-f]{40}")


# --------------------------------------------------------------------------- the tar layout


def normalize_text(text: str) -> str:
    """openwebtext.py's normalization: runs of three or more newlines become two; strip."""
    return re.sub("\n\n\n+", "\n\n", text).strip()


def _archive_file(member: tarfile.TarInfo, suffix: str) -> bool:
    """A member that ``datasets``' iter_archive yields and the script keeps: a regular file, not
    hidden (base name starting with "." or "__"), with the suffix."""
    base = os.path.basename(member.name)
    return member.isreg() and not base.startswith((".", "__")) and member.name.endswith(suffix)


def tar_documents(archive: str | os.PathLike):
    """The documents of one ``urlsf_subsetNN.tar``, in the loading script's order, normalized."""
    archive = Path(archive)
    try:
        with tarfile.open(archive, mode="r|*") as outer:
            for xz in outer:
                if not _archive_file(xz, ".xz"):
                    continue
                with lzma.open(outer.extractfile(xz)) as f, tarfile.open(fileobj=f, mode="r|") as inner:
                    for doc in inner:
                        if not _archive_file(doc, ".txt"):
                            continue
                        raw = inner.extractfile(doc).read()
                        try:
                            yield normalize_text(raw.decode("utf-8"))
                        except UnicodeDecodeError as e:
                            raise TokenDriftError(
                                f"source: {archive}: {xz.name}/{doc.name} is not UTF-8 ({e})"
                            ) from None
                        inner.members = []  # stream mode keeps no index: memory stays flat
                outer.members = []
    except (tarfile.TarError, lzma.LZMAError, EOFError, OSError) as e:
        raise TokenDriftError(f"source: {archive}: truncated or corrupt archive ({type(e).__name__}: {e})") from None


def count_documents(archive: str | os.PathLike) -> int:
    return sum(1 for _ in tar_documents(archive))


def count_tar_documents(archives: list[Path], num_proc: int = 1) -> int:
    """The corpus's document count (every archive decompressed; ``num_proc`` archives at a time)."""
    if num_proc > 1 and len(archives) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(num_proc, len(archives))) as pool:
            return sum(pool.map(count_documents, archives))
    return sum(map(count_documents, archives))


def _write_arrow(job: tuple[str, str]) -> int:
    """One archive's documents as an Arrow stream file with a ``text`` column; their count."""
    import pyarrow as pa

    archive, out = job
    schema = pa.schema([("text", pa.large_string())])
    n, batch = 0, []
    with pa.OSFile(out, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for text in tar_documents(archive):
            batch.append(text)
            if len(batch) == ARROW_BATCH:
                writer.write_batch(pa.record_batch([pa.array(batch, pa.large_string())], schema=schema))
                n, batch = n + len(batch), []
        if batch:
            writer.write_batch(pa.record_batch([pa.array(batch, pa.large_string())], schema=schema))
            n += len(batch)
    return n


def tar_to_arrow(archives: list[Path], folder: Path, num_proc: int = 1) -> list[Path]:
    """The documents of the archives, in order, as one Arrow file per archive under ``folder``
    (memory-mapped by the data stage like a parquet corpus's Arrow cache)."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(a), str(folder / f"{i:05d}.arrow")) for i, a in enumerate(archives)]
    if num_proc > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(num_proc, len(jobs))) as pool:
            pool.map(_write_arrow, jobs)
    else:
        for job in jobs:
            _write_arrow(job)
    return [Path(out) for _, out in jobs]


def arrow_corpus(files: list[Path]):
    """The Arrow files of ``tar_to_arrow`` as one memory-mapped ``datasets.Dataset``."""
    import datasets

    parts = [datasets.Dataset.from_file(str(f), in_memory=False) for f in files]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


# --------------------------------------------------------------------------- which files


def layout_files(names: list[str], layout: str, pattern: str | None) -> list[str]:
    """The files of ``names`` (relative paths) that a layout reads, in reading order."""
    if layout == "tar":
        return sorted(n for n in names if n.endswith(".tar") and fnmatch.fnmatch(n, pattern or TAR_FILES))
    return sorted(
        n for n in names if n.endswith(tuple(DATA_FORMATS)) and (pattern is None or fnmatch.fnmatch(n, pattern))
    )


def partial_files(names: list[str]) -> list[str]:
    """Files under a ``partial-*`` folder: the Hub's parquet converter writes a prefix of a large
    corpus there (refs/convert/parquet, ``default/partial-train/``), never the whole."""
    return [n for n in names if any(part.startswith("partial-") for part in PurePosixPath(n).parts[:-1])]


def holdings(names: list[str], limit: int = 12) -> str:
    """What a listing holds, in brief: root files by name, folders by pattern and count."""
    groups: Counter = Counter()
    for n in names:
        p = PurePosixPath(n)
        if p.name.startswith("."):
            continue
        if len(p.parts) == 1:
            groups[n] += 1
            continue
        ext = "".join(p.suffixes[-2:]) if p.name.endswith(".gz") else p.suffix
        groups[f"{p.parent.as_posix()}/*{ext}"] += 1
    parts = [f"{g} ({c} files)" if c > 1 else g for g, c in sorted(groups.items())]
    more = f", and {len(parts) - limit} more" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more if parts else "no files"


def layout_hint(names: list[str]) -> str:
    """Which source settings read what a listing holds."""
    hints = []
    if layout_files(names, "tar", None):
        hints.append(f"source.layout: tar (data_files: {TAR_FILES})")
    parquet = [n for n in layout_files(names, "data_files", None) if not partial_files([n])]
    if parquet:
        folders = sorted({PurePosixPath(n).parent.as_posix() for n in parquet})
        hints.append("source.layout: data_files with data_files: " + " or ".join(f"'{f}/*'" for f in folders[:3]))
    return "; use " + ", or ".join(hints) if hints else ""


def check_files(names: list[str], where: str, layout: str, pattern: str | None) -> list[str]:
    """The files a layout reads from a listing (a Hub revision's or a local folder's); stops,
    naming what the listing holds, when there are none, and refuses a partial conversion."""
    data = layout_files(names, layout, pattern)
    partial = partial_files(data)
    if partial:
        raise TokenDriftError(
            f"source.data_files: {where}: {partial[0]} is in a partial-* folder, a partial conversion that holds "
            "only a prefix of the corpus (the Hub's parquet converter writes one for large datasets); name the full "
            "copy's files"
        )
    if data:
        return data
    scripts = sorted(n for n in names if n.endswith(".py"))
    hint = layout_hint(names)
    if scripts and not hint:
        raise TokenDriftError(
            f"source: {where} is a script-only dataset ({', '.join(scripts)}; no parquet, json or arrow data files"
            f"{' matching ' + repr(pattern) if pattern else ''}). The datasets library no longer runs loading "
            "scripts and this project never runs downloaded code: name a revision that holds the data files "
            "(Skylion007/openwebtext: subsets/urlsf_subsetNN.tar, source.layout: tar), or convert it yourself and "
            "set source.path"
        )
    want = pattern or (TAR_FILES if layout == "tar" else "parquet, json or arrow files")
    raise TokenDriftError(
        f"source.data_files: {where} holds no {want} for source.layout: {layout}; it holds {holdings(names)}{hint}"
    )
