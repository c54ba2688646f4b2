"""The tables (the paper's Tables 1-6 and a config's own), Figure 2, the quality-diversity figure
and the matched-entropy ratio against training step, built from the score files.

Every cell is the mean ± sample SD over the seeds whose score file exists (``n`` is shown
when fewer than the configured seeds finished; a cell with none is "—", so partial results
render). Each table file holds the paper's table first (per NFE "Gen.-PPL ± SD" and entropy,
each of our rows with the paper's values under it, tokendrift/grid/paper_grid.yaml, and the
distillation rows it reported), then what the paper lacks: oracle Gen.-PPL, each row's
held-out NELBO, and the sharpening control. The starting checkpoint sampled over a temperature
sweep gives a frontier of Gen.-PPL against entropy (log Gen.-PPL linear in entropy between
sweep points); the row "start at matched entropy" is that frontier at the entropy of the
table's method, and the column "ratio" is a row's Gen.-PPL over the frontier at the row's own
entropy (below 1 beats plain sharpening). Outside the sweep's entropy range nothing is
extrapolated. Above the table, the baseline gate says whether our starting checkpoint
reproduces the paper's (``baseline_gate``); paper entries marked ``suspect`` are shown with
their note and never compared. Markdown, LaTeX (booktabs), CSV (one line per row x NFE) and an
HTML page for Snakemake's report are written per table.

    tokendrift aggregate CONFIG [--table NAME ...] [--figure figure2|quality_diversity|ratio_steps ...]
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .grid.layout import Layout, add_grid_args, grid_from_args
from .grid.sheet import paper_tables
from .records import check
from .utils import TokenDriftError, atomic_write_bytes, atomic_write_json, atomic_write_text, figure_bytes

METRICS = ("gen_ppl", "entropy", "oracle_gen_ppl", "mauve", "ngram_kl2", "ngram_kl2_floor", "ngram_kl2_floor_sd")
DASH = "—"


# --------------------------------------------------------------------------- reading


def read_scores(g: Layout, units) -> pd.DataFrame:
    """One line per existing score file: unit, temperature, NFE and the metrics (None where a
    score file predates one)."""
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


# --------------------------------------------------------------------------- tables


def table_frame(g: Layout, table: str) -> pd.DataFrame:
    """The tidy table: one line per row x NFE with every number (the CSV)."""
    t = g.tables[table]
    bb = t["backbone"]
    units = g.table_units(table)
    scores, nelbo = read_scores(g, units), read_nelbo(g, units)
    has_oracle = scores["oracle_gen_ppl"].notna().any()
    metrics = ["gen_ppl", "oracle_gen_ppl"] if has_oracle else ["gen_ppl"]
    fronts = {(n, m): frontier(scores, bb, n, m) for n in g.nfes for m in [*metrics, "mauve"]}
    lines = []
    method_entropy = {}
    for row in t["rows"]:
        model = row.get("model")
        label = row.get("label") or f"{row['reported']} (reported, paper)"
        step = g.row_step(table, model) if model else None
        nl = cell(nelbo, "nelbo", model=model, step=step) if model else Stat(None, None, 0)
        for n in g.nfes:
            paper = _paper(row, n) or [None] * 4
            line = {
                "table": table,
                "row": label,
                "model": model or "",
                "kind": "ours" if model else "reported",
                "nfe": n,
                "step": step,
                "n_seeds": 0,
                "paper_gen_ppl": paper[0],
                "paper_gen_ppl_sd": paper[1],
                "paper_entropy": paper[2],
                "paper_entropy_sd": paper[3],
                "paper_suspect": _suspect(row, n),
                "nelbo": nl.mean,
                "nelbo_sd": nl.sd,
            }
            if model:
                where = dict(model=model, step=step, nfe=n, temperature=1.0)
                ent = cell(scores, "entropy", **where)
                line.update(entropy=ent.mean, entropy_sd=ent.sd)
                for m in DISTRIBUTIONAL:
                    st = cell(scores, m, **where)
                    line.update({m: st.mean, f"{m}_sd": st.sd})
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
        line = {
            "table": table,
            "row": "start at matched entropy",
            "model": "start",
            "kind": "matched",
            "nfe": n,
            "step": 0,
            "entropy": method_entropy.get(n),
        }
        for m in [*metrics, "mauve"]:
            ref, temp, flag = at_entropy(fronts[(n, m)], method_entropy.get(n))
            line.update({m: ref, f"{m}_matched_temperature": temp, f"{m}_ratio_note": flag})
        lines.append(line)
    for t_ in g.sweep():  # the start checkpoint along its temperature sweep
        for n in g.nfes:
            where = dict(model="start", step=0, nfe=n, temperature=t_)
            line = {"table": table, "row": f"start, T = {t_:g}", "model": "start", "kind": "sweep", "nfe": n}
            line["temperature"], line["step"] = t_, 0
            for m in ("gen_ppl", "entropy", *metrics[1:], *DISTRIBUTIONAL):
                st = cell(scores, m, **where)
                line.update({m: st.mean, f"{m}_sd": st.sd})
                line["n_seeds"] = max(line.get("n_seeds", 0), st.n)
            lines.append(line)
    return pd.DataFrame(lines)


# Distributional scores beside Gen.-PPL (tokendrift.divergence): MAUVE against reference texts
# (higher is closer), the exact bigram divergence KL(p̂_2 ‖ p_2) of a synthetic source and its
# sampling-noise floor (source samples of the same count).
DISTRIBUTIONAL = ("mauve", "ngram_kl2", "ngram_kl2_floor", "ngram_kl2_floor_sd")


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


def _paper(row: dict, nfe: int) -> list | None:
    """The paper's [Gen.-PPL, SD, entropy, SD] of a paper_grid.yaml row at ``nfe`` (None if not reported)."""
    p = row.get("paper") or {}
    return p.get(nfe) or p.get(str(nfe))


