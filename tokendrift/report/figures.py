"""The figures: one registry (``FIGURES``) of every figure a config builds, with its title, the files
it writes, its caption and the function that draws it. The grid reads it for the figures'
outputs and the rules for their jobs and report entries; ``tokendrift aggregate --figure`` draws.

matplotlib and pandas are imported by the drawing functions: reading the registry stays cheap."""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.utils import atomic_write_bytes, atomic_write_text, figure_bytes
from .render import html_inline, html_page
from .results import Stat, at_entropy, cell, entropy_floor, frontier, is_nan, read_nelbo, read_scores

if TYPE_CHECKING:
    import pandas as pd

    from ..grid.layout import Layout


@dataclass(frozen=True)
class Figure:
    title: str  # the report's label
    files: tuple[str, ...]  # the extensions of the files it writes under figures/, the image first
    caption: str  # under the image in the report
    draw: Callable[[Layout], None]  # writes every file from the grid's result files


def _save(fig, name: str, g: Layout) -> None:
    """PNG and PDF, and an HTML page holding the PNG for the report's front page."""
    for ext in ("png", "pdf"):
        path, data = g.figure_file(name, ext), figure_bytes(fig, ext)
        atomic_write_bytes(path, data)
        if ext == "png":
            img = base64.b64encode(data).decode()
            body = (
                f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{img}">'
                f"<figcaption><p>{html_inline(FIGURES[name].caption)}</p></figcaption></figure>"
            )
            atomic_write_text(g.report_html(name), html_page(f"td-{name}", name, body))


def _plot_metrics(scores: pd.DataFrame, distributional: bool = False) -> list[tuple[str, str]]:
    """The figures' metrics: Gen.-PPL (and the oracle's); with ``distributional``, MAUVE (and the
    exact bigram divergence) too, wherever a score file has them."""
    out = [("gen_ppl", "Gen.-PPL (evaluator)")]
    if scores["oracle_gen_ppl"].notna().any():
        out.append(("oracle_gen_ppl", "oracle Gen.-PPL"))
    if distributional and scores["mauve"].notna().any():
        out.append(("mauve", "MAUVE ↑ (vs reference)"))
    if distributional and scores["ngram_kl2"].notna().any():
        out.append(("ngram_kl2", "bigram KL₂ ↓ (exact)"))
    return out


LOG_SCALE = {"gen_ppl", "oracle_gen_ppl"}  # MAUVE and KL₂ are drawn on a linear axis


def _floor_line(ax, scores: pd.DataFrame, metric: str) -> None:
    """KL₂'s sampling-noise floor (source samples of the same count) as a dotted line."""
    if metric == "ngram_kl2" and scores["ngram_kl2_floor"].notna().any():
        ax.axhline(scores["ngram_kl2_floor"].mean(), color="k", lw=0.8, ls=":", label="KL₂ of source samples")


def _share_ylim(axes) -> None:
    """One y-range for panels that show the same metric (each panel's autoscaled range, united)."""
    lims = [ax.get_ylim() for ax in axes if ax.has_data()]
    if lims:
        lo, hi = min(a for a, _ in lims), max(b for _, b in lims)
        for ax in axes:
            ax.set_ylim(lo, hi)


def _legend_outside(fig, axes, **kw) -> None:
    """One legend for the whole figure, right of the panels (labels deduplicated across panels)."""
    handles = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    if handles:
        fig.legend(
            list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, **kw
        )


