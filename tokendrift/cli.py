"""The ``tokendrift`` command line: one sub-command per job of the pipeline.

Each job module exposes ``register(subparsers)``, which adds its sub-command and sets
``func`` on it. A ``TokenDriftError`` (bad input) prints ``error: ...`` and exits 2.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import os
import sys

from .utils import TokenDriftError

# module name -> its sub-commands are registered in this order in --help
JOB_MODULES = ["fetch", "prepare", "train", "pretrain", "sample", "score", "checkpoint", "grid", "aggregate", "tracking",
               "probe", "status"]
# sub-commands named unlike their module; a job imports only its own module (start-up is per job)
COMMAND_MODULE = {"nelbo": "score", "track": "tracking", "compare": "tracking"}


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


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokendrift", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    command = (argv or [None])[0]
    module = COMMAND_MODULE.get(command, command)
    for name in [module] if module in JOB_MODULES else JOB_MODULES:
        try:
            module = importlib.import_module(f"tokendrift.{name}")
        except ModuleNotFoundError as e:  # a job module not written yet
            if e.name == f"tokendrift.{name}":
                continue
            raise
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    tune_allocator()
    args = build_parser(argv).parse_args(argv)
    try:
        rc = args.func(args)
    except TokenDriftError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an unwritable or vanished results folder, a full disk: name the file
        where = e.filename or ""
        print(f"error: {where}: {e.strerror or e}" if where else f"error: {e}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