def _suspect(row: dict, nfe: int) -> bool:
    """A paper entry marked as a likely copy error in paper_grid.yaml: shown, never compared."""
    return nfe in (row.get("suspect") or {}).get("nfe", [])


def _table_name(table: str) -> str:
    return f"Table {table[5:]}" if table.startswith("table") and table[5:].isdigit() else table


# --------------------------------------------------------------------------- the baseline gate


def gate_enabled(g: Layout) -> tuple[bool, str]:
    """Whether the paper's numbers apply to this config (workflow option ``baseline_gate.enabled``)."""
    opt = g.config["baseline_gate"]["enabled"]
    if opt is True or opt is False:
        return opt, "baseline_gate.enabled: " + str(opt).lower()
    kind = g.config["source"].get("kind")
    if kind != "openwebtext":
        return False, f"{kind} source; the paper's numbers are OpenWebText under GPT-2 Large"
    if "pretrain" in g.config["evaluator"]:
        return False, "the evaluator is trained here, not the paper's GPT-2 Large"
    return True, "OpenWebText source"


def paper_start_row(bb: str) -> tuple[str, dict] | None:
    """The paper's row of the starting checkpoint of ``bb`` (Table 1 for MDLM, Table 2 for DUO)."""
    for name, t in paper_tables()["tables"].items():
        for r in t["rows"]:
            if t["backbone"] == bb and r.get("model") == "start" and r.get("paper"):
                return name, r
    return None


