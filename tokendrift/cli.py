"""The ``tokendrift`` command line: one sub-command per job of the pipeline.

Each job module exposes ``register(subparsers)``, which adds its sub-command and sets
``func`` on it. A ``TokenDriftError`` (bad input) prints ``error: ...`` and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .utils import TokenDriftError

# module name -> its sub-commands are registered in this order in --help
JOB_MODULES = ["train", "pretrain", "sample", "score", "checkpoint", "grid", "aggregate", "tracking", "probe"]
# sub-commands named unlike their module; a job imports only its own module (start-up is per job)
COMMAND_MODULE = {"nelbo": "score", "track": "tracking", "compare": "tracking"}


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
