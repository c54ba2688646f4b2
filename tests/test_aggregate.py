"""Tables, figures and MLflow import from hand-made score files."""

import csv
import math
import statistics
from pathlib import Path

import pytest

from tests.conftest import SWEEP, TD, make_grid, put
from tokendrift.core.utils import TokenDriftError
from tokendrift.grid.sheet import Unit
from tokendrift.report.figures import FIGURES, figure2, quality_diversity, ratio_steps
from tokendrift.report.results import at_entropy
from tokendrift.report.tables import write_table
from tokendrift.report.tracking import compare, import_results


def rows(g, table):
    return list(csv.DictReader(open(g.table_outputs(table)[2])))


def test_cells_are_mean_and_sample_sd_with_n_and_missing_marked(filled):
    g = filled
    write_table(g, "table1")
    md = Path(g.table_outputs("table1")[0]).read_text()
    ppl = [TD[s][0] for s in g.seeds]
    assert f"**{statistics.mean(ppl):.2f} ± {statistics.stdev(ppl):.2f}**" in md  # best Gen.-PPL in bold
    assert "190.50 ± 0.71 (n=2)" in md  # one seed missing: n shown
    tex = Path(g.table_outputs("table1")[1]).read_text()
    assert r"\textbf{42.00 $\pm$ 2.00}" in tex and r"\toprule" in tex
    assert "1942.33" in md and "SDTT (reported, paper)" in md  # the paper's values beside ours
    nelbo = [3.5, 4.5, 5.5]
    assert f"{statistics.mean(nelbo):.3f} ± {statistics.stdev(nelbo):.3f}" in md
    # table 3's hard-lift row has no score file at all: every cell is the missing mark
    write_table(g, "table3")
    hard = next(r for r in Path(g.table_outputs("table3")[0]).read_text().splitlines() if r.startswith("| Hard"))
    assert hard.count("—") >= 4


def test_the_start_row_counts_each_seed_once(filled):
    # the start checkpoint is both a table row and the sweep: its seeds must not be read twice
    # (duplicated values keep the mean but shrink the sample SD)
    g = filled
    for s in g.seeds:
        for n in g.nfes:
            put(g, Unit("mdlm", "start", s, 0), 1.0, n, 200.0 + 10 * s, 6.0, nelbo=3.0 + s)
    write_table(g, "table1")
    start = next(r for r in rows(g, "table1") if r["row"] == "MDLM (start checkpoint)" and r["nfe"] == "4")
    assert float(start["n_seeds"]) == 3
    assert float(start["gen_ppl"]) == pytest.approx(210.0) and float(start["gen_ppl_sd"]) == pytest.approx(10.0)
    assert float(start["nelbo_sd"]) == pytest.approx(1.0)


def test_matched_entropy_row_and_ratio_follow_the_log_linear_frontier(filled):
    g = filled
    write_table(g, "table1")
    by = {(r["row"], r["nfe"]): r for r in rows(g, "table1")}
    e = statistics.mean(TD[s][1] for s in g.seeds)  # 4.5: halfway between T=0.5 and T=0.8
    want = math.exp(0.5 * math.log(20) + 0.5 * math.log(50))
    matched = by[("start at matched entropy", "4")]
    assert float(matched["gen_ppl"]) == pytest.approx(want)
    assert float(matched["gen_ppl_matched_temperature"]) == pytest.approx(0.65)
    td = by[("TokenDrift", "4")]
    assert float(td["gen_ppl_ratio"]) == pytest.approx(42.0 / want)
    # the entropy the start is matched at: TokenDrift's mean over its seeds (sample SD beside it)
    assert float(td["entropy"]) == float(matched["entropy"]) == pytest.approx(e)
    assert float(td["entropy_sd"]) == pytest.approx(statistics.stdev(TD[s][1] for s in g.seeds))


