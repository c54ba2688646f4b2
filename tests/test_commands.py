"""The command line as the workflow uses it: the command table, the job options that Grid writes
and the job parsers read, the checkpoint every evaluation job opens, and the entropy-rate job."""

import json
import math

import pytest
import yaml

from tests.conftest import CI, REPO, SCHEMA, TINY_SOURCE, make_init
from tokendrift import aggregate, cli
from tokendrift import config as configlib
from tokendrift.checkpoint import open_checkpoint
from tokendrift.data import make_source
from tokendrift.grid import Grid


def test_every_command_of_the_table_is_defined_by_its_module_and_none_is_missing():
    parser = cli.build_parser([])
    choices = parser._subparsers._group_actions[0].choices  # argparse's sub-command table
    assert list(choices) == cli.COMMANDS
    for command in cli.COMMANDS:
        assert list(cli.build_parser([command])._subparsers._group_actions[0].choices).count(command) == 1
    assert cli.command_module("no-such-command") is None


@pytest.mark.parametrize("section, command, prefix", [("sample", "sample", ""), ("score", "score", ""),
                                                      ("nelbo", "score", "nelbo_"), ("nelbo", "nelbo", ""),
                                                      ("probe", "probe", "")])
def test_the_options_grid_writes_are_the_config_values_the_job_reads(section, command, prefix):
    """Every option of a config section reaches its job: Grid writes one flag per key of the job's
    schema, and the job's parser (built from the same schema) reads back the config's value."""
    g = Grid(configlib.load_file(CI) | {"nelbo": {"n_batches": 3, "batch_size": 5, "n_t": 2, "device": "cpu"}},
             SCHEMA)
    required = {"sample": ["CKPT", "--out", "o", "--nfe", "4"], "score": ["S", "--evaluator", "e", "--out", "o"],
                "nelbo": ["CKPT", "--out", "o"], "probe": ["--checkpoint", "a=CKPT", "--out", "o"]}[command]
    args = cli.build_parser([command]).parse_args([command, *required, *g.job_options(section, prefix)])
    wanted = {k: v for k, v in g.config[section].items() if k in configlib.schema(section)["properties"]}
    assert wanted and {k: getattr(args, prefix + k) for k in wanted} == wanted


def test_a_job_section_takes_its_checks_from_the_job_schema():
    raw = configlib.load_file(CI)
    with pytest.raises(configlib.TokenDriftError, match=r"sample\.n_samples"):
        Grid(raw | {"sample": {**raw["sample"], "n_samples": 0}}, SCHEMA)
    with pytest.raises(configlib.TokenDriftError, match=r"nelbo\.n_steps: unknown key"):
        Grid(raw | {"nelbo": {"n_steps": 2}}, SCHEMA)
    g = Grid(raw | {"score": {}}, SCHEMA)  # the job's defaults fill the section: each key's
    props = yaml.safe_load((REPO / "tokendrift" / "schemas" / "score.schema.yaml").read_text())["properties"]
    assert g.config["score"] == {k: p["default"] for k, p in props.items()}  # "default", as the schema file says


def test_open_checkpoint_gives_the_model_its_process_and_source(tmp_path):
    for diffusion in ("mdlm", "duo"):
        ck = open_checkpoint(make_init(tmp_path / diffusion, diffusion))
        assert not ck.model.training and ck.meta["diffusion"] == diffusion
        assert type(ck.diffusion).__name__.lower().startswith(diffusion)
        assert ck.source.config == make_source(TINY_SOURCE).config
        assert ck.model.config.vocab_size == ck.source.vocab_size + 1


def test_the_entropy_rate_job_writes_the_floor_the_tables_read(tmp_path):
    raw = configlib.load_file(CI) | {"results": str(tmp_path)}
    g = Grid(raw, SCHEMA)
    assert aggregate.entropy_floor(g) is None  # not computed yet: partial results print no floor
    (out,) = g.entropy_rate_file
    assert cli.main(["entropy-rate", "--source-json", json.dumps(g.config["source"]), "--out", out]) == 0
    rate = json.loads(open(out).read())["entropy_rate"]
    assert rate == make_source(g.config["source"]).entropy_rate
    assert aggregate.entropy_floor(g) == math.exp(rate)


def test_a_source_without_an_entropy_rate_is_refused_and_nothing_written(tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("some text " * 50)
    source = {"kind": "textdir", "path": str(tmp_path / "docs")}
    assert cli.main(["entropy-rate", "--source-json", json.dumps(source), "--out", str(tmp_path / "e.json")]) == 2
    assert "entropy" in capsys.readouterr().err
    assert not (tmp_path / "e.json").exists()