def baseline_gate(g: Layout, table: str, scores: pd.DataFrame) -> dict:
    """Compare the table's starting checkpoint (temperature 1) with the paper's row for it, per
    NFE, Gen.-PPL and entropy: a cell fails when |ours - paper| > max(sd x sqrt(SD_paper^2 +
    SD_ours^2), rel x paper) (workflow/schemas/config.schema.yaml, ``baseline_gate``)."""
    bb = g.tables[table]["backbone"]
    opts = g.config["baseline_gate"]
    on, why = gate_enabled(g)
    ref = paper_start_row(bb)
    out = {
        "table": table,
        "backbone": bb,
        "enabled": on,
        "reason": why,
        "rule": "fail when |ours - paper| > max(sd * sqrt(SD_paper^2 + SD_ours^2), rel * paper)",
        "tolerance": {k: opts[k] for k in ("sd", "gen_ppl_rel", "entropy_rel")},
        "paper_table": ref[0] if ref else None,
        "paper_row": ref[1]["label"] if ref else None,
        "cells": [],
    }
    if on and ref:
        for n in g.nfes:
            p = _paper(ref[1], n)
            if p is None or _suspect(ref[1], n):
                continue
            for metric, pm, psd, rel in (
                ("gen_ppl", p[0], p[1], opts["gen_ppl_rel"]),
                ("entropy", p[2], p[3], opts["entropy_rel"]),
            ):
                st = cell(scores, metric, model="start", step=0, nfe=n, temperature=1.0)
                c = {
                    "nfe": n,
                    "metric": metric,
                    "paper": pm,
                    "paper_sd": psd,
                    "ours": st.mean,
                    "ours_sd": st.sd,
                    "n_seeds": st.n,
                }
                if st.mean is not None:
                    sd = math.hypot(psd, st.sd or 0.0)
                    delta = st.mean - pm
                    limit = max(opts["sd"] * sd, rel * abs(pm))
                    c.update(
                        delta=delta,
                        delta_pct=100 * delta / pm,
                        delta_sd=delta / sd if sd else None,
                        limit=limit,
                        within=abs(delta) <= limit,
                    )
                out["cells"].append(c)
    cells = out["cells"]
    who = f"the {bb.upper()} start checkpoint"
    where = f"the paper's {_table_name(out['paper_table'])} row" if ref else ""
    if not cells:
        out["status"] = "not applicable"
        out["summary"] = (
            "Baseline gate: not applicable ("
            + (
                why
                if not on
                else f"no NFE of this config in {where}"
                if ref
                else f"the paper reports no {bb} start row"
            )
            + ")."
        )
    elif any(c.get("within") is False for c in cells):
        out["status"] = "fail"
        out["summary"] = (
            f"BASELINE NOT REPRODUCED: {who} is outside the tolerance of {where} at "
            + "; ".join(_gate_cell(c) for c in cells if c.get("within") is False)
            + ". Every number of this table is in doubt until it is."
        )
    elif any(c["ours"] is None for c in cells):
        out["status"] = "incomplete"
        missing = sorted({c["nfe"] for c in cells if c["ours"] is None})
        out["summary"] = f"Baseline gate incomplete: no score of {who} at NFE {', '.join(map(str, missing))} yet."
    else:
        out["status"] = "pass"
        worst = max(cells, key=lambda c: abs(c["delta"]) / c["limit"] if c["limit"] else 0.0)
        out["summary"] = (
            f"Baseline reproduced: {who} is within the tolerance of {where} at NFE "
            f"{', '.join(str(n) for n in sorted({c['nfe'] for c in cells}))} (closest to the limit: "
            f"{_gate_cell(worst)})."
        )
    out["mlflow_tags"] = {"baseline_gate": out["status"], "baseline_gate.summary": out["summary"][:5000]}
    return out


def _gate_cell(c: dict) -> str:
    name = "Gen.-PPL" if c["metric"] == "gen_ppl" else "entropy"
    sd = f", {c['delta_sd']:+.1f} SD" if c.get("delta_sd") is not None else ""
    return (
        f"NFE {c['nfe']} {name} {c['ours']:.2f} vs {c['paper']:.2f} ± {c['paper_sd']:.2f} "
        f"({c['delta_pct']:+.1f}%{sd}; tolerance ±{c['limit']:.2f})"
    )


# --------------------------------------------------------------------------- rendering


@dataclass
class Block:
    """One tabular: a label column, then per group (NFE) the ``sub`` columns, then ``tail``.
    Rows are (style, label, cells); style: ours | paper | reported | matched | section | note
    (section and note rows span the table and have no cells). A cell "**x**" is bold."""

    groups: list
    sub: list
    tail: list
    rows: list

    @property
    def width(self) -> int:
        return 1 + len(self.groups) * len(self.sub) + len(self.tail)


def _best(values) -> float | None:
    v = [x for x in values if x is not None]
    return min(v) if v else None


