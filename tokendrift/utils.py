"""Small shared helpers: the user-facing error type, atomic writes, digests."""

from __future__ import annotations

import contextlib
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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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


# Modules that only read results (tables, figures, MLflow, the probe, the CLI, paths) or only start
# jobs (the warm-start server: a fork runs the same code): editing them must not make trained
# models or their scores stale.
REPORTING = (
    "aggregate.py",
    "tracking.py",
    "probe.py",
    "grid/__init__.py",
    "grid/sheet.py",
    "grid/layout.py",
    "grid/rules.py",
    "cli.py",
    "cost.py",
    "status.py",
    "grid/paper_grid.yaml",
    "warm.py",
)


def code_digest(reporting: bool = True) -> str:
    """Digest of the package's own source files: results go stale when the code changes.
    ``reporting=False`` leaves out the REPORTING modules (the digest of training and evaluation)."""
    h = hashlib.sha256()
    root = Path(__file__).parent
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root).as_posix()
        if (
            f.suffix in {".py", ".yaml", ".json"}
            and "__pycache__" not in f.parts
            and (reporting or rel not in REPORTING)
        ):
            h.update(rel.encode())
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
