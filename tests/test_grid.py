"""The grid of table cells (tokendrift.grid) and the Snakemake DAG over it.

The dry runs are real Snakemake runs (`snakemake -n`) of the repository's Snakefile and
profiles; nothing is executed.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import PAPER, REPO, SCHEMA, planned_jobs, snakemake
from tokendrift.core.utils import TokenDriftError
from tokendrift.grid.layout import Layout
from tokendrift.grid.rules import workflow_grid

# The paper's grid (docs/grid.md), written out independently of tokendrift/grid/paper_grid.yaml:
# (backbone, run) -> (steps, the options that make the run what it is)
PAPER_RUNS = {
    ("mdlm", "continuation"): (13000, {"variant": "continuation"}),
    ("mdlm", "tokendrift"): (13000, {"variant": "tokendrift"}),
    ("mdlm", "hard_lift"): (13000, {"objective": {"lift": "hard"}}),
    ("mdlm", "logit_l2"): (13000, {"objective": {"loss": "logit_l2"}}),
    ("mdlm", "logit_kl"): (13000, {"objective": {"loss": "logit_kl"}}),
    ("mdlm", "feature_l2_base"): (13000, {"objective": {"base_loss": True}}),
    ("mdlm", "logit_l2_base"): (13000, {"objective": {"loss": "logit_l2", "base_loss": True}}),
    ("mdlm", "logit_kl_base"): (13000, {"objective": {"loss": "logit_kl", "base_loss": True}}),
    ("mdlm", "queue4"): (5000, {"objective": {"queue_size": 4}}),
    ("mdlm", "queue64"): (5000, {"objective": {"queue_size": 64}}),
    ("mdlm", "ratio_1_0"): (5000, {"objective": {"ratio": [1, 0]}}),
    ("mdlm", "ratio_2_1"): (5000, {"objective": {"ratio": [2, 1]}}),
    ("mdlm", "ratio_0_1"): (5000, {"objective": {"ratio": [0, 1]}}),
    ("mdlm", "ratio_1_2"): (5000, {"objective": {"ratio": [1, 2]}}),
    ("duo", "continuation"): (13000, {"variant": "continuation"}),
    ("duo", "tokendrift"): (13000, {"variant": "tokendrift"}),
}


def test_paper_dry_run_plans_exactly_the_unique_jobs_of_the_paper_grid(tmp_path):
    r = snakemake(
        "all_tables",
        "-n",
        "--profile",
        str(REPO / "profiles" / "slurm"),
        "--configfile",
        str(PAPER),
        "--directory",
        str(tmp_path),
    )
    jobs = planned_jobs(r.stdout)
    train = [(j["backbone"], j["model"], j["seed"]) for j in jobs if j["rule"] == "train"]
    assert len(train) == len(set(train)) == 48  # 16 unique runs x 3 seeds, each once
    assert {(b, m) for b, m, _ in train} == set(PAPER_RUNS)
    assert {s for *_, s in train} == {"0", "1", "2"}
    assert sorted(j["backbone"] for j in jobs if j["rule"] == "import_start") == ["duo", "mdlm"]
    assert not [
        j for j in jobs if j["rule"] in ("pretrain_start", "pretrain_evaluator")
    ]  # paper: released + gpt2-large

    # Checkpoints evaluated (each sampled by one job, scored by one), counted by hand from the
    # paper's grid (docs/grid.md): MDLM start; 8 runs at 13k; the default at 5k and 6 runs of
    # 5k; Figure 2 adds continuation at the 7 curve steps and 5k, and the default at the 7
    # curve steps. DUO: start, 2 runs at 13k, and both at the 7 curve steps and 5k. Times 3 seeds.
    mdlm = 1 + 8 + 7 + 8 + 7
    duo = 1 + 2 + 8 + 8
    sample = [j for j in jobs if j["rule"] in ("sample_run", "sample_start")]
    score = [j for j in jobs if j["rule"] in ("score_run", "score_start")]
    assert len(sample) == len(score) == 3 * (mdlm + duo)
    keys = {(j["backbone"], j.get("model", "start"), j["seed"], j.get("step", "0")) for j in sample}
    assert len(keys) == len(sample)  # shared cells computed once
    assert ("mdlm", "tokendrift", "0", "5000") in keys and ("mdlm", "tokendrift", "0", "13000") in keys
    assert ("mdlm", "queue4", "1", "13000") not in keys
    assert {j["rule"] for j in jobs} >= {
        "table1",
        "table2",
        "table3",
        "table4",
        "table5",
        "table6",
        "figure2",
        "quality_diversity",
        "track",
        "all_tables",
    }


def test_train_job_configs_follow_the_sheet():
    g = Layout(yaml.safe_load(PAPER.read_text()), SCHEMA)
    for (bb, run), (steps, options) in PAPER_RUNS.items():
        cfg = g.train_config(bb, run, 2)
        assert cfg["steps"] == steps and cfg["seed"] == 2 and cfg["global_batch"] == 512
        assert cfg["init"] == str(g.start_model(bb))
        for key, value in options.items():
            assert cfg[key] == value if not isinstance(value, dict) else {**cfg[key], **value} == cfg[key]
    # the default run keeps its 5k checkpoint (Tables 5/6) and the curve steps (Figure 2)
    keep = g.train_config("mdlm", "tokendrift", 0)["checkpoint_steps"]
    assert 5000 in keep and set(g.config["steps"]["curve"]) <= set(keep) and 13000 not in keep
    assert g.train_config("mdlm", "queue4", 0)["checkpoint_steps"] == []


def test_default_and_ci_configs_expand():
    for path in (REPO / "workflow" / "config" / "default.yaml", REPO / "tests" / "configs" / "ci.yaml"):
        g = Layout(yaml.safe_load(path.read_text()), SCHEMA)
        assert g.summary()["train"] == (16 + len(g.config["runs"])) * len(g.seeds)  # ci.yaml adds one run
        assert "pretrain" in g.config["start"]["mdlm"] and "pretrain" in g.config["evaluator"]


BAD = [
    ({"seeds": [0, 0]}, "seeds"),
    ({"seeds": []}, "seeds"),
    ({"bogus": 1}, "bogus"),
    ({"steps": {"long": 10, "short": 20}}, "steps.short"),
    ({"steps": {"long": 0, "short": 0}}, "steps.long"),
    ({"sample": {"nfe": [0]}}, "sample.nfe"),
    ({"runs": [{"backbone": "gpt", "id": "x", "steps": "long"}]}, "runs.0.backbone"),
    ({"runs": [{"backbone": "mdlm", "id": "x", "steps": "long", "set": {"variant": "magic"}}]}, "variant"),
    (
        {"runs": [{"backbone": "mdlm", "id": "x", "steps": "long", "set": {"objective": {"queue_size": 0}}}]},
        "objective.queue_size",
    ),
    ({"runs": [{"backbone": "mdlm", "id": "x", "steps": "long"}] * 2}, "duplicate run"),
    ({"start": {"mdlm": {"pretrain": {}}}}, "start.duo"),
    ({"evaluator": {"name": "gpt2", "pretrain": {}}}, "evaluator"),
    # counts are ints (YAML's 4.0 is a float, which JSON Schema's "integer" would pass), with bounds
    ({"steps": {"long": 4.0, "short": 2}}, "steps.long: must be an integer, got the float 4.0"),
    ({"sample": {"nfe": [4, 100000]}}, "sample.nfe.1: 100000 is greater than the maximum of 4096"),
    ({"train": {"objective": {"queue_size": 10**9}}}, "train.objective.queue_size: 1000000000 is greater"),
    # a path is text: a newline would end the shell line it is in
    ({"results": "r\ntouch PWNED"}, "results: must hold no control or unprintable character"),
]


@pytest.mark.parametrize("change,expected", BAD, ids=[e for _, e in BAD])
def test_bad_configs_are_refused_naming_the_key(tmp_path, change, expected):
    from snakemake.common.configfile import load_configfile

    cfg = yaml.safe_load((REPO / "tests" / "configs" / "ci.yaml").read_text())
    cfg.update(change)
    with pytest.raises(TokenDriftError, match=re.escape(expected)):
        Layout(cfg, SCHEMA)
    # the same as the Snakefile gets it: the file read by Snakemake's own loader, the grid made by
    # the call in workflow/rules/common.smk (whose refusal Snakemake reports: one run below)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(TokenDriftError, match=re.escape(expected)):
        workflow_grid(load_configfile(str(path)), str(REPO), [str(path)])


def test_snakemake_refuses_a_bad_config_naming_the_key_and_writes_nothing(tmp_path):
    """One real run for the cases above: each reaches Snakemake through the same call, so one
    shows that the refusal ends the run with exit 1, the key named, nothing written."""
    cfg = yaml.safe_load((REPO / "tests" / "configs" / "ci.yaml").read_text())
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**cfg, "steps": {"long": 4.0, "short": 2}}))
    r = snakemake("all_tables", "-n", "--configfile", str(path), "--directory", str(tmp_path / "wd"), check=False)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "invalid config: workflow config: steps.long: must be an integer, got the float 4.0" in r.stdout + r.stderr
    assert not (tmp_path / "wd" / "results").exists()


GRID_ONLY_BAD = [
    ({"seeds": [0, 1.0]}, "seeds.1: must be an integer, got the float 1.0"),
    ({"seeds": list(range(65))}, "seeds: [0, 1, 2, 3"),
    ({"steps": {"long": 10**6, "short": 2}}, "steps.long: 1000000 is greater than the maximum of 999999"),
    ({"sample": {"n_samples": 10**6}}, "sample.n_samples: 1000000 is greater than the maximum of 100000"),
    ({"source": {"kind": "synthetic", "length": 10**5}}, "source.length: 100000 is greater"),
    ({"evaluator": {"pretrain": {"steps": 4.0}}}, "evaluator.pretrain.steps: must be an integer, got the float 4.0"),
    ({"name": "my study"}, "name: 'my study' does not match"),
    ({"results": "r{backbone}"}, "results: 'r{backbone}' does not match"),  # an output path: braces are wildcards
    ({"source": {"kind": "textdir", "path": "d", "cache_dir": "c{x}"}}, "source.cache_dir: 'c{x}' does not match"),
    ({"fetch": {"hf_home": "cache\x1b[2J"}}, "fetch.hf_home: must hold no control or unprintable character"),
    (
        {"tables": {"mine": {"title": "a\tb", "backbone": "mdlm", "at": "long", "rows": [{"model": "tokendrift"}]}}},
        "tables.mine.title: must hold no",
    ),
    (
        {"runs": [{"backbone": "mdlm", "id": "x", "steps": "long", "set": {"objective\n": {}}}]},
        "runs.0.set.'objective\\n'",
    ),
]


@pytest.mark.parametrize("change,expected", GRID_ONLY_BAD, ids=[e.split(":")[0] for _, e in GRID_ONLY_BAD])
def test_counts_bounds_and_unprintable_text_are_refused_naming_the_key(change, expected):
    cfg = yaml.safe_load((REPO / "tests" / "configs" / "ci.yaml").read_text())
    cfg.update(change)
    with pytest.raises(TokenDriftError, match=re.escape(expected)):
        Layout(cfg, SCHEMA)


def test_every_size_and_count_of_the_schemas_has_an_upper_bound_and_says_why():
    """Each integer option of the workflow and job schemas (a size, count or step: seeds are ids)
    and each array has a maximum, and its description gives the reason (memory or time)."""
    from tokendrift.core import config as configlib

    def walk(node, path, desc=""):
        if isinstance(node, dict):
            desc = node.get("description", desc)
            types = node.get("type", [])
            types = types if isinstance(types, list) else [types]
            if "integer" in types and "seed" not in path[-1] and path[-1] != "items":
                yield path, "maximum" in node, desc
            if "array" in types and path[-1] not in ("betas", "ratio", "paper_tables"):
                yield path, "maxItems" in node, desc
            if path[-1] == "items" and "integer" in types and "seed" not in path[-2]:
                yield path, "maximum" in node, desc
            for k, v in node.items():
                yield from walk(v, [*path, k], desc if k in ("items", "oneOf", "properties", "mdlm", "duo") else "")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from walk(v, [*path, str(i)], desc)

    sch = configlib.inline_job_schemas(yaml.safe_load(SCHEMA.read_text()))
    found = list(walk(sch, ["workflow"]))
    for name in ("source", "train", "evaluator"):
        found += walk(configlib.schema(name), [name])
    assert len(found) > 40
    unbounded = [".".join(p) for p, bounded, _ in found if not bounded]
    assert not unbounded
    no_reason = [".".join(p) for p, _, desc in found if "at most" not in desc.lower()]
    assert not no_reason


KEYWORDS = {
    "$schema",
    "$defs",
    "$ref",
    "title",
    "description",
    "type",
    "default",
    "enum",
    "const",
    "not",
    "oneOf",
    "properties",
    "additionalProperties",
    "required",
    "propertyNames",
    "minProperties",
    "maxProperties",
    "items",
    "minItems",
    "maxItems",
    "uniqueItems",
    "contains",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "pattern",
}


def test_every_schema_uses_only_json_schema_keywords():
    """In a YAML flow mapping an unquoted description with a comma becomes a stray key that JSON
    Schema ignores: the description is cut short and the stray key passes silently."""

    def stray(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                if path[-1] not in ("properties", "$defs") and k not in KEYWORDS:
                    yield ".".join([*path, k])
                yield from stray(v, [*path, k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from stray(v, [*path, str(i)])

    files = [SCHEMA, *sorted((REPO / "tokendrift" / "schemas").glob("*.schema.yaml"))]
    assert not [s for f in files for s in stray(yaml.safe_load(f.read_text()), [f.name])]


def test_a_config_value_is_never_run_as_shell(tmp_path):
    """A real rule (entropy_rate) with hostile values: `$(...)`, backquotes, `;` and a quote in the
    results folder and the Hugging Face cache run nothing and name a folder of exactly that text;
    spaces stay in one argument; a newline is refused by the config check, naming the key, before
    any job starts."""
    cfg = yaml.safe_load((REPO / "workflow" / "config" / "default.yaml").read_text())
    cfg["source"]["mc_samples"] = 16  # a cheap job: the test is about its shell line
    hostile = f"r $(touch {tmp_path}/PWNED) `touch {tmp_path}/PWNED2`; touch {tmp_path}/PWNED3 'q\""
    cases = {
        "hostile": {"results": str(tmp_path / hostile), "fetch": {"hf_home": str(tmp_path / f"hf {hostile}")}},
        "spaces": {"results": str(tmp_path / "my results"), "fetch": {"hf_home": str(tmp_path / "h f")}},
        "newline": {"results": f"{tmp_path}/r\ntouch {tmp_path}/PWNED4"},
    }
    for case, over in cases.items():
        path = tmp_path / f"{case}.yaml"
        path.write_text(yaml.safe_dump(cfg | over))
        r = snakemake(
            "entropy_rate",
            "--configfile",
            str(path),
            "--cores",
            "1",
            "--directory",
            str(tmp_path / "wd"),
            check=case != "newline",
        )
        out = Path(over["results"]) / cfg["name"] / "source" / "entropy_rate.json"
        if case == "newline":
            assert r.returncode != 0 and "results: must hold no control or unprintable character" in r.stderr
            assert not out.parent.parent.exists()
        else:
            assert json.loads(out.read_text())["entropy_rate"] > 0
            assert (Path(over["results"]) / cfg["name"] / "logs" / "entropy_rate.log").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("PWNED")) == []


def test_grid_cli_counts_jobs_and_exits_2_on_bad_config(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "tokendrift.cli", "grid", str(PAPER), "--schema", str(SCHEMA)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and json.loads(r.stdout)["train"] == 48
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nseeds: [1, 1]\n")
    r = subprocess.run(
        [sys.executable, "-m", "tokendrift.cli", "grid", str(bad), "--schema", str(SCHEMA)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "workflow config" in r.stderr


@pytest.mark.parametrize("command", ["grid", "status"])
def test_grid_and_status_say_what_is_wrong_with_a_config_in_one_line(tmp_path, command, capsys):
    from tokendrift import cli

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**yaml.safe_load(PAPER.read_text()), "steps": {"long": 4.0, "short": 2}}))
    cases = {
        str(tmp_path / "missing.yaml"): f"error: config file not found: {tmp_path / 'missing.yaml'}",
        str(tmp_path): f"error: config file {tmp_path} cannot be read",
        str(bad): "error: workflow config: steps.long: must be an integer, got the float 4.0",
    }
    for config, expected in cases.items():
        assert cli.main([command, config, "--schema", str(SCHEMA)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(expected) and err.count("\n") == 1, err
    assert cli.main([command, "--config-json", "{name: x", "--schema", str(SCHEMA)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --config-json is not valid JSON") and err.count("\n") == 1


def test_the_rule_adapter_is_imported_by_the_rules_alone():
    """tokendrift.grid.rules (inputs, argument lists, environment of each rule) is read by
    workflow/rules/*.smk only: no module of the package, reporting included, imports it; reporting
    reads through the sheet and the layout."""
    import ast

    package = REPO / "tokendrift"
    importers = []
    for f in sorted(package.rglob("*.py")):
        if f == package / "grid" / "rules.py":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" if node.module else a.name for a in node.names]
                level_pkg = ".".join(f.relative_to(REPO).with_suffix("").parts[: -node.level]) if node.level else ""
                if any(f"{level_pkg}.{n}".strip(".").endswith("grid.rules") for n in names):
                    importers.append(str(f.relative_to(REPO)))
    assert importers == []
    rules_files = "".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    assert "from tokendrift.grid.rules import" in rules_files
