"""Tables 1-6, Figure 2 and the quality-diversity figure, built from the score files.

Every cell is the mean ± sample SD over the seeds whose score file exists (``n`` is shown
when fewer than the configured seeds finished; a cell with none is "—", so partial results
render). Beside ours: the paper's values (tokendrift/data/tables.yaml), the distillation rows
it reported, each trained row's held-out NELBO, and the control the paper lacks (DESIGN.md
section 9): the starting checkpoint sampled over a temperature sweep gives a frontier of
Gen.-PPL against entropy (log Gen.-PPL linear in entropy between sweep points); the row
"start at matched entropy" is that frontier at the entropy of the table's method, and the
column "ratio" is a row's Gen.-PPL over the frontier at the row's own entropy (below 1 beats
plain sharpening). Outside the sweep's entropy range nothing is extrapolated.

    tokendrift aggregate CONFIG [--table table1 ...] [--figure figure2|quality_diversity ...]
"""

from __future__ import annotations

import io
import math
import statistics
from dataclasses import dataclass

import pandas as pd

from .grid import Grid, add_grid_args, grid_from_args
from .utils import TokenDriftError, atomic_write_bytes, atomic_write_json, atomic_write_text, config_digest, read_json

METRICS = ("gen_ppl", "entropy", "oracle_gen_ppl")
DASH = "—"


# --------------------------------------------------------------------------- reading

def read_scores(g: Grid, units) -> pd.DataFrame:
    """One line per existing score file: unit, temperature, NFE and the three metrics."""
    rows = []
    for u in units:
        for t, n in g.cells(u):
            f = g.score_file(u, t, n)
            if f.exists():
                r = read_json(f, "score file")
                try:
                    rows.append({"backbone": u.backbone, "model": u.model, "seed": u.seed, "step": u.step,
                                 "temperature": t, "nfe": n, **{m: _num(r.get(m)) for m in METRICS}})
                except (TypeError, ValueError):
                    raise TokenDriftError(f"score file {f}: non-numeric metric") from None
    return pd.DataFrame(rows, columns=["backbone", "model", "seed", "step", "temperature", "nfe", *METRICS])


def read_nelbo(g: Grid, units) -> pd.DataFrame:
    rows = []
    for u in units:
        f = g.nelbo_file(u)
        if f.exists():
            rows.append({"backbone": u.backbone, "model": u.model, "seed": u.seed, "step": u.step,
                         "nelbo": _num(read_json(f, "NELBO file").get("nelbo"))})
    return pd.DataFrame(rows, columns=["backbone", "model", "seed", "step", "nelbo"])


def _num(v):
    return None if v is None else float(v)


def entropy_floor(g: Grid) -> float | None:
    """exp(entropy rate) of a synthetic source: the oracle Gen.-PPL floor (cached per source)."""
    if g.config["source"].get("kind") != "synthetic":
        return None
    cache = g.root / "cache" / f"entropy_rate_{config_digest(g.config['source'])}.json"
    if cache.exists():
        return math.exp(read_json(cache)["entropy_rate"])
    from .data import make_source

    h = make_source(g.config["source"]).entropy_rate
    atomic_write_json(cache, {"entropy_rate": h, "source": g.config["source"]})
    return math.exp(h)


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


# --------------------------------------------------------------------------- tables

