"""The ``tokendrift`` command line: one sub-command per job of the pipeline.

Each job module exposes ``register(subparsers)``, which adds its sub-command and sets
``func`` on it. A ``TokenDriftError`` (bad input) prints ``error: ...`` and exits 2.
"""

from __future__ import annotations

import argparse
import sys

from .core.utils import TokenDriftError, tune_allocator
from .warm import WARM_COMMANDS, run_warm
from .warm import enabled as warm_enabled

# The sub-commands in --help order; `command_module` names the module that defines each.
COMMANDS = [
    "fetch",
    "prepare",
    "entropy-rate",
    "train",
    "pretrain",
    "sample",
    "score",
    "nelbo",
    "checkpoint",
    "grid",
    "aggregate",
    "track",
    "compare",
    "probe",
    "status",
]


def command_module(command: str):
    """The module whose ``register(subparsers)`` adds ``command``, imported only when that command
    runs: a data job never loads torch, and no job pays for another's imports."""
    match command:
        case "fetch":
            from .jobs import fetch as module
        case "prepare":
            from .jobs import prepare as module
        case "entropy-rate":
            from .core import data as module
        case "train":
            from .jobs import train as module
        case "pretrain":
            from .jobs import pretrain as module
        case "sample":
            from .jobs import sample as module
        case "score" | "nelbo":
            from .jobs import score as module
        case "checkpoint":
            from .core import checkpoint as module
        case "grid":
            from . import grid as module
        case "aggregate":
            from .report import aggregate as module
        case "track" | "compare":
            from .report import tracking as module
        case "probe":
            from .jobs import probe as module
        case "status":
            from .report import status as module
        case _:
            return None
    return module


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokendrift", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    command = (argv or [None])[0]
    modules = [command_module(c) for c in ([command] if command in COMMANDS else COMMANDS)]
    for module in dict.fromkeys(modules):  # score and tracking define two sub-commands each
        module.register(sub)
    return parser


def main(argv: list[str] | None = None, *, warm: bool = True) -> int:
    """Run one command; with ``warm`` (not inside the warm-start server's fork) a command that
    imports torch runs on the warm-start server when it is on (tokendrift.warm)."""
    argv = sys.argv[1:] if argv is None else argv
    if warm and argv and argv[0] in WARM_COMMANDS and warm_enabled():
        rc = run_warm(argv)
        if rc is not None:
            return rc
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
