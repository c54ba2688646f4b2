"""A researcher's own ablations as configuration (docs/ablations.md): runs and tables added to
the paper's grid (tests/configs/ci.yaml adds one of each; its whole pipeline runs in
tests/test_pipeline.py), and a config with only its own table (tests/configs/own_table.yaml),
run here end to end through the real Snakemake: its table has everything a paper table has,
the ratio figure plots it, and `tokendrift compare` prints it from MLflow."""

import copy
import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import CI, REPO, SCHEMA, planned_jobs
from tests.conftest import snakemake as snakemake_dry
from tokendrift.core.config import load_file
from tokendrift.core.utils import TokenDriftError
from tokendrift.grid.layout import Layout
from tokendrift.grid.sheet import Unit
from tokendrift.report.figures import FIGURES

OWN = REPO / "tests" / "configs" / "own_table.yaml"


def test_a_config_adds_one_run_and_one_table_to_the_papers_grid(ci_dry_run):
    g = Layout(load_file(CI), SCHEMA)
    assert list(g.tables) == ["table1", "table2", "table3", "table4", "table5", "table6", "alpha"]
    assert g.tables["alpha"]["method"] == "tokendrift"  # the first row that is not the start checkpoint
    assert g.train_config("mdlm", "alpha_3", 1)["objective"]["alpha"] == 3.0
    assert "alpha" not in g.train_config("mdlm", "tokendrift", 1)["objective"]  # the schema default, 1
    # the real DAG: the new run once per seed, the shared tokendrift run once per seed, the table's rule
    jobs = planned_jobs(ci_dry_run)
    train = [(j["backbone"], j["model"], j["seed"]) for j in jobs if j["rule"] == "train"]
    assert len(train) == len(set(train)) == 17 * 2
    assert {("mdlm", "alpha_3", "0"), ("mdlm", "alpha_3", "1"), ("mdlm", "tokendrift", "0")} <= set(train)
    rules = {j["rule"] for j in jobs}
    assert {"alpha", "table1", *FIGURES} <= rules
    sampled = [
        (j["model"], j["seed"], j["step"]) for j in jobs if j["rule"] == "sample_run" and j["backbone"] == "mdlm"
    ]
    assert len(sampled) == len(set(sampled)) and ("alpha_3", "0", "4") in sampled


def own(**change) -> dict:
    cfg = copy.deepcopy(load_file(OWN))
    cfg.update(change)
    return cfg


TABLE = load_file(OWN)["tables"]["base_loss"]
BAD = [
    (own(paper_tables=["table1"]), "paper_tables"),
    (
        own(
            paper_grid=True,
            runs=[{"backbone": "mdlm", "id": "tokendrift", "steps": "long"}],
            tables={"t": {**TABLE, "rows": [{"model": "tokendrift"}]}},
        ),
        "runs[0]: mdlm/tokendrift is a run of the paper's grid",
    ),
    (own(tables={"figure2": TABLE}), "tables"),
    (own(tables={"table1": TABLE}), "tables"),
    (own(tables={"Bad-Name": TABLE}), "tables"),
    (own(tables={"t": {**TABLE, "rows": [{"model": "nope"}]}}), "tables: t needs run mdlm/nope"),
    (own(tables={"t": {**TABLE, "rows": [{"model": "start"}]}}), "tables.t.rows"),
    (own(tables={"t": {**TABLE, "method": "start"}}), "tables.t.method"),
    (own(tables={"t": {**TABLE, "at": 9}}), "reads it at step 9"),
    (own(tables={"t": {**TABLE, "at": "middle"}}), "tables.t.at"),
    (own(tables={"t": {**TABLE, "backbone": "duo"}}), "needs backbone 'duo'"),
    (own(tables={"t": {k: v for k, v in TABLE.items() if k != "title"}}), "tables.t"),
    (own(tables={"t": {**TABLE, "rows": [{"model": "drift_base", "colour": "red"}]}}), "tables.t.rows.0.colour"),
    (
        own(
            runs=[*load_file(OWN)["runs"], {"backbone": "mdlm", "id": "unused", "steps": "long"}],
            figure2={"mdlm": ["start"]},
        ),
        "runs[1]: mdlm/unused is read by no table and no figure",
    ),
    (
        own(runs=[{"backbone": "mdlm", "id": "drift_base", "steps": "long", "set": {"objective": {"alpha": -1}}}]),
        "runs.mdlm/drift_base.objective.alpha",
    ),
    (own(figure2={"mdlm": ["start", "ghost"]}), "figure2.mdlm: 'ghost'"),
]


