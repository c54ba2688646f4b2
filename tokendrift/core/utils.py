"""Small shared helpers: the user-facing error type, atomic writes, digests."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


class TokenDriftError(Exception):
    """A user-facing error: bad input, a bad file, a bad config field.

    The message names the offending field or file. The command line prints it and exits
    with status 2; nothing is written to the output location.
    """


def figure_bytes(fig, ext: str) -> bytes:
    """A matplotlib figure as PNG or PDF, the same bytes on every rerun (no creation date in the PDF)."""
    import io

    buf = io.BytesIO()
    fig.savefig(
        buf, format=ext, dpi=150, bbox_inches="tight", metadata={"CreationDate": None} if ext == "pdf" else None
    )
    return buf.getvalue()


def resolve_device(device: str) -> str:
    """A job's ``device`` option: "auto" is cuda when a GPU is visible, else cpu."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# tempfile creates private (0600 / 0700) files and folders; results are shared like any other
# file the user writes, so atomic writes give them the permissions the umask allows
_UMASK = _umask()
FILE_MODE, DIR_MODE = 0o666 & ~_UMASK, 0o777 & ~_UMASK


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# a write that fails while its file system has less than this free is reported as a full disk
# (torch.save's writer then says only "iostream error" or "unexpected pos", naming no file)
FULL_BYTES = 64 << 20


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _raise_if_full(path: Path, error: BaseException, free: int | None) -> None:
    """Re-raise a failed write to ``path`` as a full file system when it is one (``free``: the bytes
    free when the write failed, before its temporary files were removed)."""
    if isinstance(error, Exception) and not isinstance(error, TokenDriftError) and free is not None:
        if free < FULL_BYTES:
            raise TokenDriftError(
                f"{path}: not written, its file system is full ({free} bytes free): {type(error).__name__}: {error}"
            ) from error


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer killed with SIGKILL
        with contextlib.suppress(OSError):
            stale.unlink()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        free = _free_bytes(path.parent)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _raise_if_full(path, e, free)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` whole.

    On any exception the temporary folder is removed and ``path`` is left as it was, so a
    reader sees either the old complete folder or the new complete one, never a mix; the
    temporary folder of a writer killed outright is removed by the next writer of ``path``.
    A failure on a full file system is raised as a TokenDriftError that names ``path`` and says so.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer killed with SIGKILL
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, DIR_MODE)
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        free = _free_bytes(path.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_if_full(path, e, free)
        raise


def file_digest(path: str | os.PathLike, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def config_digest(obj: Any) -> str:
    """A short stable digest of a JSON-able config (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# The folders (under tokendrift/) whose code makes results: the library, the jobs and their schemas.
# Everything else (the reporting layer report/, the grid and its rules, the command line, the
# warm-start server: a fork runs the same code) only reads results or starts jobs, so editing it
# must not make trained models or their scores stale.
RESULT_CODE = ("core", "jobs", "schemas")


def code_digest(reporting: bool = True, root: str | os.PathLike | None = None) -> str:
    """Digest of the package's own source files (those under ``root``, default this package):
    results go stale when the code changes. ``reporting=False`` covers the RESULT_CODE folders
    only (the digest of training and evaluation)."""
    h = hashlib.sha256()
    root = Path(root) if root is not None else Path(__file__).parents[1]
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if (
            f.suffix in {".py", ".yaml", ".json"}
            and "__pycache__" not in f.parts
            and (reporting or rel.parts[0] in RESULT_CODE)
        ):
            h.update(rel.as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def temp_str(t: float) -> str:
    """How a sampling temperature appears in paths: 1.0 -> "1.0", 0.75 -> "0.75"."""
    return repr(float(t))


def read_json(path: str | os.PathLike, what: str = "file", error: type = TokenDriftError) -> Any:
    """Read a JSON file, turning a missing or corrupt file into an ``error`` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{what} {path} is not valid JSON: {e}") from None


# --------------------------------------------------------------------------- the allocator of every job

# glibc mallopt parameters (malloc.h) and the values every job runs with
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's maximum on 64-bit systems
TRIM_THRESHOLD = 2**31 - 1


def user_malloc_settings(environ=os.environ) -> list[str]:
    """The variables by which the user tunes or replaces malloc (then tune_allocator keeps off)."""
    return [k for k in environ if k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", "LD_PRELOAD")]


def tune_allocator() -> bool:
    """Keep freed memory in the process for the next step instead of handing it back to the OS.

    glibc's malloc serves blocks above its mmap threshold (128 KiB at start) with fresh mmaps
    and trims the heap when more than its trim threshold is free, so a CPU training or sampling
    loop page-faults its activations back in at every step. Here the threshold goes to its
    maximum (32 MiB) and trimming happens only above 2 GiB free; PyTorch's CPU tuning guide
    gets the same effect by preloading jemalloc or tcmalloc. BENCHMARKS.md (sections 1 and 5)
    measures what it saves. Left alone when the user tunes malloc
    (MALLOC_*_ variables, GLIBC_TUNABLES, LD_PRELOAD) and off glibc. Returns whether it applied.
    """
    if user_malloc_settings():
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
