"""Reading the result files of a grid (score and NELBO files, the entropy rate) and the statistics
the tables and figures show: mean and sample SD over seeds, and the start checkpoint's
temperature-sweep frontier read at a given entropy.

pandas is imported where a frame is built: the grid reads the figure registry (report.figures,
which reads through this module) when Snakemake starts, and that should not pay for pandas."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.records import check
from ..core.utils import TokenDriftError

if TYPE_CHECKING:
    import pandas as pd

    from ..grid.layout import Layout

METRICS = ("gen_ppl", "entropy", "oracle_gen_ppl", "mauve", "ngram_kl2", "ngram_kl2_floor", "ngram_kl2_floor_sd")
DASH = "—"  # a missing number


def is_nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


# --------------------------------------------------------------------------- reading


def read_scores(g: Layout, units) -> pd.DataFrame:
    """One line per existing score file: unit, temperature, NFE and the metrics (None where a
    score file predates one)."""
    import pandas as pd

    rows = []
    for u in units:
        for t, n in g.cells(u):
            f = g.score_file(u, t, n)
            if f.exists():
                r = check(f, "its own record")  # cut short or altered: named, never read as numbers
                try:
                    rows.append(
                        {
                            "backbone": u.backbone,
                            "model": u.model,
                            "seed": u.seed,
                            "step": u.step,
                            "temperature": t,
                            "nfe": n,
                            **{m: _num(r.get(m)) for m in METRICS},
                        }
                    )
                except (TypeError, ValueError):
                    raise TokenDriftError(f"score file {f}: non-numeric metric") from None
    return pd.DataFrame(rows, columns=["backbone", "model", "seed", "step", "temperature", "nfe", *METRICS])


def read_nelbo(g: Layout, units) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for u in units:
        f = g.nelbo_file(u)
        if f.exists():
            rows.append(
                {
                    "backbone": u.backbone,
                    "model": u.model,
                    "seed": u.seed,
                    "step": u.step,
                    "nelbo": _num(check(f, "its own record").get("nelbo")),
                }
            )
    return pd.DataFrame(rows, columns=["backbone", "model", "seed", "step", "nelbo"])


def _num(v):
    return None if v is None else float(v)


def entropy_floor(g: Layout) -> float | None:
    """exp(entropy rate) of a synthetic source (the entropy_rate job's file): the oracle Gen.-PPL floor;
    None for a text source, or while that job has not run (`tokendrift aggregate` of partial results)."""
    if not g.entropy_rate_file or not Path(g.entropy_rate_file[0]).exists():
        return None
    return math.exp(check(g.entropy_rate_file[0], "its own record")["entropy_rate"])


# --------------------------------------------------------------------------- statistics


@dataclass
class Stat:
    mean: float | None
    sd: float | None
    n: int

    @classmethod
    def of(cls, values) -> "Stat":
        v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
        if not v:
            return cls(None, None, 0)
        return cls(statistics.mean(v), statistics.stdev(v) if len(v) > 1 else None, len(v))

    def text(self, want: int, digits: int = 2) -> str:
        if self.mean is None:
            return DASH
        s = f"{self.mean:.{digits}f}" + (f" ± {self.sd:.{digits}f}" if self.sd is not None else "")
        return s + (f" (n={self.n})" if self.n < want else "")


def cell(df: pd.DataFrame, metric: str, **where) -> Stat:
    sel = df
    for k, v in where.items():
        sel = sel[sel[k] == v]
    return Stat.of(sel[metric].tolist())


def frontier(scores: pd.DataFrame, bb: str, nfe: int, metric: str) -> list[tuple[float, float, float]]:
    """The start checkpoint's sweep: (mean entropy, mean metric, temperature), sorted by entropy."""
    sel = scores[(scores.backbone == bb) & (scores.model == "start") & (scores.nfe == nfe)].dropna(subset=[metric])
    pts = [(float(d.entropy.mean()), float(d[metric].mean()), float(t)) for t, d in sel.groupby("temperature")]
    return sorted(pts)


def at_entropy(points, entropy: float | None) -> tuple[float | None, float | None, str]:
    """Frontier value and temperature at ``entropy``: log-linear between the two neighbouring
    sweep points; "<range"/">range" outside the sweep (never extrapolated)."""
    if entropy is None or len(points) < 2:
        return None, None, "no sweep" if entropy is not None else ""
    if entropy < points[0][0]:
        return None, None, "<range"
    if entropy > points[-1][0]:
        return None, None, ">range"
    for (e0, p0, t0), (e1, p1, t1) in zip(points, points[1:]):
        if e0 <= entropy <= e1:
            w = 0.0 if e1 == e0 else (entropy - e0) / (e1 - e0)
            return math.exp((1 - w) * math.log(p0) + w * math.log(p1)), t0 + w * (t1 - t0), ""
    return None, None, ">range"