def test_ratio_against_step_is_the_tables_ratio_with_the_seeds_spread(filled):
    """The ratio figure's numbers: per model, step and NFE, the tables' ratio (mean Gen.-PPL over
    the frontier at the mean entropy) and the mean and SD of each seed's own ratio."""
    g = filled
    put(g, Unit("mdlm", "tokendrift", 0, 2), 1.0, 4, 60.0, 5.0, nelbo=3.2)  # one seed at another step
    ratio_steps(g)
    png, pdf, csv_path = g.figure_outputs("ratio_steps")
    assert Path(png).read_bytes()[:4] == b"\x89PNG" and Path(pdf).read_bytes()[:5] == b"%PDF-"
    by = {(r["model"], r["step"], r["nfe"]): r for r in csv.DictReader(open(csv_path))}
    front = lambda e: math.exp((1 - (e - 4)) * math.log(20) + (e - 4) * math.log(50))  # noqa: E731 (4 <= e <= 5)
    td = by[("tokendrift", "4", "4")]
    assert float(td["gen_ppl_ratio"]) == pytest.approx(42.0 / front(4.5))
    per_seed = [TD[s][0] / front(TD[s][1]) for s in g.seeds]
    assert float(td["gen_ppl_ratio_seeds_mean"]) == pytest.approx(statistics.mean(per_seed))
    assert float(td["gen_ppl_ratio_seeds_sd"]) == pytest.approx(statistics.stdev(per_seed))
    assert float(td["nelbo"]) == pytest.approx(4.5) and td["n_seeds"] == "3"
    early = by[("tokendrift", "2", "4")]
    assert float(early["gen_ppl_ratio"]) == pytest.approx(60.0 / 50.0) and early["n_seeds"] == "1"  # entropy of T=0.8
    assert ("tokendrift", "2", "8") not in by  # nothing scored there
    assert by[("start", "0", "4")]["gen_ppl_ratio"] == "" and float(by[("start", "0", "4")]["nelbo"]) == 3.0
    cont = by[("continuation", "4", "4")]  # entropy 5.9: between T=0.8 and T=1, above the frontier
    assert float(cont["gen_ppl_ratio"]) > 1.0 and cont["n_seeds"] == "2"


def test_outside_the_sweep_nothing_is_extrapolated():
    pts = [(4.0, 20.0, 0.5), (6.0, 200.0, 1.0)]
    assert at_entropy(pts, 3.0) == (None, None, "<range")
    assert at_entropy(pts, 7.0) == (None, None, ">range")
    assert at_entropy(pts, 6.0)[0] == pytest.approx(200.0)


def test_each_registered_figure_writes_exactly_its_registered_files(filled):
    # the registry is the one list of figures: a drawing function that writes a file the registry
    # does not name (or misses one it names) fails here
    for name, figure in FIGURES.items():
        for f in filled.figure_outputs(name):
            Path(f).unlink(missing_ok=True)
        figure.draw(filled)
        folder = Path(filled.figure_file(name, "png")).parent
        assert sorted(folder.glob(f"{name}.*")) == sorted(map(Path, filled.figure_outputs(name))), name
        png, pdf = filled.figure_outputs(name)[:2]
        assert Path(png).read_bytes()[:4] == b"\x89PNG" and Path(pdf).read_bytes()[:5] == b"%PDF-"
        assert "data:image/png;base64," in Path(filled.report_html(name)).read_text()  # the report's page


def test_a_corrupted_score_file_is_named(filled):
    f = filled.score_file(Unit("mdlm", "tokendrift", 0, 4), 1.0, 4)
    f.write_text("{oops")
    with pytest.raises(TokenDriftError, match=str(f)):
        write_table(filled, "table1")


def test_mlflow_import_is_complete_idempotent_and_incremental(filled):
    g = filled
    write_table(g, "table1")
    first = import_results(g)
    assert first["tracking_uri"].startswith("sqlite:///") and Path(g.root / "mlflow.db").exists()
    import mlflow

    mlflow.set_tracking_uri(first["tracking_uri"])
    cells = mlflow.search_runs(experiment_names=["tokendrift-t"], filter_string="tags.kind = 'cell'")
    # table1 (start x3, continuation x2, tokendrift x3) + the start rows of tables 2-6 (MDLM ones share files)
    t1 = cells[cells["tags.table"] == "table1"]
    assert len(t1) == 8 and set(t1["tags.variant"]) == {"start", "continuation", "tokendrift"}
    td0 = t1[(t1["tags.variant"] == "tokendrift") & (t1["tags.seed"] == "0")].iloc[0]
    assert td0["metrics.gen_ppl/nfe4"] == 40.0 and td0["metrics.nelbo"] == 3.5 and td0["params.step"] == "4"
    assert td0["params.train.objective.queue_size"] == "1024"  # the cell's training options
    assert td0["tags.mlflow.parentRunId"]
    again = import_results(g)
    assert again["imported"] == [] and again["skipped"] > 0
    put(g, Unit("mdlm", "continuation", 2, 4), 1.0, 4, 191.0, 5.9)  # the missing seed arrives
    third = import_results(g)
    assert any("continuation/seed2" in k for k in third["imported"])
    table = compare(g, "table1")
    assert list(table.index) == ["start", "continuation", "tokendrift"] and table.loc["continuation", "n"] == 3