def main_block(g: Layout, table: str, df: pd.DataFrame) -> Block:
    """The paper's shape: per NFE "Gen.-PPL ± SD" and entropy; our row, then the paper's under it."""
    t = g.tables[table]
    want = len(g.seeds)
    by_label = {r.get("label") or f"{r['reported']} (reported, paper)": r for r in t["rows"]}
    ours = df[df.kind == "ours"]
    best = {n: _best(_g(r, "gen_ppl") for r in ours[ours.nfe == n].to_dict("records")) for n in g.nfes}
    best_paper = {n: _best((_paper(r, n) or [None])[0] for r in t["rows"] if not _suspect(r, n)) for n in g.nfes}
    rows, section = [], False
    for label, lines in df[df.kind.isin(["ours", "reported"])].groupby("row", sort=False):
        recs = {int(r["nfe"]): r for r in lines.to_dict("records")}
        spec = by_label[label]
        paper_cells = []
        for n in g.nfes:
            p = _paper(spec, n)
            if p is None:
                paper_cells += ["", ""]
                continue
            ppl = f"{p[0]:.2f} ± {p[1]:.2f}" + (" †" if _suspect(spec, n) else "")
            paper_cells += [
                f"**{ppl}**" if p[0] == best_paper[n] and not _suspect(spec, n) else ppl,
                f"{p[2]:.2f} ± {p[3]:.2f}",
            ]
        if recs[g.nfes[0]]["kind"] == "reported":
            if not section:
                rows.append(("section", "Distillation, reported by the paper (not re-run, not controlled)", []))
                section = True
            rows.append(("reported", label, paper_cells))
            continue
        cells = []
        for n in g.nfes:
            r = recs[n]
            ppl = _fmt(_g(r, "gen_ppl"), _g(r, "gen_ppl_sd"), r.get("n_seeds"), want)
            cells += [
                f"**{ppl}**" if best[n] is not None and _g(r, "gen_ppl") == best[n] else ppl,
                _fmt(_g(r, "entropy"), _g(r, "entropy_sd")),
            ]
        rows.append(("ours", label, cells))
        if any(paper_cells):
            rows.append(("paper", "paper", paper_cells))
        if spec.get("suspect"):
            rows.append(("note", f"† {spec['suspect']['note']}; shown as printed, never compared with our runs.", []))
    return Block([f"NFE = {n}" for n in g.nfes], ["Gen.-PPL ↓", "Entropy ↑"], [], rows)


def _has_kl(df: pd.DataFrame) -> bool:
    return "ngram_kl2" in df.columns and df["ngram_kl2"].notna().any()


def honesty_block(g: Layout, table: str, df: pd.DataFrame) -> Block:
    """What the paper does not report: oracle Gen.-PPL, MAUVE, the exact bigram divergence, the
    matched-entropy ratio, the start checkpoint at the method's entropy, held-out NELBO."""
    has_oracle, has_kl = "oracle_gen_ppl" in df.columns, _has_kl(df)
    rows = []
    for label, lines in df[df.kind.isin(["ours", "matched"])].groupby("row", sort=False):
        recs = {int(r["nfe"]): r for r in lines.to_dict("records")}
        kind, cells = recs[g.nfes[0]]["kind"], []
        for n in g.nfes:
            r = recs[n]
            if has_oracle:
                cells.append(_fmt(_g(r, "oracle_gen_ppl"), _g(r, "oracle_gen_ppl_sd")))
            if kind == "matched":
                cells.append(_fmt(_g(r, "mauve"), digits=3) if _g(r, "mauve") is not None else DASH)
                if has_kl:
                    cells.append("")
                ppl, temp = _g(r, "gen_ppl"), _g(r, "gen_ppl_matched_temperature")
                cells.append(
                    f"{ppl:.2f} @ T={temp:.2f}"
                    if ppl is not None and temp is not None
                    else (r.get("gen_ppl_ratio_note") or DASH)
                )
                continue
            cells.append(_fmt(_g(r, "mauve"), _g(r, "mauve_sd"), digits=3))
            if has_kl:
                cells.append(_fmt(_g(r, "ngram_kl2"), _g(r, "ngram_kl2_sd"), digits=3))
            if r["model"] == "start":
                cells.append("1 (frontier)")
            else:
                ratio = _g(r, "gen_ppl_ratio")
                text = f"{ratio:.2f}" if ratio is not None else (r.get("gen_ppl_ratio_note") or DASH)
                if has_oracle:
                    o = _g(r, "oracle_gen_ppl_ratio")
                    text += f" ({o:.2f})" if o is not None else f" ({r.get('oracle_gen_ppl_ratio_note') or DASH})"
                cells.append(text)
        nl = recs[g.nfes[0]]
        cells.append(_fmt(_g(nl, "nelbo"), _g(nl, "nelbo_sd"), digits=3) if kind == "ours" else "")
        rows.append(("matched" if kind == "matched" else "ours", label, cells))
    sub = (["Oracle Gen.-PPL ↓"] if has_oracle else []) + ["MAUVE ↑"] + (["KL₂ ↓"] if has_kl else []) + ["Ratio ↓"]
    return Block([f"NFE = {n}" for n in g.nfes], sub, ["NELBO ↓"], rows)


