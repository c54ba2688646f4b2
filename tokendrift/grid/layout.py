"""The layout: where each file of a workflow config's study lives under ``<results>/<name>/``,
and each job's log (docs/grid.md). ``Layout`` is the sheet (tokendrift.grid.sheet) with its
paths; the reporting jobs (tables, figures, tracking, status, cost) read through it, and the
Snakemake rules through its adapter (tokendrift.grid.rules).

Layout under ``<results>/<name>/``::

    start/<bb>/pretrain/            pretrained starting checkpoint (embedded default) ...
    start/<bb>/imported/            ... or the imported released one (paper)
    evaluator/pretrain/model        the embedded default's causal-LM evaluator
    train/<bb>/<run>/seed<k>/       a continual-training run (checkpoints/step_NNNNNN, done.json)
    samples/<bb>/<model>/seed<k>/step<S>/T<t>_nfe<N>/      a sample folder
    scores/<bb>/<model>/seed<k>/step<S>/T<t>_nfe<N>.json   its score
    scores/<bb>/<model>/seed<k>/step<S>/nelbo.json         held-out NELBO of the checkpoint
    source/entropy_rate.json        the synthetic source's entropy rate (the oracle floor)
    logs/                           one log per job (LOGS)
    tables/, figures/, report/ (HTML renderings, baseline gates), probe/, mlflow.db
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

from ..core import config as configlib
from ..core.source import needs_preparation, prepared_dir
from ..core.utils import TokenDriftError, temp_str
from ..report.figures import FIGURES  # the figures of every config: title, files, caption, drawing function
from .sheet import Sheet, Unit

# The log of each job, under <results>/<name>/logs/ (the rules' log: and `tokendrift status`).
LOGS = {
    "fetch_item": "fetch/{item}.log",
    "fetch_manifest": "fetch/manifest.log",
    "prepare_data": "prepare_data.log",
    "entropy_rate": "entropy_rate.log",
    "pretrain_start": "start/{backbone}.log",
    "import_start": "start/{backbone}_import.log",
    "pretrain_evaluator": "evaluator.log",
    "train": "train/{backbone}/{model}/seed{seed}.log",
    "sample_run": "sample/{backbone}/{model}/seed{seed}_step{step}.log",
    "sample_start": "sample/{backbone}/start/seed{seed}.log",
    "score_run": "score/{backbone}/{model}/seed{seed}_step{step}.log",
    "score_start": "score/{backbone}/start/seed{seed}.log",
    "probe": "probe/{backbone}.log",
    "aggregate": "aggregate/{name}.log",
    "track": "track.log",
}


class Layout(Sheet):
    """The sheet of a workflow config and the path of every file its jobs write."""

    def __init__(self, config: dict, schema: str | Path):
        super().__init__(config, schema)
        self.root = Path(self.config["results"]) / self.config["name"]

    def pretrain_dir(self, bb: str) -> Path:
        return self.root / "start" / bb / "pretrain"

    def import_dir(self, bb: str) -> Path:
        return self.root / "start" / bb / "imported"

    def start_model(self, bb: str) -> Path:
        if "pretrain" in self.config["start"][bb]:
            return self.pretrain_dir(bb) / "checkpoints" / f"step_{self.pretrain_steps(bb):06d}"
        return self.import_dir(bb)

    def pretrain_done(self, bb: str) -> str:
        return str(self.pretrain_dir(bb) / "done.json")

    def import_done(self, bb: str) -> str:
        return str(self.import_dir(bb) / "meta.json")

    def start_done(self, bb: str) -> Path:
        """The output of the job that makes the starting checkpoint (pretrain_start or import_start)."""
        return Path(self.pretrain_done(bb) if "pretrain" in self.config["start"][bb] else self.import_done(bb))

    @property
    def evaluator_dir(self) -> Path:
        return self.root / "evaluator" / "pretrain"

    @property
    def evaluator_done(self) -> str:
        return str(self.evaluator_dir / "metrics.json")

    def evaluator(self) -> str:
        """What `tokendrift score --evaluator` gets: a local folder or a Hugging Face name."""
        if "pretrain" in self.config["evaluator"]:
            return str(self.evaluator_dir / "model")
        return self.config["evaluator"]["name"]

    def evaluator_inputs(self) -> list[str]:
        """The pretrained evaluator's output (pretrain_evaluator), or nothing for a named one."""
        return [self.evaluator_done] if "pretrain" in self.config["evaluator"] else []

    def train_config(self, bb: str, rid: str, seed: int) -> dict:
        """The full job config of one training run (what `tokendrift train` receives)."""
        return self.run_config(bb, rid, seed, init=str(self.start_model(bb)))

    def train_dir(self, bb: str, rid: str, seed: int) -> Path:
        return self.root / "train" / bb / rid / f"seed{seed}"

    def checkpoint(self, bb: str, model: str, seed: int, step: int) -> Path:
        if model == "start":
            return self.start_model(bb)
        return self.train_dir(bb, model, seed) / "checkpoints" / f"step_{step:06d}"

    def unit_checkpoint(self, u: Unit) -> Path:
        return self.checkpoint(u.backbone, u.model, u.seed, u.step)

    def checkpoint_done(self, bb: str, model: str, seed: int) -> str:
        """The file whose existence says the model's checkpoints are complete (a job output)."""
        if model == "start":
            return str(self.start_done(bb))
        return str(self.train_dir(bb, model, seed) / "done.json")

    def unit_dir(self, kind: str, u: Unit) -> Path:
        return self.root / kind / u.backbone / u.model / f"seed{u.seed}" / f"step{u.step}"

    def sample_dir(self, u: Unit, temperature: float, nfe: int) -> Path:
        return self.unit_dir("samples", u) / f"T{temp_str(temperature)}_nfe{nfe}"

    def sample_dirs(self, u: Unit) -> list[Path]:
        """A unit's sample folders, one per cell."""
        return [self.sample_dir(u, t, n) for t, n in self.cells(u)]

    def sample_files(self, u: Unit) -> list[str]:
        """What says a unit's sample folders are complete: their meta.json, written last."""
        return [str(d / "meta.json") for d in self.sample_dirs(u)]

    def score_file(self, u: Unit, temperature: float, nfe: int) -> Path:
        return self.unit_dir("scores", u) / f"T{temp_str(temperature)}_nfe{nfe}.json"

    def nelbo_file(self, u: Unit) -> Path:
        return self.unit_dir("scores", u) / "nelbo.json"

    def score_files(self, units, nelbo: bool = True) -> list[str]:
        """The score file of every cell of ``units``, then (``nelbo``) their NELBO files."""
        files = [str(self.score_file(u, t, n)) for u in units for t, n in self.cells(u)]
        return files + ([str(self.nelbo_file(u)) for u in units] if nelbo else [])

    @cached_property
    def prepared(self) -> list[str]:
        """The data stage's output that text-source jobs read ([] for the synthetic language)."""
        src = self.config["source"]
        return [str(prepared_dir(src) / "meta.json")] if needs_preparation(src) else []

    def fetch_file(self, item: str) -> str:
        return str(self.root / "fetch" / f"{item}.json")

    @cached_property
    def manifest(self) -> list[str]:
        """The joined fetch manifest ([] when the study downloads nothing)."""
        return [str(self.root / "fetch" / "manifest.json")] if self.fetch_items else []

    @cached_property
    def entropy_rate_file(self) -> list[str]:
        """The synthetic source's entropy rate (its oracle Gen.-PPL floor), written by the
        entropy_rate job and read by the tables and figures ([] for a text source)."""
        return [str(self.root / "source" / "entropy_rate.json")] if self.source["kind"] == "synthetic" else []

    def table_outputs(self, table: str) -> list[str]:
        """Markdown, LaTeX, CSV, then the report's HTML rendering and the baseline gate's verdict."""
        return [str(self.root / "tables" / f"{table}.{ext}") for ext in ("md", "tex", "csv")] + [
            self.report_html(table),
            self.gate_file(table),
        ]

    def gate_file(self, table: str) -> str:
        """The baseline gate of a table (tokendrift.report.gate.baseline_gate; read by tracking)."""
        return str(self.root / "report" / f"{table}.gate.json")

    def report_html(self, name: str) -> str:
        """A table or figure rendered as HTML for Snakemake's report (``--report``)."""
        return str(self.root / "report" / f"{name}.html")

    def figure_file(self, name: str, ext: str) -> str:
        return str(self.root / "figures" / f"{name}.{ext}")

    def figure_outputs(self, name: str) -> list[str]:
        return [self.figure_file(name, ext) for ext in FIGURES[name].files]

    def probe_dir(self, bb: str) -> Path:
        return self.root / "probe" / bb

    def probe_file(self, bb: str, name: str) -> str:
        return str(self.probe_dir(bb) / name)

    def probe_outputs(self, bb: str) -> list[str]:
        return [self.probe_file(bb, f) for f in ("probe.json", "probe.png", "probe.pdf", "top3.md")]

    def probe_models(self, bb: str) -> dict[str, Path]:
        """label -> checkpoint probed: the Figure-2 models at the long step, first seed."""
        return {
            m: self.checkpoint(bb, m, self.seeds[0], 0 if m == "start" else self.long) for m in self.figure2.get(bb, [])
        }

    @property
    def probe_targets(self) -> list[str]:
        return [f for bb in self.backbones for f in self.probe_outputs(bb)]

    @property
    def tracking_file(self) -> str:
        """The MLflow import's summary (the track rule's output)."""
        return str(self.root / "tracking" / "imported.json")

    def all_outputs(self) -> list[str]:
        out = [f for t in self.tables for f in self.table_outputs(t)]
        out += [f for name in FIGURES for f in self.figure_outputs(name) + [self.report_html(name)]]
        return out + self.probe_targets

    def job_records(self) -> list[tuple]:
        """(job, its completion records[, the outputs to rerun it when they are not the records]) of
        every job of the grid: a training or pretraining run's done.json, an imported model's
        meta.json, the evaluator's metrics.json, the entropy rate, each sample folder's meta.json,
        each score and NELBO file, the probe's done.json."""
        jobs: list[tuple] = []
        for bb in self.backbones:
            rule = "pretrain_start" if "pretrain" in self.config["start"][bb] else "import_start"
            jobs.append((f"{rule} (backbone={bb})", [self.start_done(bb)]))
        if "pretrain" in self.config["evaluator"]:
            jobs.append(("pretrain_evaluator", [Path(self.evaluator_done)]))
        jobs += [("entropy_rate", [Path(f)]) for f in self.entropy_rate_file]
        for bb, rid in self.runs:
            for s in self.seeds:
                jobs.append(
                    (f"train (backbone={bb}, model={rid}, seed={s})", [self.train_dir(bb, rid, s) / "done.json"])
                )
        for u in self.units:
            if u.model == "start":
                kind, w = "start", f"backbone={u.backbone}, seed={u.seed}"
            else:
                kind, w = "run", f"backbone={u.backbone}, model={u.model}, seed={u.seed}, step={u.step}"
            jobs.append((f"sample_{kind} ({w})", [d / "meta.json" for d in self.sample_dirs(u)]))
            jobs.append(
                (f"score_{kind} ({w})", [*(self.score_file(u, t, n) for t, n in self.cells(u)), self.nelbo_file(u)])
            )
        for bb in self.backbones:
            jobs.append((f"probe (backbone={bb})", [self.probe_dir(bb) / "done.json"], self.probe_outputs(bb)))
        return jobs

    @property
    def records_cache(self) -> Path:
        """Digests already verified, by file size, mtime, ctime and inode (tokendrift.core.records.Verifier)."""
        return self.root / ".verified_digests.json"

    def verify_records(self, log=None) -> list[str]:
        """Check every job's record when Snakemake starts (tokendrift.core.records.verify_jobs) and mark the
        outputs of the jobs whose files do not match incomplete, so that Snakemake reruns exactly those
        jobs (and what depends on them). Returns those outputs."""
        from ..core.records import mark_incomplete, verify_jobs

        redo = verify_jobs(self.job_records(), self.records_cache, log)
        mark_incomplete(redo)
        return redo

    def log(self, rule: str, **fields) -> str:
        """The log of a rule (LOGS): a pattern of its wildcards, or filled with ``fields``."""
        pattern = LOGS[rule]
        return str(self.root / "logs" / (pattern.format(**fields) if fields else pattern))

    def log_file(self, job: str, *, bb: str = "", u: Unit | None = None, item: str = "") -> Path:
        """The log of one job (`tokendrift status`): ``start``/``probe`` (bb), ``evaluator``,
        ``prepare_data``, ``fetch`` (item), ``train``/``sample``/``score`` (u)."""
        bb = u.backbone if u else bb
        start = u is not None and u.model == "start"
        rule = {
            "start": "pretrain_start" if "pretrain" in self.config["start"].get(bb, {}) else "import_start",
            "evaluator": "pretrain_evaluator",
            "fetch": "fetch_item",
            "sample": "sample_start" if start else "sample_run",
            "score": "score_start" if start else "score_run",
        }.get(job, job)
        fields = {"backbone": bb, "item": item} | ({"model": u.model, "seed": u.seed, "step": u.step} if u else {})
        return Path(self.log(rule, **fields))


def add_grid_args(p) -> None:
    """The workflow config of a job that reads the whole grid: a file, or JSON (from the DAG)."""
    p.add_argument("config", nargs="?", help="workflow config file (workflow/config/*.yaml)")
    p.add_argument("--config-json", help="the workflow config as a JSON string (what the Snakemake rules pass)")
    p.add_argument("--schema", default="workflow/schemas/config.schema.yaml", help="workflow config schema")


def grid_from_args(args) -> Layout:
    """The layout of the workflow config a reporting job is given (``add_grid_args``)."""
    if bool(args.config) == bool(args.config_json):
        raise TokenDriftError("give a workflow config file or --config-json (exactly one)")
    if args.config_json:
        try:
            raw = json.loads(args.config_json)
        except json.JSONDecodeError as e:
            raise TokenDriftError(f"--config-json is not valid JSON: {e}") from None
    else:
        raw = configlib.load_file(args.config)
    return Layout(raw, args.schema)