def test_many_results_at_once_are_all_imported(tmp_path):
    g = make_grid(tmp_path, seeds=list(range(32)), paper_tables=["table1"])
    for s in g.seeds:
        put(g, Unit("mdlm", "tokendrift", s, 4), 1.0, 4, 10.0 + s, 4.0)
    import_results(g)
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{g.root.resolve()}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["tokendrift-t"], filter_string="tags.variant = 'tokendrift'")
    assert sorted(runs["metrics.gen_ppl/nfe4"]) == [10.0 + s for s in range(32)]  # none lost


def test_unreachable_store_is_a_clear_error_and_touches_no_result(filled, monkeypatch):
    g = make_grid(filled.root.parent.parent, mlflow={"tracking_uri": "http://127.0.0.1:9"})
    before = sorted(p.name for p in g.root.rglob("*"))
    with pytest.raises(TokenDriftError, match=r"http://127\.0\.0\.1:9.*unreachable"):
        import_results(g)
    assert sorted(p.name for p in g.root.rglob("*")) == before


def test_mauve_and_the_exact_divergence_in_the_table_the_sweep_the_figures_and_mlflow(filled):
    """MAUVE beside the oracle/ratio block (mean ± SD over seeds), the start's MAUVE at the
    method's entropy and along its sweep, KL₂ with its noise floor, the figures' panels, MLflow."""
    g = filled
    sweep_mauve = {0.5: 0.2, 0.8: 0.6, 1.0: 0.9}
    for s in g.seeds:
        for t, (p, e) in SWEEP.items():
            put(
                g,
                Unit("mdlm", "start", s, 0),
                t,
                4,
                p,
                e,
                nelbo=3.0,
                mauve=sweep_mauve[t],
                ngram_kl2=0.5 + t,
                ngram_kl2_floor=0.35,
                ngram_kl2_floor_sd=0.02,
            )
        put(
            g,
            Unit("mdlm", "tokendrift", s, 4),
            1.0,
            4,
            *TD[s],
            nelbo=3.5 + s,
            mauve=0.3 + 0.1 * s,
            ngram_kl2=2.0,
            ngram_kl2_floor=0.35,
            ngram_kl2_floor_sd=0.02,
        )
    write_table(g, "table1")
    by = {(r["row"], r["nfe"]): r for r in rows(g, "table1")}
    assert float(by[("TokenDrift", "4")]["mauve"]) == pytest.approx(0.4)
    assert float(by[("TokenDrift", "4")]["mauve_sd"]) == pytest.approx(0.1)
    # at the method's entropy 4.5, halfway between T=0.5 and T=0.8 on the frontier (log-linear)
    assert float(by[("start at matched entropy", "4")]["mauve"]) == pytest.approx(math.sqrt(0.2 * 0.6))
    assert float(by[("start, T = 0.8", "4")]["mauve"]) == pytest.approx(0.6)
    assert by[("start, T = 0.8", "8")]["mauve"] == ""  # NFE 8 has no MAUVE in these files
    md = Path(g.table_outputs("table1")[0]).read_text()
    assert "MAUVE ↑" in md and "0.400 ± 0.100" in md and "KL₂ ↓" in md and "2.000 ± 0.000" in md
    assert "give 0.350 ± 0.020 (its sampling-noise floor)" in md
    assert "| start, T = 0.5 | 20.00 ± 0.00 | 4.00 ± 0.00 | 0.200 ± 0.000 | 1.000 ± 0.000 |" in md
    tex = Path(g.table_outputs("table1")[1]).read_text()
    assert r"KL$_2$ $\downarrow$" in tex
    figure2(g)
    quality_diversity(g)
    assert Path(g.figure_outputs("quality_diversity")[0]).read_bytes()[:4] == b"\x89PNG"
    import mlflow

    mlflow.set_tracking_uri(import_results(g)["tracking_uri"])
    cells = mlflow.search_runs(experiment_names=["tokendrift-t"], filter_string="tags.kind = 'cell'")
    td = cells[(cells["tags.table"] == "table1") & (cells["tags.variant"] == "tokendrift")]
    assert sorted(td["metrics.mauve/nfe4"]) == pytest.approx([0.3, 0.4, 0.5])
    assert set(td["metrics.ngram_kl2/nfe4"]) == {2.0}
    assert "mauve/nfe4" in compare(g, "table1").columns


def test_tables_without_distributional_scores_show_dashes(filled):
    """Score files written before MAUVE: the column is there, every cell "—"; no KL₂ column."""
    write_table(filled, "table1")
    md = Path(filled.table_outputs("table1")[0]).read_text()
    assert "MAUVE ↑" in md and "KL₂" not in md