def figure2(g: Layout) -> None:
    """Gen.-PPL against training step: rows backbone (x metric), one column per NFE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    scores = read_scores(g, g.figure2_units())
    scores = scores[scores.temperature == 1.0]
    metrics = _plot_metrics(scores, distributional=True)
    rows = [(bb, m) for bb in g.backbones for m in metrics]
    fig, axes = plt.subplots(len(rows), len(g.nfes), figsize=(4 * len(g.nfes), 3 * len(rows)), squeeze=False)
    floor = entropy_floor(g)
    models = sorted({m for bb in g.backbones for m in g.figure2.get(bb, []) if m != "start"})
    colour = {m: f"C{i}" for i, m in enumerate(models)}
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
                ax.plot(agg["step"], agg["mean"], marker="o", color=colour[model], label=model)
                ax.fill_between(
                    agg["step"],
                    agg["mean"] - agg["std"].fillna(0),
                    agg["mean"] + agg["std"].fillna(0),
                    color=colour[model],
                    alpha=0.2,
                )
            if metric == "oracle_gen_ppl" and floor:
                ax.axhline(floor, color="k", lw=0.8, ls=":", label="entropy-rate floor")
            _floor_line(ax, sel, metric)
            ax.set_yscale("log" if metric in LOG_SCALE else "linear")
            ax.set_title(f"{bb.upper()}, NFE {n}")
            ax.set_xlabel("training step")
            ax.set_ylabel(name)
    for metric, _ in metrics:
        _share_ylim([axes[i][j] for i, (_, (m, _)) in enumerate(rows) if m == metric for j in range(len(g.nfes))])
    fig.suptitle(f"Figure 2: Gen.-PPL during continual training ({g.config['name']}; mean ± SD over seeds)")
    fig.tight_layout()
    _legend_outside(fig, axes.flat, fontsize=8)
    _save(fig, "figure2", g)
    plt.close(fig)


# Every model of the quality-diversity figure gets its own colour and marker: tab20's ten strong
# colours first, then its ten light ones; the marker steps on with every colour, and again after
# each round of twenty, so no two models share both up to 200 models.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
COLOURS = [*range(0, 20, 2), *range(1, 20, 2)]


def model_styles(keys) -> dict:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return {k: (cmap(COLOURS[i % 20]), MARKERS[(i + i // 20) % len(MARKERS)]) for i, k in enumerate(keys)}


def quality_diversity(g: Layout) -> None:
    """Gen.-PPL against entropy per NFE: the start checkpoint's temperature sweep as a curve,
    every model of the tables (at its table step) as a point with SD bars, each in its own
    colour and marker, with one legend right of the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = sorted({u for t in g.tables for u in g.table_units(t)})
    scores = read_scores(g, units)
    metrics = _plot_metrics(scores, distributional=True)
    rows = [(bb, m) for bb in g.backbones if any(g.tables[t]["backbone"] == bb for t in g.tables) for m in metrics]
    fig, axes = plt.subplots(
        max(1, len(rows)), len(g.nfes), figsize=(4.5 * len(g.nfes), 3.5 * max(1, len(rows))), squeeze=False
    )
    points = sorted(
        {
            (g.tables[t]["backbone"], r["model"], g.row_step(t, r["model"]))
            for t in g.tables
            for r in g.tables[t]["rows"]
            if r.get("model") and r["model"] != "start"
        }
    )
    style = model_styles(points)
    for i, (bb, (metric, name)) in enumerate(rows):
        for j, n in enumerate(g.nfes):
            ax = axes[i][j]
            front = frontier(scores, bb, n, metric)
            if front:
                ax.plot([p[0] for p in front], [p[1] for p in front], "k-", lw=1, label="start, temperature sweep")
                ax.plot([p[0] for p in front], [p[1] for p in front], "ko", ms=3)
                for e, p, t in front:
                    ax.annotate(f"T={t:g}", (e, p), fontsize=6, xytext=(2, 2), textcoords="offset points")
            for key in points:
                bb2, model, step = key
                if bb2 != bb:
                    continue
                d = scores[
                    (scores.backbone == bb) & (scores.model == model) & (scores.step == step) & (scores.nfe == n)
                ]
                d = d.dropna(subset=[metric])
                if not len(d):
                    continue
                c, m = style[key]
                ax.errorbar(
                    d.entropy.mean(),
                    d[metric].mean(),
                    xerr=d.entropy.std() if len(d) > 1 else None,
                    yerr=d[metric].std() if len(d) > 1 else None,
                    fmt=m,
                    color=c,
                    ms=6,
                    capsize=2,
                    markeredgecolor="k",
                    markeredgewidth=0.4,
                    label=f"{bb.upper()} {model} @{step}",
                )
            _floor_line(ax, scores[(scores.backbone == bb) & (scores.nfe == n)], metric)
            ax.set_yscale("log" if metric in LOG_SCALE else "linear")
            ax.set_xlabel("sample entropy (nats)")
            ax.set_ylabel(name)
            ax.set_title(f"{bb.upper()}, NFE {n}")
    fig.suptitle(
        "Quality vs diversity: below the black curve (above it for MAUVE) beats sharpening the start checkpoint"
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))  # room for the title above the top row
    _legend_outside(fig, axes.flat, fontsize=7, title="model @ step")
    _save(fig, "quality_diversity", g)
    plt.close(fig)