@pytest.mark.parametrize("cfg,expected", BAD, ids=[e for _, e in BAD])
def test_bad_ablation_configs_are_refused_naming_the_key(tmp_path, cfg, expected):
    with pytest.raises(TokenDriftError, match=re.escape(expected)):
        Layout(cfg, SCHEMA)


def test_a_bad_own_table_stops_snakemake_naming_the_key_and_writing_nothing(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(own(tables={"t": {**TABLE, "rows": [{"model": "nope"}]}})))
    r = snakemake_dry("all_tables", "-n", "--configfile", str(path), "--directory", str(tmp_path / "wd"), check=False)
    assert r.returncode != 0 and "tables: t needs run mdlm/nope" in r.stdout + r.stderr
    assert not (tmp_path / "wd" / "results").exists()


@pytest.mark.slow
def test_a_config_with_only_its_own_table_builds_everything_a_paper_table_has(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "all_tables",
        "--profile",
        str(REPO / "profiles" / "local"),
        "--configfile",
        str(OWN),
        "--directory",
        str(tmp_path),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    cfg = load_file(OWN)
    cfg["results"] = str(tmp_path / "results")
    g = Layout(cfg, SCHEMA)
    for f in g.all_outputs():
        assert Path(f).stat().st_size > 0, f
    tables = sorted(p.name for p in (g.root / "tables").iterdir())
    assert tables == ["base_loss.csv", "base_loss.md", "base_loss.tex"]  # no paper table
    md = (g.root / "tables" / "base_loss.md").read_text()
    assert "TokenDrift + base loss (alpha 0.5)" in md and "start at matched entropy" in md
    assert "Oracle Gen.-PPL" in md and "NELBO" in md and "Ratio" in md and "MAUVE" in md
    rows = list(csv.DictReader(open(g.root / "tables" / "base_loss.csv")))
    ours = next(r for r in rows if r["model"] == "drift_base")
    assert ours["step"] == "3" and float(ours["n_seeds"]) == 2 and float(ours["nelbo"]) > 0 and ours["entropy"]
    assert ours["gen_ppl_ratio"] or ours["gen_ppl_ratio_note"]  # a ratio, or why there is none
    # three blocks: the paper's shape, the honesty block (oracle, ratio, MAUVE, NELBO), the start's sweep
    assert (g.root / "tables" / "base_loss.tex").read_text().count(r"\begin{tabular}") == 3
    # the ratio figure's numbers: the table's step and every curve step, the start at step 0
    steps = {
        int(r["step"]) for r in csv.DictReader(open(g.figure_outputs("ratio_steps")[2])) if r["model"] == "drift_base"
    }
    assert steps == {1, 2, 3, 4}
    assert Path(g.score_file(Unit("mdlm", "drift_base", 1, 3), 1.0, 2)).exists()
    # MLflow: the table's parent run, printed by `tokendrift compare`
    r = subprocess.run(
        [sys.executable, "-m", "tokendrift.cli", "compare", "base_loss", str(OWN), "--schema", str(SCHEMA)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert re.search(r"^drift_base\s.*\s2$", r.stdout, re.M) and re.search(r"^start\s", r.stdout, re.M)


@pytest.mark.parametrize("path", sorted((REPO / "workflow" / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_expands(path):
    g = Layout(load_file(path), SCHEMA)  # validated: every run read by a table or figure, every row a run
    assert g.tables and g.runs


def test_no_own_table_can_take_the_name_of_a_rule_of_the_workflow():
    """Own table names become rule names: the schema's reserved names cover every rule there is."""
    sch = yaml.safe_load(SCHEMA.read_text())
    reserved = set(sch["properties"]["tables"]["propertyNames"]["not"]["enum"])
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--list-rules",
            "--configfile",
            str(CI),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rules = {line.split()[0] for line in r.stdout.splitlines() if line.strip()} - set(load_file(CI)["tables"])
    assert "train" in rules and "ratio_steps" in rules
    assert rules <= reserved, sorted(rules - reserved)
