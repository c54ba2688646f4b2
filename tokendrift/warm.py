"""Warm start of local jobs: a fork server that imports torch, transformers and the package once.

Most of a short sampling or scoring job of the embedded default is start-up (importing torch,
about 1 s, and transformers' GPT-2 module, 2.4 s; BENCHMARKS.md, section 5). With warm start on,
``tokendrift <command>`` hands its argument list, environment, folder and standard streams to a
server on this machine that has imported everything already; the server forks, and the fork
runs the command exactly as the process itself would have (same code, same arguments, same
environment, output into the same files). The process that Snakemake started stays until the
fork ends and exits with its status; a signal it gets (Ctrl-C, a timeout) goes to the fork, and
if it is killed outright the server kills the fork. Results are byte-identical either way.

On when ``TOKENDRIFT_WARM=1``, or when it is unset and the job is a local submitit process
(``SUBMITIT_EXECUTOR=local``: ``profiles/local``); ``TOKENDRIFT_WARM=0`` turns it off. Never on
a cluster: a server started by one Slurm job would die with that job's allocation.

The first job that finds no server starts one (detached) and runs itself as usual; the server
exits after ``IDLE_S`` seconds without a job. One server per user, environment and code: the
socket's name carries a digest of the variables read at import (thread counts, Hugging Face
settings, Python's path, ...), the interpreter and the package's files, so a job whose
environment or code differs from the server's never runs on it (it starts its own).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from .core.utils import tune_allocator

IDLE_S = 300.0  # the server exits after this long without a job (the default's pretraining takes 2 minutes)
RETRY_S = 120.0  # a job starts a server only if none was started in this many seconds
MAX_SOCKET_PATH = 107  # bytes in a Unix socket's name (Linux: sun_path of 108 with its NUL)
# commands that import torch (the others start fast and gain nothing)
WARM_COMMANDS = {"train", "pretrain", "sample", "score", "nelbo", "probe", "entropy-rate", "checkpoint"}
# variables read when torch, transformers or the interpreter start: a job runs warm only on a
# server that started with the same values
IMPORT_VARS = (
    "OMP_",
    "MKL_",
    "KMP_",
    "GOMP_",
    "TORCH",
    "PYTORCH",
    "CUDA",
    "HF_",
    "TRANSFORMERS_",
    "TOKENIZERS_",
    "PYTHON",
    "LD_",
    "MALLOC_",
    "GLIBC_",
    "LC_",
    "LANG",
    "TZ",
)
# the server's command: the client's own Python path, so that it imports the same code
SERVER = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); from tokendrift.cli import main as command; "
    "from tokendrift.warm import main; main(sys.argv[2:], command)"
)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def enabled(environ=os.environ) -> bool:
    flag = environ.get("TOKENDRIFT_WARM")
    if flag is not None:
        return flag == "1"
    return environ.get("SUBMITIT_EXECUTOR") == "local"


def server_key(environ=os.environ) -> str:
    """Digest of what a fork inherits from the server: the import-time variables, the interpreter
    and its path, and the package's files (name, size, modification time), its job schemas
    included (the server holds them parsed)."""
    h = hashlib.sha256()
    env = sorted((k, v) for k, v in environ.items() if k.startswith(IMPORT_VARS))
    path = [os.path.abspath(p) for p in sys.path]  # "" (python -c) is the current folder
    h.update(json.dumps([env, sys.executable, path, os.getuid()]).encode())
    root = Path(__file__).parent
    for f in sorted([*root.rglob("*.py"), *root.rglob("*.yaml")]):
        st = f.stat()
        h.update(f"{f.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def socket_path(environ=os.environ) -> Path:
    return Path(tempfile.gettempdir()) / f"tokendrift-warm-{os.getuid()}-{server_key(environ)}.sock"


# ----------------------------------------------------------------------------- client


def _send(sock: socket.socket, obj) -> None:
    data = json.dumps(obj).encode()
    sock.sendall(struct.pack("!I", len(data)) + data)


def _recv(sock: socket.socket):
    """One message, or None at end of stream."""
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    return json.loads(_recv_exact(sock, struct.unpack("!I", head)[0]) or b"null")


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def run_warm(argv: list[str]) -> int | None:
    """Run ``tokendrift argv`` on the warm server: its exit status, or None when no server took
    it (the caller then runs it itself; a server is started for the jobs after it)."""
    path = socket_path()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        socket.send_fds(sock, [json.dumps({"argv": argv}).encode()], [0, 1, 2])
        umask = os.umask(0)
        os.umask(umask)
        context = {"env": dict(os.environ), "cwd": os.getcwd(), "umask": umask, "cpus": sorted(os.sched_getaffinity(0))}
        _send(sock, context)
        reply = _recv(sock)
    except OSError:
        reply = None
    if not (isinstance(reply, dict) and "pid" in reply):
        sock.close()
        start_server(path)
        return None
    # from here the fork runs the job: pass on signals, wait for its status
    for sig in FORWARDED:
        signal.signal(sig, lambda signum, _frame: _send(sock, {"signal": signum}))
    while True:
        try:
            msg = _recv(sock)
            break
        except InterruptedError:
            continue
    if not isinstance(msg, dict) or "status" not in msg:
        print("error: the warm-start server ended before the job (see its log)", file=sys.stderr)
        return 1
    status = msg["status"]
    if status < 0:  # killed by a signal: end the same way, so the caller sees what a cold job shows
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        return 128 - status
    return status


def start_server(path: Path) -> None:
    """Start a detached server on ``path`` (it exits at once if one runs). Not when a server was
    started there in the last RETRY_S seconds (it may still be importing, or it failed: then the
    jobs run cold instead of each importing torch twice), nor where the socket's name is too long."""
    lock = Path(f"{path}.lock")
    with contextlib.suppress(OSError):
        if time.time() - lock.stat().st_mtime < RETRY_S:
            return
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        return
    with contextlib.suppress(OSError):
        lock.touch()
        subprocess.Popen(  # in "/": a detached server holds no job's folder (each fork enters its job's)
            [sys.executable, "-c", SERVER, json.dumps([p or os.getcwd() for p in sys.path]), str(path)],
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )


# ----------------------------------------------------------------------------- server


def preload() -> None:
    """Import what the jobs import (no computation: a fork must start with no threads running)."""
    import torch  # noqa: F401
    import transformers.models.gpt2.modeling_gpt2  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast  # noqa: F401

    from .core import checkpoint, data, divergence  # noqa: F401
    from .core.config import SCHEMA_DIR, schema
    from .jobs import pretrain, probe, sample, score, train  # noqa: F401

    for f in SCHEMA_DIR.glob("*.schema.yaml"):  # parsed once here (cached), not in every job
        schema(f.name.removesuffix(".schema.yaml"))

    # What a scoring job imported or built itself after these: mauve-text's imports (scikit-learn,
    # scipy.stats, faiss; more than half of a warm scoring job's time) and transformers' table of
    # checkpoint key conversions, which every from_pretrained builds once per process (pure Python,
    # cached in its module). scikit-learn pulls in pyarrow, whose jemalloc would start a background
    # thread at load: switched off for that load (a fork must not inherit threads).
    arrow = os.environ.get("JE_ARROW_MALLOC_CONF")
    os.environ["JE_ARROW_MALLOC_CONF"] = "background_thread:false"
    try:
        import mauve.compute_mauve  # noqa: F401
    finally:
        if arrow is None:
            del os.environ["JE_ARROW_MALLOC_CONF"]
        else:
            os.environ["JE_ARROW_MALLOC_CONF"] = arrow
    with contextlib.suppress(ImportError, AttributeError):
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping

        get_checkpoint_conversion_mapping("gpt2")


def serve(path: Path, idle_s: float, command) -> None:
    """Accept jobs on the socket ``path`` until idle for ``idle_s`` seconds; a fork runs
    ``command(argv, warm=False)`` (``tokendrift.cli.main``, given by the server's start command)."""
    lock = open(f"{path}.lock", "a")  # noqa: SIM115 (held for the server's life)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return  # another server has this socket
    tune_allocator()  # before the imports, as in a cold job
    preload()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    inode = os.stat(path).st_ino  # the socket's name is removed at the end only if still this server's
    listener.listen(64)
    log = open(f"{path}.log", "a", buffering=1)  # noqa: SIM115 (one line per job: its arguments and status)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    jobs: dict[int, tuple[socket.socket, int]] = {}  # pidfd -> (connection, pid)
    idle_since = time.monotonic()
    try:
        while jobs or time.monotonic() - idle_since < idle_s:
            if not path.exists():
                break  # socket removed: stop taking jobs
            for key, _ in sel.select(timeout=1.0):
                try:
                    _handle(key, listener, sel, log, jobs, command)
                except Exception as e:  # one client's trouble: the server goes on
                    print(f"{time.strftime('%H:%M:%S')} error {e!r}", file=log)
                if key.data is not None and key.data[0] == "exit":
                    idle_since = time.monotonic()
    finally:
        for conn, pid in jobs.values():  # never leave a fork without the process that waits for it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == inode:
                path.unlink()
        listener.close()