def ratio_frame(g: Layout) -> pd.DataFrame:
    """Every evaluated checkpoint of every trained model, per NFE (the ratio figure's CSV): the
    matched-entropy ratio as the tables define it (mean Gen.-PPL over the start's frontier at the
    mean entropy) and the mean ± SD of the per-seed ratios (each seed's Gen.-PPL over the frontier
    at that seed's entropy), under the evaluator and the oracle; entropy; held-out NELBO. The
    start checkpoint is the line at step 0 (its ratio is 1 by definition)."""
    import pandas as pd

    scores, nelbo = read_scores(g, g.units), read_nelbo(g, g.units)
    metrics = [m for m, _ in _plot_metrics(scores)]
    lines = []
    for bb in g.backbones:
        fronts = {(n, m): frontier(scores, bb, n, m) for n in g.nfes for m in metrics}
        sel = scores[(scores.backbone == bb) & (scores.temperature == 1.0)]
        for (model, step, n), d in sel.groupby(["model", "step", "nfe"], sort=True):
            ent = Stat.of(d.entropy.tolist())
            nl = cell(nelbo, "nelbo", backbone=bb, model=model, step=step)
            line = {
                "backbone": bb,
                "model": model,
                "step": int(step),
                "nfe": int(n),
                "n_seeds": len(d),
                "entropy": ent.mean,
                "entropy_sd": ent.sd,
                "nelbo": nl.mean,
                "nelbo_sd": nl.sd,
            }
            for m in metrics:
                st = Stat.of(d[m].tolist())
                line.update({m: st.mean, f"{m}_sd": st.sd})
                if model == "start":
                    continue
                ref, _, note = at_entropy(fronts[(n, m)], ent.mean)
                per_seed = [
                    v / r for v, e in zip(d[m], d.entropy) if not is_nan(v) and (r := at_entropy(fronts[(n, m)], e)[0])
                ]
                seeds = Stat.of(per_seed)
                line.update(
                    {
                        f"{m}_ratio": st.mean / ref if ref and st.mean is not None else None,
                        f"{m}_ratio_note": note,
                        f"{m}_ratio_seeds_mean": seeds.mean,
                        f"{m}_ratio_seeds_sd": seeds.sd,
                        f"{m}_ratio_seeds_n": seeds.n,
                    }
                )
            lines.append(line)
    return pd.DataFrame(lines)


