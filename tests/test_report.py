"""What researchers read: the tables in the paper's shape (Markdown, LaTeX that compiles, HTML),
the baseline gate, the paper's suspect entries, and figures whose models can be told apart.
The Snakemake report of a whole run is checked in tests/test_pipeline.py (it needs the run);
the helpers to open it in headless Chromium are in tests/conftest.py."""

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SWEEP, TD, make_grid, put
from tokendrift.core.records import write_record
from tokendrift.grid.sheet import Unit
from tokendrift.report import figures
from tokendrift.report import gate as gatelib
from tokendrift.report.figures import model_styles
from tokendrift.report.gate import baseline_gate
from tokendrift.report.results import read_scores
from tokendrift.report.tables import write_table
from tokendrift.report.tracking import import_results

PAPER_MDLM = {4: (1942.33, 66.80, 5.95, 0.02), 8: (799.52, 24.28, 5.88, 0.02)}  # the paper's Table 1, start row


def start_at(g, ppl=lambda n: PAPER_MDLM[n][0], ent=lambda n: PAPER_MDLM[n][2]):
    """Our MDLM start checkpoint at temperature 1, the same value for every seed (SD 0)."""
    for s in g.seeds:
        for n in g.nfes:
            put(g, Unit("mdlm", "start", s, 0), 1.0, n, ppl(n), ent(n), nelbo=3.0)


def md_tables(md: str) -> list[list[list[str]]]:
    """The Markdown tables of a file: lists of rows of cells (the separator line dropped)."""
    tables, cur = [], None
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if cur is None:
                cur = []
                tables.append(cur)
            if not set("".join(cells)) <= set("-"):
                cur.append(cells)
        else:
            cur = None
    return tables


# --------------------------------------------------------------------------- the paper's shape


def test_main_table_has_the_papers_columns_and_its_values_under_each_row(filled):
    g = filled
    write_table(g, "table1")
    md = Path(g.table_outputs("table1")[0]).read_text()
    main, honesty, sweep = md_tables(md)
    assert main[0] == ["Method", "NFE 4 Gen.-PPL ↓", "NFE 4 Entropy ↑", "NFE 8 Gen.-PPL ↓", "NFE 8 Entropy ↑"]
    assert all(len(r) == len(main[0]) for r in main) and all(len(r) == len(honesty[0]) for r in honesty)
    labels = [r[0] for r in main]
    i = labels.index("TokenDrift")
    assert labels[i + 1] == "↳ *paper*" and main[i + 1][1] == "**208.87 ± 11.51**"  # paper's best, bold
    assert main[i][1] == "**42.00 ± 2.00**" and main[i][2] == "4.50 ± 0.10"  # ours: Gen.-PPL ± SD, entropy ± SD
    assert "SDTT (reported, paper)" in labels and "start at matched entropy" not in labels
    # the honesty columns follow in the same file: MAUVE (none in these files), ratio, the matched row, NELBO
    assert honesty[0][1:3] == ["NFE 4 MAUVE ↑", "NFE 4 Ratio ↓"]
    assert honesty[0][-1] == "NELBO ↓" and [r[0] for r in honesty][-1] == "start at matched entropy"
    td = next(r for r in honesty if r[0] == "TokenDrift")
    assert td[1] == "—" and td[2] == f"{42.0 / 31.6227766:.2f}" and td[-1] == "4.500 ± 1.000"
    assert honesty[-1][2] == "31.62 @ T=0.65"
    # then the start checkpoint along its sweep
    assert [r[0] for r in sweep[1:]] == ["start, T = 0.5", "start, T = 0.8", "start, T = 1"]
    assert sweep[1][1:3] == ["20.00 ± 0.00", "4.00 ± 0.00"]
    page = Path(g.table_outputs("table1")[3]).read_text()
    assert page.count("<table>") == 3 and "<strong>42.00 ± 2.00</strong>" in page


def test_a_label_with_a_pipe_does_not_break_the_markdown_table(filled):
    g = make_grid(filled.root.parent.parent, paper_tables=["table5"])
    write_table(g, "table5")
    for t in md_tables(Path(g.table_outputs("table5")[0]).read_text()):
        assert all(len(r) == len(t[0]) for r in t)
    assert r"\|Q\| = 4" in Path(g.table_outputs("table5")[0]).read_text()


