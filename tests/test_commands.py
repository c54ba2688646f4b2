"""The command line as the workflow uses it: the command table, the job options that Rules writes
and the job parsers read, the checkpoint every evaluation job opens, and the entropy-rate job."""

import json
import math
from types import SimpleNamespace

import pytest
import yaml

from tests.conftest import CI, PAPER, REPO, SCHEMA, TINY_SOURCE, make_init
from tokendrift import cli
from tokendrift.core import config as configlib
from tokendrift.core.checkpoint import open_checkpoint
from tokendrift.core.data import make_source
from tokendrift.core.utils import config_digest
from tokendrift.grid.rules import Rules
from tokendrift.jobs import train as trainlib
from tokendrift.report import results


def test_every_command_of_the_table_is_defined_by_its_module_and_none_is_missing():
    parser = cli.build_parser([])
    choices = parser._subparsers._group_actions[0].choices  # argparse's sub-command table
    assert list(choices) == cli.COMMANDS
    for command in cli.COMMANDS:
        assert list(cli.build_parser([command])._subparsers._group_actions[0].choices).count(command) == 1
    assert cli.command_module("no-such-command") is None


@pytest.mark.parametrize(
    "section, command, prefix",
    [
        ("sample", "sample", ""),
        ("score", "score", ""),
        ("nelbo", "score", "nelbo_"),
        ("nelbo", "nelbo", ""),
        ("probe", "probe", ""),
    ],
)
def test_the_options_grid_writes_are_the_config_values_the_job_reads(section, command, prefix):
    """Every option of a config section reaches its job: Rules writes one flag per key of the job's
    schema, and the job's parser (built from the same schema) reads back the config's value."""
    g = Rules(configlib.load_file(CI) | {"nelbo": {"n_batches": 3, "batch_size": 5, "n_t": 2, "device": "cpu"}}, SCHEMA)
    required = {
        "sample": ["CKPT", "--out", "o", "--nfe", "4"],
        "score": ["S", "--evaluator", "e", "--out", "o"],
        "nelbo": ["CKPT", "--out", "o"],
        "probe": ["--checkpoint", "a=CKPT", "--out", "o"],
    }[command]
    args = cli.build_parser([command]).parse_args([command, *required, *g.job_options(section, prefix)])
    wanted = {k: v for k, v in g.config[section].items() if k in configlib.schema(section)["properties"]}
    assert wanted and configlib.read_options(args, section, prefix) == wanted


@pytest.mark.parametrize("config", [CI, PAPER])
def test_every_training_job_reads_back_exactly_the_job_config_its_flags_carry(config):
    """A train, pretrain or evaluator job gets its options as the flags of its schema, like every job:
    the job's parser reads back the job config the grid holds, types included (3e-05, [1, 2], null,
    a mapping), so that its config digest, and with it its results, are those of the config."""
    g = Rules(configlib.load_file(config), SCHEMA)
    jobs = [
        (["train"], g.train_args(SimpleNamespace(backbone=bb, model=m, seed=s)), g.train_config(bb, m, s))
        for bb, m in g.runs
        for s in g.seeds
    ]
    jobs += [
        (["pretrain"], g.pretrain_args(SimpleNamespace(backbone=bb)), g.pretrain_config(bb))
        for bb in g.backbones
        if "pretrain" in g.config["start"][bb]
    ]
    if "pretrain" in g.config["evaluator"]:
        jobs.append((["pretrain"], g.evaluator_args(None), g.evaluator_config()))
    assert len(jobs) >= len(g.runs) * len(g.seeds) > 0
    for command, argv, job in jobs:
        args = cli.build_parser(command).parse_args([*command, *argv])
        schema = "evaluator" if getattr(args, "what", "") == "evaluator" else "train"
        read = trainlib.load_job_config(args, schema)
        assert read == job and config_digest(read) == config_digest(job)
        assert configlib.validate(schema, read) == configlib.validate(schema, job)