def sweep_block(g: Layout, table: str, df: pd.DataFrame) -> Block:
    """The start checkpoint along its temperature sweep: Gen.-PPL, entropy, MAUVE (and the exact
    bigram divergence), the frontier that the ratio and the matched row read."""
    has_kl = _has_kl(df)
    rows = []
    for label, lines in df[df.kind == "sweep"].groupby("row", sort=False):
        recs = {int(r["nfe"]): r for r in lines.to_dict("records")}
        cells = []
        for n in g.nfes:
            r = recs[n]
            cells += [
                _fmt(_g(r, "gen_ppl"), _g(r, "gen_ppl_sd")),
                _fmt(_g(r, "entropy"), _g(r, "entropy_sd")),
                _fmt(_g(r, "mauve"), _g(r, "mauve_sd"), digits=3),
            ]
            if has_kl:
                cells.append(_fmt(_g(r, "ngram_kl2"), _g(r, "ngram_kl2_sd"), digits=3))
        rows.append(("ours", label, cells))
    sub = ["Gen.-PPL ↓", "Entropy ↑", "MAUVE ↑"] + (["KL₂ ↓"] if has_kl else [])
    return Block([f"NFE = {n}" for n in g.nfes], sub, [], rows)


def table_text(g: Layout, table: str, df: pd.DataFrame, floor: float | None, gate: dict) -> dict:
    """The prose around the two tabulars (Markdown inline marks: **bold**, *italic*, `code`)."""
    t = g.tables[table]
    has_oracle = "oracle_gen_ppl" in df.columns
    method = next((r["label"].rstrip("*") for r in t["rows"] if r.get("model") == t["method"]), t["method"])
    name = _table_name(table) + (f" ({table})" if _table_name(table) != table else "")
    caption = (
        f"**{name}: {t['title']}** (step {g.table_step(table)}; mean ± SD over "
        f"seeds {g.seeds}; n shown when fewer finished; — = missing). Gen.-PPL under `{g.evaluator()}` at "
        "temperature 1, sample entropy in nats. "
        + (
            "Each of our rows has the paper's values under it (*paper*: OpenWebText, GPT-2 Large); bold = the "
            "best Gen.-PPL per NFE among our rows, and among the paper's."
            if any(r.get("paper") for r in t["rows"])
            else "The paper reports none of these rows; bold = the best Gen.-PPL per NFE."
        )
    )
    honesty = (
        "**Not in the paper** (below): "
        + (
            "Oracle Gen.-PPL = Gen.-PPL under the true distribution" + (f" (floor {floor:.2f})" if floor else "") + "; "
            if has_oracle
            else ""
        )
        + "Ratio = Gen.-PPL / the start checkpoint's temperature-sweep frontier at the row's own entropy"
        + (" (in parentheses: the same under the oracle)" if has_oracle else "")
        + ": below 1 beats plain sharpening, 1 is what lowering the temperature gives for free; "
        "<range/>range = outside the sweep (not extrapolated). "
        + f"*start at matched entropy* = the start checkpoint sampled at the temperature T whose entropy "
        f"equals {method}'s (its Gen.-PPL @ T in the Ratio column), the denominator of {method}'s ratio. "
        "NELBO = held-out NELBO per token (the likelihood side sharpening cannot game). " + _distributional_text(g, df)
    )
    sweep = (
        "**The start checkpoint along its temperature sweep** (the frontier that Ratio and the matched row "
        "read): whether plain sharpening also moves the distributional scores."
    )
    return {
        "caption": caption,
        "sweep": sweep,
        "gate": gate["summary"] if gate["status"] != "not applicable" else "",
        "gate_fail": gate["status"] == "fail",
        "honesty": honesty,
        "notes": gate["summary"] if gate["status"] == "not applicable" else "",
    }


def _distributional_text(g: Layout, df: pd.DataFrame) -> str:
    """The legend of the MAUVE and KL₂ columns, with the bigram statistic's noise floor."""
    text = (
        "MAUVE ↑ = MAUVE (the authors' `mauve-text`, score options `mauve_*`) of the samples against as many "
        + ("samples of the source" if g.source["kind"] == "synthetic" else "held-out validation blocks")
        + ", fixed per seed, on the evaluator's last hidden state: 1 = indistinguishable as a distribution "
        "(in the start row at T = 1 too, and along the sweep below; at the matched row: the sweep at the method's "
        "entropy)."
    )
    if _has_kl(df):
        floor, sd = Stat.of(df["ngram_kl2_floor"].tolist()), Stat.of(df["ngram_kl2_floor_sd"].tolist())
        text += (
            " KL₂ ↓ = KL divergence (nats) of the samples' bigram frequencies from the source's exact bigram "
            "marginal; samples of the source itself, of the same count, give "
            + (f"{floor.mean:.3f} ± {sd.mean:.3f}" if floor.mean is not None and sd.mean is not None else DASH)
            + " (its sampling-noise floor), so only the excess over it is the samples' error."
        )
    return text