def table_frame(g: Grid, table: str) -> pd.DataFrame:
    """The tidy table: one line per row x NFE with every number (the CSV)."""
    t = g.tables[table]
    bb = t["backbone"]
    units = g.table_units(table)
    scores, nelbo = read_scores(g, units), read_nelbo(g, units)
    has_oracle = scores["oracle_gen_ppl"].notna().any()
    metrics = ["gen_ppl", "oracle_gen_ppl"] if has_oracle else ["gen_ppl"]
    fronts = {(n, m): frontier(scores, bb, n, m) for n in g.nfes for m in metrics}
    lines = []
    method_entropy = {}
    for row in t["rows"]:
        model = row.get("model")
        label = row.get("label") or f"{row['reported']} (reported, paper)"
        step = g.row_step(table, model) if model else None
        nl = cell(nelbo, "nelbo", model=model, step=step) if model else Stat(None, None, 0)
        for n in g.nfes:
            paper = (row.get("paper") or {}).get(n) or (row.get("paper") or {}).get(str(n)) or [None] * 4
            line = {"table": table, "row": label, "model": model or "", "kind": "ours" if model else "reported",
                    "nfe": n, "step": step, "n_seeds": 0,
                    "paper_gen_ppl": paper[0], "paper_gen_ppl_sd": paper[1], "paper_entropy": paper[2],
                    "paper_entropy_sd": paper[3], "nelbo": nl.mean, "nelbo_sd": nl.sd}
            if model:
                where = dict(model=model, step=step, nfe=n, temperature=1.0)
                ent = cell(scores, "entropy", **where)
                line.update(entropy=ent.mean, entropy_sd=ent.sd)
                for m in metrics:
                    st = cell(scores, m, **where)
                    line.update({m: st.mean, f"{m}_sd": st.sd})
                    line["n_seeds"] = max(line["n_seeds"], st.n)
                    if model != "start":
                        ref, _, flag = at_entropy(fronts[(n, m)], ent.mean)
                        line[f"{m}_ratio"] = st.mean / ref if (ref and st.mean is not None) else None
                        line[f"{m}_ratio_note"] = flag
                if model == t["method"]:
                    method_entropy[n] = ent.mean
            lines.append(line)
    for n in g.nfes:  # the control row
        line = {"table": table, "row": "start at matched entropy", "model": "start", "kind": "matched", "nfe": n,
                "step": 0, "entropy": method_entropy.get(n)}
        for m in metrics:
            ref, temp, flag = at_entropy(fronts[(n, m)], method_entropy.get(n))
            line.update({m: ref, f"{m}_matched_temperature": temp, f"{m}_ratio_note": flag})
        lines.append(line)
    return pd.DataFrame(lines)


def _fmt(v, sd=None, n=None, want=None, digits=2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return DASH
    s = f"{v:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None and not _nan(sd) else "")
    return s + (f" (n={int(n)})" if n is not None and want is not None and 0 < n < want else "")


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _g(line, key):
    v = line.get(key)
    return None if _nan(v) else v


def render(g: Grid, table: str, df: pd.DataFrame, floor: float | None) -> tuple[str, str]:
    """Markdown and LaTeX of one table (best Gen.-PPL per NFE among our rows in bold)."""
    t = g.tables[table]
    has_oracle = "oracle_gen_ppl" in df.columns
    want = len(g.seeds)
    cols = ["Gen.-PPL", "Entropy"] + (["Oracle"] if has_oracle else []) + ["Ratio", "Paper Gen.-PPL / Ent."]
    best = {}
    for n in g.nfes:
        ours = df[(df.nfe == n) & (df.kind == "ours")].dropna(subset=["gen_ppl"]) if "gen_ppl" in df else df[:0]
        best[n] = float(ours.gen_ppl.min()) if len(ours) else None
    header = ["Method"] + [f"NFE {n} {c}" for n in g.nfes for c in cols] + ["NELBO"]
    md_rows, tex_rows = [], []
    for label, lines in df.groupby("row", sort=False):
        by_nfe = {int(r["nfe"]): r for r in lines.to_dict("records")}
        cells_md, cells_tex = [label], [_tex(label)]
        for n in g.nfes:
            r = by_nfe[n]
            ppl = _fmt(_g(r, "gen_ppl"), _g(r, "gen_ppl_sd"), r.get("n_seeds"), want)
            bold = r["kind"] == "ours" and best[n] is not None and _g(r, "gen_ppl") == best[n]
            vals = [f"**{ppl}**" if bold else ppl, _fmt(_g(r, "entropy"), _g(r, "entropy_sd"))]
            if has_oracle:
                vals.append(_fmt(_g(r, "oracle_gen_ppl"), _g(r, "oracle_gen_ppl_sd")))
            if r["kind"] == "matched":
                temp = _g(r, "gen_ppl_matched_temperature")
                vals.append(f"T={temp:.2f}" if temp is not None else (r.get("gen_ppl_ratio_note") or DASH))
            else:
                ratio = _fmt(_g(r, "gen_ppl_ratio"), digits=2) if _g(r, "gen_ppl_ratio") is not None else \
                    (r.get("gen_ppl_ratio_note") or DASH) if r["kind"] == "ours" and r["model"] != "start" else ""
                if has_oracle and _g(r, "oracle_gen_ppl_ratio") is not None:
                    ratio += f" (oracle {_g(r, 'oracle_gen_ppl_ratio'):.2f})"
                vals.append(ratio)
            if r["kind"] == "reported":  # the paper's number only: our cells are not missing, they do not exist
                vals = [""] * len(vals)
            pp = _g(r, "paper_gen_ppl")
            vals.append(f"{pp:.2f} ± {_g(r, 'paper_gen_ppl_sd') or 0:.2f} / {_g(r, 'paper_entropy'):.2f}"
                        if pp is not None else "")
            cells_md += vals
            cells_tex += [rf"\textbf{{{_tex(ppl)}}}" if bold and i == 0 else _tex(v) for i, v in enumerate(vals)]
        nl = by_nfe[g.nfes[0]]
        nelbo = _fmt(_g(nl, "nelbo"), _g(nl, "nelbo_sd"), digits=3) if nl["kind"] == "ours" else ""
        cells_md.append(nelbo)
        cells_tex.append(_tex(nelbo))
        md_rows.append("| " + " | ".join(cells_md) + " |")
        tex_rows.append(" & ".join(cells_tex) + r" \\")
    step = g.table_step(table)
    caption = (f"**{table}: {t['title']}** (step {step}; mean ± SD over seeds {g.seeds}; n shown when fewer "
               f"finished; — = missing). Gen.-PPL under `{g.evaluator()}` at temperature 1"
               + ("; Oracle = Gen.-PPL under the true distribution" + (f" (floor {floor:.2f})" if floor else "")
                  if has_oracle else "")
               + ". Ratio = Gen.-PPL / the start checkpoint's temperature-sweep frontier at the row's entropy "
                 "(< 1 beats sharpening; <range/>range = outside the sweep, not extrapolated). "
                 "NELBO = held-out NELBO per token. Paper = the paper's Gen.-PPL ± SD / entropy.")
    md = caption + "\n\n| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n" + "\n".join(md_rows) + "\n"
    tex = ("\\begin{table}[t]\n\\centering\\small\n\\caption{" + _tex(caption.replace("**", "")) + "}\n"
           "\\begin{tabular}{l" + "r" * (len(header) - 1) + "}\n\\toprule\n"
           + " & ".join(_tex(h) for h in header) + r" \\" + "\n\\midrule\n" + "\n".join(tex_rows)
           + "\n\\bottomrule\n\\end{tabular}\n\\end{table}\n")
    return md, tex


def _tex(s) -> str:
    s = str(s).replace("**", "")
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("—", "--"), ("|", r"$|$"), ("<", r"$<$"), (">", r"$>$"), ("*", r"$^*$")):
        s = s.replace(a, b)
    return s