def test_a_train_flag_overrides_the_config_file_and_a_bad_value_names_its_flag(tmp_path, capsys):
    (tmp_path / "job.yaml").write_text("steps: 40\nobjective: {loss: logit_l2, alpha: 2.0}\noptim: {lr: 1.0e-4}\n")
    argv = [
        "train",
        "--config",
        str(tmp_path / "job.yaml"),
        "--objective.alpha",
        "0.5",
        "--checkpoint-steps",
        "[10, 20]",
        "--init",
        "null",
        "--out",
        "o",
    ]
    args = cli.build_parser(["train"]).parse_args(argv)
    assert trainlib.load_job_config(args) == {
        "steps": 40,
        "objective": {"loss": "logit_l2", "alpha": 0.5},
        "optim": {"lr": 1e-4},
        "checkpoint_steps": [10, 20],
        "init": None,
    }
    assert not hasattr(args, "steps")  # a flag not given is absent: the schema fills the default
    with pytest.raises(SystemExit):
        cli.build_parser(["train"]).parse_args(["train", "--objective.alpha", "big", "--out", "o"])
    assert "--objective.alpha" in capsys.readouterr().err
    with pytest.raises(configlib.TokenDriftError, match=r"objective\.alpha"):
        trainlib.resolve_config(
            trainlib.load_job_config(
                cli.build_parser(["train"]).parse_args(
                    ["train", "--objective.alpha", "-1", "--init", "x", "--out", "o"]
                )
            )
        )


def test_a_job_section_takes_its_checks_from_the_job_schema():
    raw = configlib.load_file(CI)
    with pytest.raises(configlib.TokenDriftError, match=r"sample\.n_samples"):
        Rules(raw | {"sample": {**raw["sample"], "n_samples": 0}}, SCHEMA)
    with pytest.raises(configlib.TokenDriftError, match=r"nelbo\.n_steps: unknown key"):
        Rules(raw | {"nelbo": {"n_steps": 2}}, SCHEMA)
    g = Rules(raw | {"score": {}}, SCHEMA)  # the job's defaults fill the section: each key's
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
    g = Rules(raw, SCHEMA)
    assert results.entropy_floor(g) is None  # not computed yet: partial results print no floor
    (out,) = g.entropy_rate_file
    assert cli.main(["entropy-rate", *g.source_args(None), "--out", out]) == 0
    rate = json.loads(open(out).read())["entropy_rate"]
    assert rate == make_source(g.config["source"]).entropy_rate
    assert results.entropy_floor(g) == math.exp(rate)


def test_a_source_without_an_entropy_rate_is_refused_and_nothing_written(tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("some text " * 50)
    source = {"kind": "textdir", "path": str(tmp_path / "docs")}
    assert cli.main(["entropy-rate", *configlib.option_args("source", source), "--out", str(tmp_path / "e.json")]) == 2
    assert "entropy" in capsys.readouterr().err
    assert not (tmp_path / "e.json").exists()


def test_a_number_option_given_as_an_integer_is_a_float_and_a_count_stays_an_integer():
    """A job records its options: `--mauve-scaling 5` must record 5.0 whether the grid or a user
    wrote the flag, and a count (`--n-samples 8`) must stay an integer."""
    import argparse

    p = argparse.ArgumentParser()
    configlib.add_options(p, "score")
    got = configlib.read_options(p.parse_args(["--mauve-scaling", "5", "--batch-size", "8"]), "score")
    assert type(got["mauve_scaling"]) is float and got["mauve_scaling"] == 5.0
    assert type(got["batch_size"]) is int and got["batch_size"] == 8


def test_a_json_job_config_keeps_its_numbers(tmp_path):
    """A recorded config.json read back with `--config` (json.dumps writes 1e-08, which YAML 1.1
    reads as text): its numbers stay numbers; a broken JSON file is named."""
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"optim": {"eps": 1e-08, "lr": 0.0001}}))
    assert configlib.load_file(path) == {"optim": {"eps": 1e-08, "lr": 0.0001}}
    path.write_text('{"optim": ')
    with pytest.raises(configlib.TokenDriftError, match="job.json is not valid JSON"):
        configlib.load_file(path)
