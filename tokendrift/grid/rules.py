"""The rule adapter: what each Snakemake rule (workflow/rules/*.smk) asks of the grid besides
its paths, and nothing else reads. A rule's outputs are the layout's paths
(tokendrift.grid.layout) at its wildcards; its inputs and its job's arguments are functions of
the job's wildcards ``w``; the options of a job are its config section, passed as the flags of
its schema (tokendrift.core.config.option_args); a compute job's shell line starts with its
environment (``job_env``).
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

from ..core import config as configlib
from ..core.utils import code_digest
from .layout import Layout
from .sheet import Unit

# A rule's wildcards as a unit: the paths of its outputs and log are the unit's paths with them.
WILDCARDS = Unit("{backbone}", "{model}", "{seed}", "{step}")  # type: ignore[arg-type]
START_WILDCARDS = Unit("{backbone}", "start", "{seed}", 0)  # type: ignore[arg-type]


class Rules(Layout):
    """The grid as the rules see it: the layout's paths, and each rule's inputs, arguments,
    environment and code digest."""

    @cached_property
    def code_digest(self) -> str:
        """Digest of the code that trains, samples and scores (a param of those jobs)."""
        return code_digest(reporting=False)

    @cached_property
    def report_digest(self) -> str:
        """Digest of all the package's code (a param of the tables, figures, probe and import)."""
        return code_digest()

    @cached_property
    def job_inputs(self) -> list[str]:
        """What every job that reads the source or a fetched file needs first."""
        return self.prepared + self.manifest

    @cached_property
    def job_env(self) -> list[str]:
        """The environment of every compute job, ``NAME=value`` items that its rule's shell line
        exports (each quoted by ``:q``): the Hub offline, pointed at the project's cache, and the
        manifest whose digest results record. The rule adds exactly the CPUs Snakemake gives the
        job (OMP_NUM_THREADS, MKL_NUM_THREADS = ``{threads}``; torch reads them at start-up)."""
        env = [f"HF_HOME={self.config['fetch']['hf_home']}", "HF_HUB_OFFLINE=1", "HF_DATASETS_OFFLINE=1"]
        env += ["TRANSFORMERS_OFFLINE=1"] + ([f"TOKENDRIFT_MANIFEST={self.manifest[0]}"] if self.manifest else [])
        return env

    @cached_property
    def fetch_env(self) -> list[str]:
        """The environment of the fetch rules (login node, online): the same cache."""
        return [f"HF_HOME={self.config['fetch']['hf_home']}"]

    def job_options(self, section: str, prefix: str = "") -> list[str]:
        """The flags of a job schema set to the config's section (tokendrift/schemas/<section>.schema.yaml)."""
        return configlib.option_args(section, self.config[section], prefix)

    @property
    def config_args(self) -> list[str]:
        """How the jobs that rebuild the grid (tables, figures, tracking) get this config."""
        return ["--config-json", json.dumps(self.raw), "--schema", self.schema]

    def unit(self, w) -> Unit:
        """The unit of a Snakemake job's wildcards (the start rules have no model/step wildcard)."""
        return Unit(w.backbone, getattr(w, "model", "start"), int(w.seed), int(getattr(w, "step", 0)))

    def fetch_args(self, w) -> list[str]:
        what, spec = self.fetch_items[w.item]
        return [what, spec, "--item", w.item]

    def source_args(self, w) -> list[str]:
        """The source config of the data-stage jobs (prepare_data, entropy_rate)."""
        return configlib.option_args("source", self.config["source"])

    def pretrain_args(self, w) -> list[str]:
        bb = w.backbone
        options = configlib.option_args("train", self.pretrain_config(bb))
        return [bb, *options, "--out", str(self.pretrain_dir(bb)), "--discard-stale"]

    def import_args(self, w) -> list[str]:
        start = self.config["start"][w.backbone]
        model = ["--model-json", json.dumps(start["model"])] if "model" in start else []
        return [start["import"], str(self.import_dir(w.backbone)), "--diffusion", w.backbone, *model,
                "--source-json", json.dumps(self.config["source"])]  # fmt: skip

    def evaluator_args(self, w) -> list[str]:
        options = configlib.option_args("evaluator", self.evaluator_config())
        return ["evaluator", *options, "--out", str(self.evaluator_dir)]

    def train_inputs(self, w) -> list[str]:
        return [str(self.start_done(w.backbone)), *self.job_inputs]

    def train_args(self, w) -> list[str]:
        job = self.train_config(w.backbone, w.model, int(w.seed))
        out = self.train_dir(w.backbone, w.model, int(w.seed))
        return [*configlib.option_args("train", job), "--out", str(out), "--discard-stale"]

    def sample_outputs(self, start: bool) -> list[str]:
        return self.sample_files(START_WILDCARDS if start else WILDCARDS)

    def sample_inputs(self, w) -> list[str]:
        u = self.unit(w)
        return [self.checkpoint_done(u.backbone, u.model, u.seed), *self.job_inputs]

    def sample_args(self, w) -> list[str]:
        """One checkpoint at every NFE and temperature of its cells, into a folder per cell."""
        u = self.unit(w)
        folders = self.unit_dir("samples", u) / "T{temperature}_nfe{nfe}"
        return [
            str(self.unit_checkpoint(u)),
            *("--nfe", *map(str, self.nfes)),
            *("--temperature", *map(str, self.temperatures(u.model))),
            *("--seed", str(u.seed)),
            *self.job_options("sample"),
            *("--out", str(folders)),
        ]

    def score_outputs(self, start: bool) -> list[str]:
        return self.score_files([START_WILDCARDS if start else WILDCARDS], nelbo=False)

    def nelbo_output(self, start: bool) -> str:
        return str(self.nelbo_file(START_WILDCARDS if start else WILDCARDS))

    def score_inputs(self, w) -> dict:
        u = self.unit(w)
        return {
            "samples": self.sample_files(u),
            "evaluator": self.evaluator_inputs(),
            "checkpoint": self.checkpoint_done(u.backbone, u.model, u.seed),
            "data": self.job_inputs,
        }

    def score_args(self, w) -> list[str]:
        """A checkpoint's sample folders under the evaluator, then its held-out NELBO."""
        u = self.unit(w)
        return [
            *map(str, self.sample_dirs(u)),
            *("--evaluator", self.evaluator()),
            *self.job_options("score"),
            *self.job_options("nelbo", prefix="nelbo_"),
            *("--checkpoint", str(self.unit_checkpoint(u))),
            *("--nelbo-seed", str(u.seed)),
        ]

    def probe_inputs(self, w) -> list[str]:
        return [
            *(self.checkpoint_done(w.backbone, m, self.seeds[0]) for m in self.probe_models(w.backbone)),
            *self.job_inputs,
        ]

    def probe_args(self, w) -> list[str]:
        ckpts = [a for m, p in self.probe_models(w.backbone).items() for a in ("--checkpoint", f"{m}={p}")]
        return [*ckpts, "--out", str(self.probe_dir(w.backbone)), *self.job_options("probe")]

    def table_inputs(self, table: str) -> list[str]:
        return self.score_files(self.table_units(table))

    def figure2_inputs(self) -> list[str]:
        return self.score_files(self.figure2_units())

    def figure_inputs(self, name: str) -> list[str]:
        """Score files a figure reads: Figure 2's curves; every table's checkpoints (quality-diversity);
        every checkpoint of the study (ratio against step)."""
        if name == "figure2":
            return self.figure2_inputs()
        if name == "quality_diversity":
            return sorted({f for t in self.tables for f in self.table_inputs(t)})
        return self.score_files(self.units)

    def report_category(self, table: str) -> str:
        """A table's category in Snakemake's report: "Table 1" for the paper's, its name for one's own."""
        return f"Table {table[5:]}" if table[5:].isdigit() else table


def workflow_grid(config: dict, basedir: str, configfiles) -> Rules:
    """The grid of a Snakemake run: its config, or the embedded default (workflow/config/default.yaml,
    with any ``--config key=value`` on top) when no --configfile or profile names one, validated by
    workflow/schemas/config.schema.yaml."""
    base = Path(basedir)
    if not configfiles:
        config = configlib.deep_merge(configlib.load_file(base / "workflow" / "config" / "default.yaml"), config)
    return Rules(config, base / "workflow" / "schemas" / "config.schema.yaml")