def ratio_steps(g: Layout) -> None:
    """The matched-entropy ratio (evaluator, then oracle), the entropy and the held-out NELBO of
    every trained model against its training step, one column per NFE (NELBO: one panel per
    backbone); the start checkpoint is the dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = ratio_frame(g)
    start_label = "start checkpoint (ratio 1: the sharpening frontier)"
    metrics = [m for m in ("gen_ppl", "oracle_gen_ppl") if f"{m}_ratio" in df.columns]
    names = {"gen_ppl": "ratio (evaluator)", "oracle_gen_ppl": "ratio (oracle)", "entropy": "entropy (nats)"}
    panels = [*metrics, "entropy"]
    mosaic = [[f"{bb}|{k}|{n}" for n in g.nfes] for bb in g.backbones for k in panels]
    mosaic += [[f"{bb}|nelbo"] * len(g.nfes) for bb in g.backbones]
    fig, axes = plt.subplot_mosaic(mosaic, figsize=(4 * len(g.nfes), 2.8 * len(mosaic)))
    trained = df[df.model != "start"] if len(df) else df
    style = model_styles(sorted({(r.backbone, r.model) for r in trained.itertuples()}))
    for bb in g.backbones:
        start = df[(df.backbone == bb) & (df.model == "start")] if len(df) else df
        for (b, model), (colour, marker) in style.items():
            if b != bb:
                continue
            d = trained[(trained.backbone == bb) & (trained.model == model)].sort_values("step")
            kw = dict(color=colour, marker=marker, ms=5, capsize=2, label=model)
            for n in g.nfes:
                dn = d[d.nfe == n]
                for k in panels:
                    y, err = (f"{k}_ratio", f"{k}_ratio_seeds_sd") if k != "entropy" else ("entropy", "entropy_sd")
                    axes[f"{bb}|{k}|{n}"].errorbar(dn.step, dn[y], yerr=dn[err], **kw)
            d1 = d[d.nfe == g.nfes[0]]
            axes[f"{bb}|nelbo"].errorbar(d1.step, d1.nelbo, yerr=d1.nelbo_sd, **kw)
        for n in g.nfes:
            for k in metrics:
                ax = axes[f"{bb}|{k}|{n}"]
                ax.axhline(1.0, color="gray", ls="--", label=start_label)
            sn = start[start.nfe == n] if len(start) else start
            if len(sn):
                axes[f"{bb}|entropy|{n}"].axhline(sn.entropy.iloc[0], color="gray", ls="--", label=start_label)
            for k in panels:
                ax = axes[f"{bb}|{k}|{n}"]
                ax.set_title(f"{bb.upper()}, NFE {n}")
                ax.set_ylabel(names[k])
        ax = axes[f"{bb}|nelbo"]
        if len(start) and not is_nan(start.nelbo.iloc[0]):
            ax.axhline(start.nelbo.iloc[0], color="gray", ls="--", label=start_label)
        ax.set_title(f"{bb.upper()}: held-out NELBO per token")
        ax.set_ylabel("NELBO ↓")
    steps = sorted(set(trained.step)) if len(trained) else []
    for ax in axes.values():
        ax.set_xscale("log")
        ax.set_xticks(steps, [str(s) for s in steps], minor=False)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("training step")
    for k in panels:
        _share_ylim([axes[f"{bb}|{k}|{n}"] for bb in g.backbones for n in g.nfes])
    fig.suptitle(
        f"Matched-entropy ratio against training step ({g.config['name']}; below 1 beats sharpening; "
        "point = the tables' ratio, bar = SD of per-seed ratios)"
    )
    fig.tight_layout()
    _legend_outside(fig, list(axes.values()), fontsize=8)
    _save(fig, "ratio_steps", g)
    atomic_write_text(g.figure_file("ratio_steps", "csv"), df.to_csv(index=False))
    plt.close(fig)


FIGURES = {
    "figure2": Figure(
        "Figure 2: Gen.-PPL against training step",
        ("png", "pdf"),
        "Figure 2: Gen.-PPL (log scale) against continual-training step, one panel per backbone and NFE "
        "(step 0 = the start checkpoint; mean ± SD over seeds; panels of one metric share their y-limits). "
        "The dashed line is the start checkpoint: a curve that falls below it improved, but read it with "
        "the tables' matched-entropy ratio, since a model that only sharpens also falls. Below the Gen.-PPL rows: "
        "MAUVE against the reference texts (higher is closer) and, for a synthetic source, the exact bigram "
        "divergence KL₂ with its sampling-noise floor (dotted), on linear axes.",
        figure2,
    ),
    "quality_diversity": Figure(
        "Quality vs diversity (all tables)",
        ("png", "pdf"),
        "Quality against diversity: Gen.-PPL (log scale) against sample entropy per NFE. The black "
        "curve is the start checkpoint's temperature sweep (the sharpening frontier); each model of "
        "the tables is one colour and marker (mean ± SD over seeds). A point below the curve beats "
        "sharpening (matched-entropy ratio < 1); on it, the model only traded entropy for Gen.-PPL. The MAUVE panels "
        "(linear axis, higher is closer to the reference texts) ask the same of the distributional score: a point "
        "above the curve beats sharpening there; for a synthetic source the KL₂ panels give the exact bigram "
        "divergence (lower is better; dotted: source samples of the same count).",
        quality_diversity,
    ),
    "ratio_steps": Figure(
        "Matched-entropy ratio and NELBO against training step",
        ("png", "pdf", "csv"),
        "Matched-entropy ratio against training step, per NFE: each trained model's Gen.-PPL over the "
        "start checkpoint's temperature-sweep frontier at the model's entropy (evaluator, then oracle on "
        "synthetic sources; point = the tables' ratio, bar = SD of the per-seed ratios), its entropy, and "
        "the held-out NELBO. Below the dashed line at 1 beats sharpening; a model outside the sweep's "
        "entropy range has no point. The numbers are in ratio_steps.csv.",
        ratio_steps,
    ),
}
