"""The pretraining job of the embedded default: its own tiny "released" MDLM and DUO, trained
from scratch with their base losses, and the small causal LM that stands in for GPT-2 Large
as the Gen.-PPL evaluator (docs/embedded_default.md). Every one of them resumes like training.

    tokendrift pretrain mdlm --config cfg.yaml --steps 1200 --out DIR  # a train job with init: null
    tokendrift pretrain duo  --config cfg.yaml --out DIR
    tokendrift pretrain evaluator --config cfg.yaml --out DIR          # schema: evaluator.schema.yaml

Each takes the options of its schema as flags (tokendrift/schemas/train.schema.yaml, or
evaluator.schema.yaml), on top of an optional --config file, as ``tokendrift train`` does.
"""

from __future__ import annotations

import os

from ..core import config as configlib
from ..core.distributed import process_group
from ..core.utils import TokenDriftError
from .train import add_config_args, load_job_config, train


def pretrain_backbone(diffusion: str, raw: dict, out: str, discard_stale: bool = False) -> dict:
    """Train an MDLM or DUO DiT from random initialization with its own denoising loss."""
    raw = dict(raw, variant="continuation", init=None, diffusion=diffusion)
    return train(raw, out, discard_stale=discard_stale)


def pretrain_evaluator(raw: dict, out: str) -> dict:
    """Train the causal-LM evaluator on the same source (tokendrift.jobs.evaluator)."""
    from ..core.data import make_source
    from .evaluator import train_evaluator

    cfg = configlib.validate("evaluator", raw)
    source = make_source(cfg.pop("source"))
    return train_evaluator(source, out, progress=True, **cfg)


def run(args) -> int:
    """A backbone job joins the process group of its ranks as ``tokendrift train`` does (data
    parallel training, rank 0 the only writer); the evaluator trains on one process."""
    raw = load_job_config(args, "evaluator" if args.what == "evaluator" else "train")
    if args.what == "evaluator":
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise TokenDriftError(
                f"pretrain evaluator: trains on one process, but WORLD_SIZE={os.environ['WORLD_SIZE']} "
                f"(give its rule one task)"
            )
        pretrain_evaluator(raw, args.out)
    else:
        with process_group(raw):
            pretrain_backbone(args.what, raw, args.out, discard_stale=args.discard_stale)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain the embedded default's MDLM, DUO or evaluator from scratch",
        description=__doc__.splitlines()[0],
    )
    what = p.add_subparsers(dest="what", required=True, metavar="{mdlm,duo,evaluator}")
    for name, schema, about in (
        ("mdlm", "train", "MDLM from scratch (a train job with init: null)"),
        ("duo", "train", "DUO from scratch (a train job with init: null)"),
        ("evaluator", "evaluator", "the causal-LM Gen.-PPL evaluator"),
    ):
        q = what.add_parser(name, help=about)
        add_config_args(q, schema)
        q.set_defaults(func=run)
