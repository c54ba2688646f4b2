"""Completion records: what a job wrote, with the size and SHA-256 of every file, checked on read.

A job's record is a JSON object it writes last (a training run's ``done.json``, a model or sample
folder's ``meta.json``, the evaluator's ``metrics.json``, the probe's ``done.json``, a score, NELBO
or entropy-rate file itself). Next to its own content it holds

- ``files``: ``{path relative to the record's folder: {"size": bytes, "sha256": hex}}`` of every
  other file the job wrote (checkpoints, sample ids and text, metrics);
- ``record_sha256``: the SHA-256 of the record's own content (without this key), so a record
  cut short or with one byte changed is found as well as any of its files.

Every reader checks a record before use (``check``); the workflow checks the record of every job
of the grid when Snakemake starts (``tokendrift.grid.layout.Layout.verify_records``) and marks the outputs
of a job whose files do not match its record incomplete, as Snakemake marks a job it started
(``mark_incomplete``), with a message naming the file and the job: the run reruns exactly that
job, then what reads its output. Hashing large files at every start is avoided by a cache of
verified digests keyed by each file's size, mtime, ctime and inode (any write changes the ctime,
which no user can set); a file is hashed at the first start after its job wrote it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

from .utils import TokenDriftError, atomic_write_text, file_digest

DIGEST = "record_sha256"


class RecordError(TokenDriftError):
    """A completion record, or a file it lists, is missing, cut short or altered."""


def _body_digest(body: dict) -> str:
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def record_text(obj: dict, folder: str | os.PathLike | None = None, files: Iterable[str | os.PathLike] = ()) -> str:
    """The text of a record: ``obj``, the size and SHA-256 of ``files`` (relative to ``folder``,
    the record's own folder) and the digest of the whole."""
    body = {k: v for k, v in obj.items() if k != DIGEST}
    if folder is not None:
        folder = Path(folder)
        body["files"] = {Path(f).relative_to(folder).as_posix(): file_entry(f) for f in sorted(map(Path, files))}
    body = json.loads(json.dumps(body, default=str))  # what a reader parses back
    return json.dumps({**body, DIGEST: _body_digest(body)}, indent=2, sort_keys=True) + "\n"


def write_record(path: str | os.PathLike, obj: dict, files: Iterable[str | os.PathLike] = ()) -> None:
    """Write a record atomically; ``files`` are paths in or below the record's folder."""
    path = Path(path)
    atomic_write_text(path, record_text(obj, path.parent, files))


def file_entry(path: str | os.PathLike) -> dict:
    return {"size": os.path.getsize(path), "sha256": file_digest(path)}


def job_files(folder: str | os.PathLike, record: str = "done.json") -> list[Path]:
    """Every file a job wrote under ``folder`` except its record (and writers' temporary files)."""
    folder = Path(folder)
    return sorted(
        f
        for f in folder.rglob("*")
        if f.is_file() and f.name != record and not any(p.startswith(".") for p in f.relative_to(folder).parts)
    )


class Verifier:
    """Checks records, hashing each file once per change (``cache``: a JSON file of verified digests)."""

    def __init__(self, cache: str | os.PathLike | None = None):
        self.cache_path = Path(cache) if cache else None
        self.cache: dict[str, list] = {}
        self._dirty = False
        if self.cache_path and self.cache_path.exists():
            try:
                self.cache = json.loads(self.cache_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError, OSError):
                self.cache = {}

    def digest(self, path: Path, st: os.stat_result) -> str:
        key = str(path.absolute())
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        hit = self.cache.get(key)
        if hit and hit[:4] == stamp:
            return hit[4]
        h = file_digest(path)
        self.cache[key] = [*stamp, h]
        self._dirty = True
        return h

    def problems(self, path: str | os.PathLike) -> list[tuple[Path, str]]:
        """(file, what is wrong) for a record and each file it lists; [] when all match."""
        return self._read(Path(path))[1]

    def _read(self, path: Path) -> tuple[dict | None, list[tuple[Path, str]]]:
        """The record parsed from one read of its bytes, and what is wrong with it or its files."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None, [(path, "missing")]
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return None, [(path, f"not valid JSON, cut short or altered ({e})")]
        if not isinstance(obj, dict) or DIGEST not in obj:
            return None, [(path, f"no {DIGEST}: not a completion record (written by an older version, or altered)")]
        body = {k: v for k, v in obj.items() if k != DIGEST}
        if obj[DIGEST] != _body_digest(body) or raw != record_text(obj).encode():
            return None, [(path, "content does not match its record_sha256 (altered or cut short)")]
        out = []
        for rel, want in (obj.get("files") or {}).items():
            f = path.parent / rel
            try:
                st = f.stat()
            except FileNotFoundError:
                out.append((f, "missing"))
                continue
            if st.st_size != want["size"]:
                out.append((f, f"size {st.st_size} bytes, recorded {want['size']} (cut short or altered)"))
            elif self.digest(f, st) != want["sha256"]:
                out.append((f, "SHA-256 differs from the recorded one (altered)"))
        return obj, out

    def check(self, path: str | os.PathLike, what: str = "record") -> dict:
        """The parsed record, or a RecordError naming the first bad file."""
        obj, bad = self._read(Path(path))
        if bad:
            f, why = bad[0]
            raise RecordError(f"{f}: {why} (checked against {what} {path}); delete it and rerun the job that wrote it")
        return obj

    def save(self) -> None:
        if self.cache_path and self._dirty:
            atomic_write_text(self.cache_path, json.dumps(self.cache, sort_keys=True))
            self._dirty = False


def check(path: str | os.PathLike, what: str = "record") -> Any:
    """Check a record and the files it lists; return it parsed (RecordError names the bad file)."""
    return Verifier().check(path, what)


def mark_incomplete(paths: Iterable[str], workdir: str | os.PathLike = ".") -> None:
    """Mark job outputs incomplete the way Snakemake does for a job it started (its file persistence:
    ``.snakemake/incomplete/<urlsafe base64 of the path>``, a long name split into '@'-prefixed
    folders; tokendrift.report.status reads the same markers): Snakemake reruns their jobs
    (``--rerun-incomplete``, set by the workflow profile) and removes the marks when they succeed."""
    root = Path(workdir) / ".snakemake" / "incomplete"
    root.mkdir(parents=True, exist_ok=True)
    n = max(2, (os.pathconf(root, "PC_NAME_MAX") if os.name == "posix" else 255) - 1)
    for path in paths:
        b64 = base64.urlsafe_b64encode(str(path).encode()).decode()
        chunks = [b64[i : i + n] for i in range(0, len(b64), n)]
        marker = root.joinpath(*["@" + c for c in chunks[:-1]], chunks[-1])
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"external_jobid": None}))


def verify_jobs(jobs: Iterable[tuple], cache: str | os.PathLike | None = None, log=None) -> list[str]:
    """Check the records of ``jobs`` ((job name, its record files[, its outputs when they are not
    the records])); return the outputs of the jobs whose record or files do not match, after
    ``log`` got one line per bad file naming the file, the job and the record (the workflow marks
    those outputs incomplete: ``mark_incomplete``)."""
    import sys

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    v = Verifier(cache)
    redo: list[str] = []
    for job, records, *outputs in jobs:
        bad = [(r, f, why) for r in records if Path(r).exists() for f, why in v.problems(r)]
        if not bad:
            continue
        redo += [str(o) for o in (outputs[0] if outputs else records) if Path(o).exists()]
        for r, f, why in bad:
            log(f"tokendrift: {f}: {why}; written by job {job} (record {r}): marked incomplete, so it reruns")
    v.save()
    return redo