def _handle(key, listener, sel, log, jobs: dict, command) -> None:
    """One ready event: a new job, a message from a job's process, or a fork's end."""
    if key.data is None:
        conn, _ = listener.accept()
        job = _start_job(conn, listener, sel, log, jobs, command)
        if job is None:
            conn.close()
            return
        pid, pidfd, what = job
        print(f"{time.strftime('%H:%M:%S')} start {pid} {what}", file=log)
        jobs[pidfd] = (conn, pid)
        sel.register(pidfd, selectors.EVENT_READ, ("exit", pidfd))
        sel.register(conn, selectors.EVENT_READ, ("client", pidfd))
    elif key.data[0] == "client":
        if key.data[1] not in jobs:  # its fork ended in this same round
            return
        conn, pid = jobs[key.data[1]]
        try:
            msg = _recv(conn)
        except OSError:
            msg = None
        if msg is None:  # the job's process is gone (killed outright): end the fork
            sel.unregister(conn)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        elif "signal" in msg:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, int(msg["signal"]))
    else:
        pidfd = key.data[1]
        conn, pid = jobs.pop(pidfd)
        _, wstatus = os.waitpid(pid, 0)
        status = -os.WTERMSIG(wstatus) if os.WIFSIGNALED(wstatus) else os.WEXITSTATUS(wstatus)
        sel.unregister(pidfd)
        os.close(pidfd)
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(conn)
        print(f"{time.strftime('%H:%M:%S')} end {pid} status {status}", file=log)
        with contextlib.suppress(OSError):
            _send(conn, {"status": status})
        conn.close()


def _start_job(
    conn: socket.socket, listener: socket.socket, sel, log, jobs: dict, command
) -> tuple[int, int, str] | None:
    """Read one job's request and fork it: (pid, pidfd, its line in the log), or None for a bad request."""
    try:
        conn.settimeout(10.0)
        msg, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
        request = json.loads(msg)
        context = _recv(conn)
        conn.settimeout(None)
    except (OSError, ValueError):
        return None
    if len(fds) != 3 or not isinstance(context, dict):
        for fd in fds:
            os.close(fd)
        return None
    pid = os.fork()
    if pid == 0:  # the job
        status = 1
        try:
            sel.close()
            listener.close()
            log.close()
            for pidfd, (other, _) in jobs.items():  # the other jobs' ends stay with the server only
                os.close(pidfd)
                other.close()
            conn.close()
            for i, fd in enumerate(fds):
                os.dup2(fd, i)
                os.close(fd)
            for sig in FORWARDED:  # Python's own start-up handlers: Ctrl-C raises KeyboardInterrupt
                signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
            os.setpgid(0, 0)
            os.umask(context["umask"])
            os.sched_setaffinity(0, context["cpus"])
            os.chdir(context["cwd"])
            os.environ.clear()
            os.environ.update(context["env"])
            sys.argv = ["tokendrift", *request["argv"]]
            status = command(request["argv"], warm=False)
        except SystemExit as e:  # argparse's usage errors
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except KeyboardInterrupt:  # end by SIGINT, as Python does
            traceback.print_exc()
            sys.stderr.flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)
    for fd in fds:
        os.close(fd)
    _send(conn, {"pid": pid})
    return pid, os.pidfd_open(pid), f"in {context['cwd']}: tokendrift {' '.join(request['argv'])}"


def main(args: list[str], command) -> None:
    """``SOCKET [IDLE_S]``: serve on SOCKET, each job a fork that runs ``command`` (started by ``start_server``)."""
    serve(Path(args[0]), float(args[1]) if len(args) > 1 else IDLE_S, command)