def test_the_papers_copied_table4_entries_are_noted_and_never_compared(filled):
    g = make_grid(filled.root.parent.parent, sample={"nfe": [4, 8, 16], "sweep": [0.5, 0.8]})
    write_table(g, "table4")
    md, tex = (Path(p).read_text() for p in g.table_outputs("table4")[:2])
    main = md_tables(md)[0]
    labels = [r[0] for r in main]
    i = labels.index("Logit / KL / w/ base")
    assert (
        main[i + 1][0] == "↳ *paper*" and main[i + 1][1] == "1943.95 ± 86.65 †" and main[i + 1][3] == "787.24 ± 4.18 †"
    )
    assert main[i + 1][5] == "283.49 ± 10.61"  # NFE 16 is not suspect
    assert main[i + 2][0].startswith("↳ *† the paper's NFE 4 and 8 entries") and "copy error" in main[i + 2][0]
    assert r"\dag{} the paper's NFE 4 and 8 entries" in tex and "copy error" in tex
    rows = [r for r in csv.DictReader(open(g.table_outputs("table4")[2])) if r["row"] == "Logit / KL / w/ base"]
    assert {r["nfe"]: r["paper_suspect"] for r in rows} == {"4": "True", "8": "True", "16": "False"}
    # no comparison against it: a suspect entry is never the gate's reference
    row = {"label": "x", "model": "start", "paper": {4: [1.0, 0.1, 5.0, 0.1]}, "suspect": {"nfe": [4], "note": "n"}}
    scores = read_scores(g, g.table_units("table1"))
    orig = gatelib.paper_start_row
    try:
        gatelib.paper_start_row = lambda bb: ("table1", row)
        gate = baseline_gate(g, "table1", scores)
    finally:
        gatelib.paper_start_row = orig
    assert gate["cells"] == [] and gate["status"] == "not applicable"


