"""The grid of a workflow config (docs/grid.md), in three parts: the sheet (``sheet``: what is
evaluated: runs, tables, evaluation units, and the checks of a config), the layout (``layout``:
where each file lives, and the logs) and the rule adapter (``rules``: the inputs, argument lists
and environment of each Snakemake rule, used by workflow/rules/*.smk alone). Reporting reads
through the layout, never the rule adapter. This module adds the `tokendrift grid` command."""

from __future__ import annotations

import json


def describe(args) -> int:
    from .layout import grid_from_args

    grid = grid_from_args(args)
    print(json.dumps(grid.summary(), indent=2))
    if getattr(args, "cost", None):  # the GPU-hours of every stage, from a bench/gpu.py measurement
        from ..report.cost import describe_cost

        print(describe_cost(grid, args.config or "--config-json", args.cost, args.profile_yaml))
    return 0


def register(sub) -> None:
    from .layout import add_grid_args

    p = sub.add_parser("grid", help="validate a workflow config and count the unique jobs of its grid")
    add_grid_args(p)
    p.add_argument(
        "--cost",
        metavar="RESULTS.json",
        help="also print the GPU-hours of every stage and the total, from `python bench/gpu.py`'s "
        "bench/results/gpu.json (tokendrift/report/cost.py)",
    )
    p.add_argument(
        "--profile-yaml",
        default="profiles/slurm/profile.yaml",
        help="with --cost: the profile whose set-resources give the GPUs per job",
    )
    p.set_defaults(func=describe)
