"""The tables: the tidy frame of a table (one line per row x NFE, the CSV), its blocks and the prose
around them, and the files written per table.

Every cell is the mean ± sample SD over the seeds whose score file exists (``n`` is shown
when fewer than the configured seeds finished; a cell with none is "—", so partial results
render). Each table file holds the paper's table first (per NFE "Gen.-PPL ± SD" and entropy,
each of our rows with the paper's values under it, tokendrift/paper_grid.yaml, and the
distillation rows it reported), then what the paper lacks: oracle Gen.-PPL, each row's
held-out NELBO, and the sharpening control. The starting checkpoint sampled over a temperature
sweep gives a frontier of Gen.-PPL against entropy (log Gen.-PPL linear in entropy between
sweep points); the row "start at matched entropy" is that frontier at the entropy of the
table's method, and the column "ratio" is a row's Gen.-PPL over the frontier at the row's own
entropy (below 1 beats plain sharpening). Outside the sweep's entropy range nothing is
extrapolated. Above the table, the baseline gate says whether our starting checkpoint
reproduces the paper's (report.gate); paper entries marked ``suspect`` are shown with
their note and never compared. Markdown, LaTeX (booktabs), CSV (one line per row x NFE) and an
HTML page for Snakemake's report are written per table (report.render).
"""

from __future__ import annotations

import io

import pandas as pd

from ..core.utils import atomic_write_json, atomic_write_text
from ..grid.layout import Layout
from .gate import baseline_gate, is_suspect, paper_entry
from .render import DASH, Block, fmt, html_block, html_inline, html_page, md_block, table_name, tex_block, tex_inline
from .results import Stat, at_entropy, cell, entropy_floor, frontier, is_nan, read_nelbo, read_scores

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
            paper = paper_entry(row, n) or [None] * 4
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
                "paper_suspect": is_suspect(row, n),
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


# Distributional scores beside Gen.-PPL (tokendrift.core.divergence): MAUVE against reference texts
# (higher is closer), the exact bigram divergence KL(p̂_2 ‖ p_2) of a synthetic source and its
# sampling-noise floor (source samples of the same count).
DISTRIBUTIONAL = ("mauve", "ngram_kl2", "ngram_kl2_floor", "ngram_kl2_floor_sd")


def _g(line, key):
    v = line.get(key)
    return None if is_nan(v) else v


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
    best_paper = {n: _best((paper_entry(r, n) or [None])[0] for r in t["rows"] if not is_suspect(r, n)) for n in g.nfes}
    rows, section = [], False
    for label, lines in df[df.kind.isin(["ours", "reported"])].groupby("row", sort=False):
        recs = {int(r["nfe"]): r for r in lines.to_dict("records")}
        spec = by_label[label]
        paper_cells = []
        for n in g.nfes:
            p = paper_entry(spec, n)
            if p is None:
                paper_cells += ["", ""]
                continue
            ppl = f"{p[0]:.2f} ± {p[1]:.2f}" + (" †" if is_suspect(spec, n) else "")
            paper_cells += [
                f"**{ppl}**" if p[0] == best_paper[n] and not is_suspect(spec, n) else ppl,
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
            ppl = fmt(_g(r, "gen_ppl"), _g(r, "gen_ppl_sd"), r.get("n_seeds"), want)
            cells += [
                f"**{ppl}**" if best[n] is not None and _g(r, "gen_ppl") == best[n] else ppl,
                fmt(_g(r, "entropy"), _g(r, "entropy_sd")),
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
                cells.append(fmt(_g(r, "oracle_gen_ppl"), _g(r, "oracle_gen_ppl_sd")))
            if kind == "matched":
                cells.append(fmt(_g(r, "mauve"), digits=3) if _g(r, "mauve") is not None else DASH)
                if has_kl:
                    cells.append("")
                ppl, temp = _g(r, "gen_ppl"), _g(r, "gen_ppl_matched_temperature")
                cells.append(
                    f"{ppl:.2f} @ T={temp:.2f}"
                    if ppl is not None and temp is not None
                    else (r.get("gen_ppl_ratio_note") or DASH)
                )
                continue
            cells.append(fmt(_g(r, "mauve"), _g(r, "mauve_sd"), digits=3))
            if has_kl:
                cells.append(fmt(_g(r, "ngram_kl2"), _g(r, "ngram_kl2_sd"), digits=3))
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
        cells.append(fmt(_g(nl, "nelbo"), _g(nl, "nelbo_sd"), digits=3) if kind == "ours" else "")
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
                fmt(_g(r, "gen_ppl"), _g(r, "gen_ppl_sd")),
                fmt(_g(r, "entropy"), _g(r, "entropy_sd")),
                fmt(_g(r, "mauve"), _g(r, "mauve_sd"), digits=3),
            ]
            if has_kl:
                cells.append(fmt(_g(r, "ngram_kl2"), _g(r, "ngram_kl2_sd"), digits=3))
        rows.append(("ours", label, cells))
    sub = ["Gen.-PPL ↓", "Entropy ↑", "MAUVE ↑"] + (["KL₂ ↓"] if has_kl else [])
    return Block([f"NFE = {n}" for n in g.nfes], sub, [], rows)


def table_text(g: Layout, table: str, df: pd.DataFrame, floor: float | None, gate: dict) -> dict:
    """The prose around the two tabulars (Markdown inline marks: **bold**, *italic*, `code`)."""
    t = g.tables[table]
    has_oracle = "oracle_gen_ppl" in df.columns
    method = next((r["label"].rstrip("*") for r in t["rows"] if r.get("model") == t["method"]), t["method"])
    name = table_name(table) + (f" ({table})" if table_name(table) != table else "")
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


def render_table(g: Layout, table: str, df: pd.DataFrame, floor: float | None, gate: dict) -> tuple[str, str, str]:
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
    md = "\n\n".join(md_block(p) if isinstance(p, Block) else p for p in parts) + "\n"
    tex = (
        "% " + table_name(table) + r": needs \usepackage{booktabs}" + "\n\\begin{table}[t]\n\\centering\\small\n"
        "\\setlength{\\tabcolsep}{4pt}\n\\caption{"
        + tex_inline(text["caption"])
        + "}\n\\label{tab:"
        + table
        + "}\n"
        + "\n".join(
            tex_block(p)
            if isinstance(p, Block)
            else "\\par\\smallskip{\\footnotesize " + tex_inline(p) + "}\\par\\smallskip"
            for p in parts[1:]
        )
        + "\n\\end{table}\n"
    )
    gate_class = "gate fail" if text["gate_fail"] else "gate"
    body = "\n".join(
        html_block(p)
        if isinstance(p, Block)
        else f'<p class="{gate_class if p is gate_line else "text"}">{html_inline(p)}</p>'
        for p in parts
    )
    return md, tex, html_page(f"td-{table}", table_name(table), body)


def write_table(g: Layout, table: str) -> None:
    df = table_frame(g, table)
    gate = baseline_gate(g, table, read_scores(g, g.table_units(table)))
    md, tex, page = render_table(g, table, df, entropy_floor(g), gate)
    md_path, tex_path, csv_path, html_path, gate_path = g.table_outputs(table)
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    atomic_write_json(gate_path, gate)
    atomic_write_text(csv_path, buf.getvalue())
    atomic_write_text(tex_path, tex)
    atomic_write_text(html_path, page)
    atomic_write_text(md_path, md)
