"""``tokendrift aggregate``: the tables (the paper's Tables 1-6 and a config's own) and the figures,
built from whatever score files exist (partial results render, missing cells marked).

Every cell is the mean ± sample SD over the seeds whose score file exists (report.results);
each table file holds the paper's table with our rows, the honesty columns and the baseline gate
(report.tables, report.gate), in Markdown, LaTeX, CSV and HTML (report.render). The figures and
what each writes are registered in report.figures.

    tokendrift aggregate CONFIG [--table NAME ...] [--figure figure2|quality_diversity|ratio_steps ...]
"""

from __future__ import annotations

from ..core.utils import TokenDriftError
from ..grid.layout import add_grid_args, grid_from_args
from .figures import FIGURES
from .tables import write_table


def run(args) -> int:
    g = grid_from_args(args)
    tables = args.table or ([] if args.figure else list(g.tables))
    figures = args.figure or ([] if args.table else list(FIGURES))
    for t in tables:
        if t not in g.tables:
            raise TokenDriftError(f"--table {t}: not one of this config's tables {list(g.tables)}")
        write_table(g, t)
    for f in figures:
        FIGURES[f].draw(g)
    return 0


def register(sub) -> None:
    p = sub.add_parser("aggregate", help="build the tables and figures from the score files (partial results too)")
    add_grid_args(p)
    p.add_argument(
        "--table",
        action="append",
        help="a table of the config: table1 ... table6 or an own table's name (repeatable; default all)",
    )
    p.add_argument("--figure", action="append", choices=sorted(FIGURES), help="figure to build (repeatable)")
    p.set_defaults(func=run)