@pytest.mark.parametrize("oracle", [False, True])
def test_every_table_compiles_with_latex(tmp_path, oracle):
    engine = shutil.which("pdflatex")
    if engine is None:
        pytest.skip("pdflatex absent (Debian: apt-get install texlive-latex-base texlive-latex-recommended)")
    g = make_grid(tmp_path, sample={"nfe": [2, 4, 8], "sweep": [0.5, 0.8]})
    for t, (p, e) in SWEEP.items():
        for s in g.seeds:
            for n in g.nfes:
                put(g, Unit("mdlm", "start", s, 0), t, n, p, e, nelbo=3.0)
                put(g, Unit("duo", "start", s, 0), t, n, p, e, nelbo=3.0)
    for s in g.seeds:
        for n in g.nfes:
            put(g, Unit("mdlm", "tokendrift", s, 4), 1.0, n, *TD[s], nelbo=3.5)
            put(g, Unit("mdlm", "hard_lift", s, 4), 1.0, n, 400.0, 1.5)
    if oracle:  # the synthetic source's extra column
        for f in g.root.rglob("T*_nfe*.json"):
            r = json.loads(f.read_text())
            write_record(f, {**r, "oracle_gen_ppl": r["gen_ppl"] * 2})
    doc = tmp_path / "doc.tex"
    body = []
    for t in g.tables:
        write_table(g, t)
        body.append(r"\input{" + g.table_outputs(t)[1] + "}\n\\clearpage")
    doc.write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
        + "\n".join(body)
        + "\n\\end{document}\n"
    )
    r = subprocess.run(
        [engine, "-interaction=nonstopmode", "-halt-on-error", doc.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:]
    assert (tmp_path / "doc.pdf").read_bytes()[:5] == b"%PDF-"
    assert "Undefined control sequence" not in r.stdout and "Missing $" not in r.stdout


# --------------------------------------------------------------------------- the baseline gate


def test_gate_passes_inside_the_tolerance_and_fails_just_outside(filled):
    g = filled
    # tolerance at NFE 4: max(3 x 66.80, 10% x 1942.33) = 200.40 (our SD is 0: every seed equal)
    start_at(g, ppl=lambda n: PAPER_MDLM[n][0] + (200.0 if n == 4 else 0.0))
    write_table(g, "table1")
    gate = json.loads(Path(g.gate_file("table1")).read_text())
    assert gate["status"] == "pass" and gate["mlflow_tags"]["baseline_gate"] == "pass"
    c = next(c for c in gate["cells"] if c["nfe"] == 4 and c["metric"] == "gen_ppl")
    assert c["limit"] == pytest.approx(200.40) and c["delta_sd"] == pytest.approx(200.0 / 66.80)
    md = Path(g.table_outputs("table1")[0]).read_text()
    assert "NOT REPRODUCED" not in md and "Baseline reproduced" in md
    start_at(g, ppl=lambda n: PAPER_MDLM[n][0] + (201.0 if n == 4 else 0.0))
    write_table(g, "table1")
    gate = json.loads(Path(g.gate_file("table1")).read_text())
    assert gate["status"] == "fail"
    md = Path(g.table_outputs("table1")[0]).read_text()
    line = next(x for x in md.splitlines() if "NOT REPRODUCED" in x)
    assert line.startswith("**BASELINE NOT REPRODUCED:**") and "NFE 4 Gen.-PPL 2143.33 vs 1942.33 ± 66.80" in line
    assert "+10.3%" in line and md.index(line) < md.index("| Method")  # above the table
    assert "BASELINE NOT REPRODUCED" in Path(g.table_outputs("table1")[1]).read_text()
    assert 'class="gate fail"' in Path(g.table_outputs("table1")[3]).read_text()


def test_gate_catches_a_lowered_entropy_alone(filled):
    # the low-precision sampler's signature: entropy down, Gen.-PPL flattered (here: on target)
    start_at(filled, ent=lambda n: PAPER_MDLM[n][2] - 0.3)
    write_table(filled, "table3")  # a table without a start row is gated by its backbone's start
    gate = json.loads(Path(filled.gate_file("table3")).read_text())
    assert gate["status"] == "fail" and {c["metric"] for c in gate["cells"] if not c["within"]} == {"entropy"}
    assert gate["paper_table"] == "table1"


def test_gate_is_not_applicable_on_a_synthetic_source_or_when_disabled(filled, tmp_path):
    scores = read_scores(filled, filled.table_units("table1"))
    synthetic = make_grid(tmp_path, source={"kind": "synthetic"}, evaluator={"pretrain": {}})
    off = make_grid(tmp_path, baseline_gate={"enabled": False})
    for g in (synthetic, off):
        gate = baseline_gate(g, "table1", scores)
        assert gate["status"] == "not applicable" and gate["cells"] == []
    assert "synthetic source" in baseline_gate(synthetic, "table1", scores)["summary"]
    on = make_grid(tmp_path, source={"kind": "synthetic"}, evaluator={"pretrain": {}}, baseline_gate={"enabled": True})
    assert baseline_gate(on, "table1", read_scores(on, []))["status"] == "incomplete"  # forced on, nothing scored yet
    start_at(filled)
    assert baseline_gate(on, "table1", read_scores(filled, filled.table_units("table1")))["status"] == "pass"


def test_gate_result_tags_the_mlflow_parent_run(filled):
    g = filled
    start_at(g, ppl=lambda n: 3 * PAPER_MDLM[n][0])
    write_table(g, "table1")
    import_results(g)
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{g.root.resolve()}/mlflow.db")
    parent = mlflow.search_runs(
        experiment_names=["tokendrift-t"], filter_string="tags.kind = 'table' and tags.table = 'table1'"
    )
    assert list(parent["tags.baseline_gate"]) == ["fail"]
    assert parent["tags.baseline_gate.summary"].iloc[0].startswith("BASELINE NOT REPRODUCED")


# --------------------------------------------------------------------------- figures


def test_every_model_has_its_own_colour_and_marker():
    keys = [("mdlm", f"m{i}", 0) for i in range(45)]
    styles = model_styles(keys)
    assert len({(tuple(c), m) for c, m in styles.values()}) == 45
    assert len({tuple(styles[k][0]) for k in keys[:20]}) == 20  # the first twenty: twenty colours


def test_figures_put_the_legend_outside_and_share_y_limits(filled, monkeypatch):
    figs = {}
    monkeypatch.setattr(figures, "_save", lambda fig, name, g: figs.setdefault(name, fig))
    for s in filled.seeds:  # a second backbone and a second step for Figure 2
        for n in filled.nfes:
            put(filled, Unit("mdlm", "tokendrift", s, 2), 1.0, n, 100.0 + n, 5.0)
            put(filled, Unit("duo", "start", s, 0), 1.0, n, 900.0, 6.0)
    figures.quality_diversity(filled)
    figures.figure2(filled)
    for name, fig in figs.items():
        assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes), name
        fig.canvas.draw()
        legend = fig.legends[0].get_window_extent()
        assert legend.x0 >= max(ax.get_window_extent().x1 for ax in fig.axes) - 1, name  # right of every panel
    labels = [t.get_text() for t in figs["quality_diversity"].legends[0].get_texts()]
    assert "MDLM tokendrift @4" in labels and "MDLM continuation @4" in labels
    lims = {ax.get_ylim() for ax in figs["figure2"].axes}
    assert len(lims) == 1  # one metric (no oracle): every panel on the same y-range