def render(g: Layout, table: str, df: pd.DataFrame, floor: float | None, gate: dict) -> tuple[str, str, str]:
    """Markdown, LaTeX and HTML of one table: the paper's table, then the honesty columns."""
    main, honesty, sweep = main_block(g, table, df), honesty_block(g, table, df), sweep_block(g, table, df)
    text = table_text(g, table, df, floor, gate)
    gate_line = (
        f"**{text['gate'].split(':', 1)[0]}:**{text['gate'].split(':', 1)[1]}" if text["gate_fail"] else text["gate"]
    )
    parts = [text["caption"], gate_line, main, text["honesty"], honesty]
    parts += [text["sweep"], sweep] if sweep.rows else []
    parts += [text["notes"]]
    parts = [p for p in parts if p != ""]
    md = "\n\n".join(_md_block(p) if isinstance(p, Block) else p for p in parts) + "\n"
    tex = (
        "% " + _table_name(table) + r": needs \usepackage{booktabs}" + "\n\\begin{table}[t]\n\\centering\\small\n"
        "\\setlength{\\tabcolsep}{4pt}\n\\caption{"
        + _tex_inline(text["caption"])
        + "}\n\\label{tab:"
        + table
        + "}\n"
        + "\n".join(
            _tex_block(p)
            if isinstance(p, Block)
            else "\\par\\smallskip{\\footnotesize " + _tex_inline(p) + "}\\par\\smallskip"
            for p in parts[1:]
        )
        + "\n\\end{table}\n"
    )
    gate_class = "gate fail" if text["gate_fail"] else "gate"
    body = "\n".join(
        _html_block(p)
        if isinstance(p, Block)
        else f'<p class="{gate_class if p is gate_line else "text"}">{_html_inline(p)}</p>'
        for p in parts
    )
    return md, tex, _html_page(f"td-{table}", _table_name(table), body)


# Markdown, LaTeX and HTML writers of a Block and of inline-marked text.


def _md_block(b: Block) -> str:
    head = ["Method"] + [f"{grp.replace(' = ', ' ')} {s}" for grp in b.groups for s in b.sub] + b.tail
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for style, label, cells in b.rows:
        if style in ("section", "note"):
            cells, label = [""] * (b.width - 1), (f"*{label}*" if style == "section" else f"↳ *{label}*")
        elif style == "paper":
            label = "↳ *paper*"
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in [label, *cells]) + " |")
    return "\n".join(lines)


TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "_": r"\_",
    "#": r"\#",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
    "^": r"\textasciicircum{}",
    "~": r"\textasciitilde{}",
    "±": r"$\pm$",
    "—": "--",
    "–": "--",
    "|": r"$|$",
    "<": r"$<$",
    ">": r"$>$",
    "*": r"$^*$",
    "↓": r"$\downarrow$",
    "↑": r"$\uparrow$",
    "↳": "",
    "†": r"\dag{}",
    "×": r"$\times$",
    "’": "'",
    "φ": r"$\phi$",
    "₂": r"$_2$",
}


def _tex(s) -> str:
    """Plain text to LaTeX (every special character escaped; the characters we write mapped)."""
    return "".join(TEX.get(ch, ch) for ch in str(s))


def _split_marks(s: str):
    """(mark, text) pieces of inline-marked text: mark is "**", "*", "`" or ""."""
    for m in re.finditer(r"\*\*(.+?)\*\*|(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])|`(.+?)`|([^*`]+|[*`])", s):
        if m.group(1) is not None:
            yield "**", m.group(1)
        elif m.group(2) is not None:
            yield "*", m.group(2)
        elif m.group(3) is not None:
            yield "`", m.group(3)
        else:
            yield "", m.group(4)


def _tex_inline(s: str) -> str:
    wrap = {"**": r"\textbf{%s}", "*": r"\textit{%s}", "`": r"\texttt{%s}", "": "%s"}
    return "".join(wrap[m] % _tex(x) for m, x in _split_marks(s))