def write_table(g: Grid, table: str) -> None:
    df = table_frame(g, table)
    md, tex = render(g, table, df, entropy_floor(g))
    md_path, tex_path, csv_path = g.table_outputs(table)
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    atomic_write_text(csv_path, buf.getvalue())
    atomic_write_text(tex_path, tex)
    atomic_write_text(md_path, md)


# --------------------------------------------------------------------------- figures

def _save(fig, name: str, g: Grid) -> None:
    for path in g.figure_outputs(name):
        buf = io.BytesIO()
        fig.savefig(buf, format=path.rsplit(".", 1)[1], bbox_inches="tight", dpi=150)
        atomic_write_bytes(path, buf.getvalue())


def _plot_metrics(scores: pd.DataFrame) -> list[tuple[str, str]]:
    out = [("gen_ppl", "Gen.-PPL (evaluator)")]
    if scores["oracle_gen_ppl"].notna().any():
        out.append(("oracle_gen_ppl", "oracle Gen.-PPL"))
    return out


def figure2(g: Grid) -> None:
    """Gen.-PPL against training step: rows backbone (x metric), one column per NFE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = read_scores(g, g.figure2_units())
    scores = scores[scores.temperature == 1.0]
    metrics = _plot_metrics(scores)
    rows = [(bb, m) for bb in g.backbones for m in metrics]
    fig, axes = plt.subplots(len(rows), len(g.nfes), figsize=(4 * len(g.nfes), 3 * len(rows)), squeeze=False)
    floor = entropy_floor(g)
    for i, (bb, (metric, name)) in enumerate(rows):
        for j, n in enumerate(g.nfes):
            ax = axes[i][j]
            sel = scores[(scores.backbone == bb) & (scores.nfe == n)]
            start = sel[sel.model == "start"][metric].dropna()
            if len(start):
                ax.axhline(start.mean(), color="gray", ls="--", label="start checkpoint")
            for model in g.figure2.get(bb, []):
                if model == "start":
                    continue
                d = pd.concat([sel[sel.model == "start"], sel[sel.model == model]])
                agg = d.groupby("step")[metric].agg(["mean", "std", "count"]).reset_index()
                if len(agg) == 0:
                    continue
                ax.plot(agg["step"], agg["mean"], marker="o", label=model)
                ax.fill_between(agg["step"], agg["mean"] - agg["std"].fillna(0), agg["mean"] + agg["std"].fillna(0),
                                alpha=0.2)
            if metric == "oracle_gen_ppl" and floor:
                ax.axhline(floor, color="k", lw=0.8, ls=":", label="entropy-rate floor")
            ax.set_yscale("log")
            ax.set_title(f"{bb.upper()}, NFE {n}")
            ax.set_xlabel("training step")
            ax.set_ylabel(name)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.suptitle(f"Figure 2: Gen.-PPL during continual training ({g.config['name']}; mean ± SD over seeds)")
    fig.tight_layout()
    _save(fig, "figure2", g)
    plt.close(fig)


def quality_diversity(g: Grid) -> None:
    """Gen.-PPL against entropy per NFE: the start checkpoint's temperature sweep as a curve,
    every model of the tables (at its table step) as a point with SD bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = sorted({u for t in g.tables for u in g.table_units(t)})
    scores = read_scores(g, units)
    metrics = _plot_metrics(scores)
    rows = [(bb, m) for bb in g.backbones if any(g.tables[t]["backbone"] == bb for t in g.tables) for m in metrics]
    fig, axes = plt.subplots(max(1, len(rows)), len(g.nfes), figsize=(4.5 * len(g.nfes), 3.5 * max(1, len(rows))),
                             squeeze=False)
    points = {(g.tables[t]["backbone"], r["model"], g.row_step(t, r["model"]))
              for t in g.tables for r in g.tables[t]["rows"] if r.get("model") and r["model"] != "start"}
    for i, (bb, (metric, name)) in enumerate(rows):
        for j, n in enumerate(g.nfes):
            ax = axes[i][j]
            front = frontier(scores, bb, n, metric)
            if front:
                ax.plot([p[0] for p in front], [p[1] for p in front], "k-o", ms=3, label="start, temperature sweep")
                for e, p, t in front:
                    ax.annotate(f"T={t:g}", (e, p), fontsize=6, xytext=(2, 2), textcoords="offset points")
            for bb2, model, step in sorted(points):
                if bb2 != bb:
                    continue
                d = scores[(scores.backbone == bb) & (scores.model == model) & (scores.step == step) & (scores.nfe == n)]
                d = d.dropna(subset=[metric])
                if not len(d):
                    continue
                ax.errorbar(d.entropy.mean(), d[metric].mean(), xerr=d.entropy.std() if len(d) > 1 else None,
                            yerr=d[metric].std() if len(d) > 1 else None, fmt="o", ms=4, capsize=2,
                            label=f"{model} @{step}")
            ax.set_yscale("log")
            ax.set_xlabel("sample entropy (nats)")
            ax.set_ylabel(name)
            ax.set_title(f"{bb.upper()}, NFE {n}")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=5, ncol=2)
    fig.suptitle("Quality vs diversity: below the black curve beats sharpening the start checkpoint")
    fig.tight_layout()
    _save(fig, "quality_diversity", g)
    plt.close(fig)


FIGURES = {"figure2": figure2, "quality_diversity": quality_diversity}


def run(args) -> int:
    g = grid_from_args(args)
    tables = args.table or ([] if args.figure else list(g.tables))
    figures = args.figure or ([] if args.table else list(FIGURES))
    for t in tables:
        if t not in g.tables:
            raise TokenDriftError(f"--table {t}: not one of this config's tables {list(g.tables)}")
        write_table(g, t)
    for f in figures:
        FIGURES[f](g)
    return 0


def register(sub) -> None:
    p = sub.add_parser("aggregate", help="build Tables 1-6 and the figures from the score files (partial results too)")
    add_grid_args(p)
    p.add_argument("--table", action="append", help="table1 ... table6 (repeatable; default all)")
    p.add_argument("--figure", action="append", choices=sorted(FIGURES), help="figure to build (repeatable)")
    p.set_defaults(func=run)