def _html_inline(s: str) -> str:
    wrap = {"**": "<strong>%s</strong>", "*": "<em>%s</em>", "`": "<code>%s</code>", "": "%s"}
    return "".join(wrap[m] % html.escape(x) for m, x in _split_marks(s))


def _bold(cell: str) -> tuple[bool, str]:
    return (True, cell[2:-2]) if len(cell) > 4 and cell.startswith("**") and cell.endswith("**") else (False, cell)


def _tex_block(b: Block) -> str:
    k = len(b.sub)
    top = [""] + [rf"\multicolumn{{{k}}}{{c}}{{{_tex(grp)}}}" for grp in b.groups] + [""] * len(b.tail)
    rules = "".join(rf"\cmidrule(lr){{{2 + i * k}-{1 + (i + 1) * k}}}" for i in range(len(b.groups)))
    head = ["Method"] + [_tex(s) for _ in b.groups for s in b.sub] + [_tex(s) for s in b.tail]
    lines = [
        r"\begin{tabular}{l" + "r" * (b.width - 1) + "}",
        r"\toprule",
        " & ".join(top) + r" \\",
        rules,
        " & ".join(head) + r" \\",
        r"\midrule",
    ]
    for style, label, cells in b.rows:
        if style == "section":
            lines.append(rf"\multicolumn{{{b.width}}}{{l}}{{\textit{{{_tex(label)}}}}} \\")
        elif style == "note":
            lines.append(
                rf"\multicolumn{{{b.width}}}{{p{{0.95\linewidth}}}}{{\footnotesize\textit{{{_tex(label)}}}}} \\"
            )
        else:
            first = r"\quad\textit{paper}" if style == "paper" else _tex(label)
            out = [rf"\textbf{{{_tex(c)}}}" if bold else _tex(c) for bold, c in map(_bold, cells)]
            lines.append(" & ".join([first, *out]) + r" \\")
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"])


def _html_block(b: Block) -> str:
    k = len(b.sub)
    top = (
        ["<th></th>"] + [f'<th colspan="{k}">{html.escape(grp)}</th>' for grp in b.groups] + ["<th></th>"] * len(b.tail)
    )
    head = (
        ["<th>Method</th>"]
        + [f"<th>{html.escape(s)}</th>" for _ in b.groups for s in b.sub]
        + [f"<th>{html.escape(s)}</th>" for s in b.tail]
    )
    lines = [
        "<table>",
        "<thead>",
        "<tr>" + "".join(top) + "</tr>",
        "<tr>" + "".join(head) + "</tr>",
        "</thead>",
        "<tbody>",
    ]
    for style, label, cells in b.rows:
        if style in ("section", "note"):
            lines.append(f'<tr class="{style}"><td colspan="{b.width}">{html.escape(label)}</td></tr>')
            continue
        tds = "".join(
            f"<td><strong>{html.escape(c)}</strong></td>" if bold else f"<td>{html.escape(c)}</td>"
            for bold, c in map(_bold, cells)
        )
        first = "↳ paper" if style == "paper" else label
        lines.append(f'<tr class="{style}"><th scope="row">{html.escape(first)}</th>{tds}</tr>')
    return "\n".join(lines + ["</tbody>", "</table>"])


CSS = """
.td-report{font-family:system-ui,sans-serif;font-size:13px;line-height:1.35;color:#111;background:#fff;
  padding:8px 12px;margin:0 0 16px;max-width:none;border-radius:4px}
.td-report table{border-collapse:collapse;margin:6px 0 10px;width:auto}
.td-report th,.td-report td{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap;
  color:#111;font-size:13px}
.td-report thead th{text-align:center;border-bottom:1px solid #888}
.td-report th[scope=row],.td-report thead tr:last-child th:first-child{text-align:left;font-weight:normal}
.td-report tr.paper th,.td-report tr.paper td{color:#555;font-style:italic}
.td-report tr.reported th,.td-report tr.reported td,.td-report tr.section td{background:#eee}
.td-report tr.note td{white-space:normal;text-align:left;font-size:12px;color:#8a4b00}
.td-report p{margin:4px 0;max-width:75em}
.td-report p.gate.fail{background:#b00020;color:#fff;padding:6px 8px;font-weight:bold}
.td-report img{max-width:100%;height:auto}
.prose:has(.td-report){max-width:none}
"""


def _html_page(ident: str, title: str, body: str) -> str:
    """A standalone page (the report's view) that also reads well inlined into the report's front page."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<style>{CSS}</style></head>\n<body>\n<div class="td-report" id="{ident}">\n{body}\n</div>\n'
        "</body></html>\n"
    )


def write_table(g: Layout, table: str) -> None:
    df = table_frame(g, table)
    gate = baseline_gate(g, table, read_scores(g, g.table_units(table)))
    md, tex, page = render(g, table, df, entropy_floor(g), gate)
    md_path, tex_path, csv_path, html_path, gate_path = g.table_outputs(table)
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    atomic_write_json(gate_path, gate)
    atomic_write_text(csv_path, buf.getvalue())
    atomic_write_text(tex_path, tex)
    atomic_write_text(html_path, page)
    atomic_write_text(md_path, md)


# --------------------------------------------------------------------------- figures

FIGURE_TEXT = {
    "figure2": "Figure 2: Gen.-PPL (log scale) against continual-training step, one panel per backbone and NFE "
    "(step 0 = the start checkpoint; mean ± SD over seeds; panels of one metric share their y-limits). "
    "The dashed line is the start checkpoint: a curve that falls below it improved, but read it with "
    "the tables' matched-entropy ratio, since a model that only sharpens also falls. Below the Gen.-PPL rows: "
    "MAUVE against the reference texts (higher is closer) and, for a synthetic source, the exact bigram "
    "divergence KL₂ with its sampling-noise floor (dotted), on linear axes.",
    "quality_diversity": "Quality against diversity: Gen.-PPL (log scale) against sample entropy per NFE. The black "
    "curve is the start checkpoint's temperature sweep (the sharpening frontier); each model of "
    "the tables is one colour and marker (mean ± SD over seeds). A point below the curve beats "
    "sharpening (matched-entropy ratio < 1); on it, the model only traded entropy for Gen.-PPL. The MAUVE panels "
    "(linear axis, higher is closer to the reference texts) ask the same of the distributional score: a point "
    "above the curve beats sharpening there; for a synthetic source the KL₂ panels give the exact bigram "
    "divergence (lower is better; dotted: source samples of the same count).",
    "ratio_steps": "Matched-entropy ratio against training step, per NFE: each trained model's Gen.-PPL over the "
    "start checkpoint's temperature-sweep frontier at the model's entropy (evaluator, then oracle on "
    "synthetic sources; point = the tables' ratio, bar = SD of the per-seed ratios), its entropy, and "
    "the held-out NELBO. Below the dashed line at 1 beats sharpening; a model outside the sweep's "
    "entropy range has no point. The numbers are in ratio_steps.csv.",
}


def _save(fig, name: str, g: Layout) -> None:
    """PNG and PDF, and an HTML page holding the PNG for the report's front page."""
    for ext in ("png", "pdf"):
        path, data = g.figure_file(name, ext), figure_bytes(fig, ext)
        atomic_write_bytes(path, data)
        if ext == "png":
            img = base64.b64encode(data).decode()
            body = (
                f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{img}">'
                f"<figcaption><p>{_html_inline(FIGURE_TEXT[name])}</p></figcaption></figure>"
            )
            atomic_write_text(g.report_html(name), _html_page(f"td-{name}", name, body))


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
                    v / r for v, e in zip(d[m], d.entropy) if not _nan(v) and (r := at_entropy(fronts[(n, m)], e)[0])
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
        if len(start) and not _nan(start.nelbo.iloc[0]):
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


# The function that draws each figure of tokendrift.grid.sheet.FIGURES.
DRAW = {"figure2": figure2, "quality_diversity": quality_diversity, "ratio_steps": ratio_steps}


def run(args) -> int:
    g = grid_from_args(args)
    tables = args.table or ([] if args.figure else list(g.tables))
    figures = args.figure or ([] if args.table else list(DRAW))
    for t in tables:
        if t not in g.tables:
            raise TokenDriftError(f"--table {t}: not one of this config's tables {list(g.tables)}")
        write_table(g, t)
    for f in figures:
        DRAW[f](g)
    return 0


def register(sub) -> None:
    p = sub.add_parser("aggregate", help="build the tables and figures from the score files (partial results too)")
    add_grid_args(p)
    p.add_argument(
        "--table",
        action="append",
        help="a table of the config: table1 ... table6 or an own table's name (repeatable; default all)",
    )
    p.add_argument("--figure", action="append", choices=sorted(DRAW), help="figure to build (repeatable)")
    p.set_defaults(func=run)
