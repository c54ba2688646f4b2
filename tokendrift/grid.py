"""The sheet of table cells: a validated workflow config expanded into the jobs of the paper's
grid (docs/grid.md), and the one place that names every output path.

A *model* of a backbone is ``start`` (the starting, "released" checkpoint) or the id of a
training run. An *evaluation unit* ``Unit(backbone, model, seed, step)`` is one checkpoint:
one sampling job draws its samples at every NFE (and, for the starting checkpoint, every
temperature of the sweep), one scoring job scores them and the checkpoint's held-out NELBO.
A checkpoint is shared by every table and figure that needs it, so each is evaluated once;
loading the model (and gpt2-large) once per checkpoint rather than once per NFE is what keeps
the embedded default inside its time budget and saves GPU allocations on a cluster. The
Snakemake rules (workflow/rules/*.smk) only ask this module for their paths, inputs, job
arguments and logs (the section "what each rule asks").

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

import copy
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import yaml

from .core import config as configlib
from .core.source import needs_preparation, normalize, prepared_dir
from .core.utils import TokenDriftError, code_digest, temp_str
from .report.figures import FIGURES  # the figures of every config: title, files, caption, drawing function

BACKBONES = ("mdlm", "duo")
PAPER_GRID_FILE = Path(__file__).parent / "paper_grid.yaml"


def paper_tables() -> dict:
    """The paper's grid and reported values (tokendrift/paper_grid.yaml)."""
    return yaml.safe_load(PAPER_GRID_FILE.read_text())


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


@dataclass(frozen=True)
class Run:
    backbone: str
    id: str
    steps: str  # "long" | "short"
    set: dict

    @classmethod
    def of(cls, entry: dict) -> "Run":
        """A run of a sheet entry (tokendrift/paper_grid.yaml or the config's ``runs``)."""
        return cls(entry["backbone"], entry["id"], entry["steps"], entry.get("set", {}))


@dataclass(frozen=True, order=True)
class Unit:
    """One checkpoint of one seed: sampled (at every NFE and temperature) by one job, scored by one."""

    backbone: str
    model: str
    seed: int
    step: int


# A rule's wildcards as a unit: the paths of its outputs and log are the unit's paths with them.
WILDCARDS = Unit("{backbone}", "{model}", "{seed}", "{step}")  # type: ignore[arg-type]
START_WILDCARDS = Unit("{backbone}", "start", "{seed}", 0)  # type: ignore[arg-type]

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


class Grid:
    def __init__(self, config: dict, schema: str | Path):
        self.schema = str(schema)
        self.raw = copy.deepcopy(config or {})  # as written: what the jobs that rebuild the grid get
        self.config = configlib.validate_with(Path(schema), config, what="workflow config")
        c = self.config
        self.root = Path(c["results"]) / c["name"]
        self.seeds = list(c["seeds"])
        self.nfes = sorted(c["sample"]["nfe"])
        self.long, self.short = c["steps"]["long"], c["steps"]["short"]
        if self.short > self.long:
            raise TokenDriftError(
                f"workflow config: steps.short ({self.short}) must not exceed steps.long ({self.long})"
            )
        self.runs, self.tables, self.figure2 = self._sheet(config or {})
        self.backbones = [b for b in BACKBONES if b in c["start"]]
        self._check()

    # ------------------------------------------------------------------ the sheet and its checks

    def _sheet(self, raw: dict) -> tuple[dict[tuple[str, str], Run], dict[str, dict], dict[str, list[str]]]:
        """The runs, tables and Figure-2 models of this config: the paper's grid (``paper_grid``,
        ``paper_tables``) and the config's own ``runs``, ``tables`` and ``figure2``. Runs that no
        table or figure reads are left out (an own run that none reads is an error)."""
        c, paper = self.config, paper_tables()
        if not c["paper_grid"] and "paper_tables" in raw:
            raise TokenDriftError("workflow config: paper_tables: the paper's tables need paper_grid: true")
        sheet: dict[tuple[str, str], Run] = {}
        for r in paper["runs"] if c["paper_grid"] else []:  # of the backbones this config starts from
            if r["backbone"] not in c["start"]:
                continue
            sheet[(r["backbone"], r["id"])] = Run.of(r)
        paper_keys = set(sheet)
        for i, r in enumerate(c["runs"]):
            key = (r["backbone"], r["id"])
            if key in sheet:
                raise TokenDriftError(
                    f"workflow config: runs[{i}]: "
                    + (
                        f"{key[0]}/{key[1]} is a run of the paper's grid (paper_grid: true); give yours another id"
                        if key in paper_keys
                        else f"duplicate run {key[0]}/{key[1]}"
                    )
                )
            sheet[key] = Run.of(r)
        tables = {t: paper["tables"][t] for t in (c["paper_tables"] if c["paper_grid"] else [])}
        for name, t in c["tables"].items():
            trained = [r["model"] for r in t["rows"] if r["model"] != "start"]
            if not trained:
                raise TokenDriftError(f"workflow config: tables.{name}.rows: needs a row that is not `start`")
            method = t.get("method", trained[0])
            if method not in trained:
                raise TokenDriftError(
                    f"workflow config: tables.{name}.method: {method!r} is not one of its trained rows {trained}"
                )
            tables[name] = {**t, "method": method, "rows": [{"label": r["model"], **r} for r in t["rows"]]}
        if c["figure2"] is not None:
            figure2 = c["figure2"]
            for bb, models in figure2.items():
                for m in models:
                    if m != "start" and (bb, m) not in sheet:
                        raise TokenDriftError(f"workflow config: figure2.{bb}: {m!r} is not a run of {bb}")
        elif c["paper_grid"]:  # the paper's curves, of the backbones this config has
            figure2 = {bb: [m for m in ms if m == "start" or (bb, m) in sheet] for bb, ms in paper["figure2"].items()}
        else:
            figure2 = {bb: ["start", *(rid for b, rid in sheet if b == bb)] for bb in BACKBONES}
        read = {(t["backbone"], r["model"]) for t in tables.values() for r in t["rows"] if "model" in r}
        read |= {(bb, m) for bb, ms in figure2.items() for m in ms}
        for i, r in enumerate(c["runs"]):
            if (r["backbone"], r["id"]) not in read:  # its options first: that error is the one to fix first
                configlib.validate(
                    "train", deep_merge(c["train"], r.get("set", {})), prefix=f"runs.{r['backbone']}/{r['id']}"
                )
                raise TokenDriftError(
                    f"workflow config: runs[{i}]: {r['backbone']}/{r['id']} is read by no table "
                    "and no figure (add it to a table's rows or to figure2)"
                )
        return {k: run for k, run in sheet.items() if k in read}, tables, figure2

    def _check(self) -> None:
        configlib.validate("train", self.config["train"], prefix="train")  # named as written, before any run's
        for (bb, rid), run in self.runs.items():
            if bb not in self.backbones:
                raise TokenDriftError(
                    f"workflow config: run {bb}/{rid}: backbone {bb!r} has no start checkpoint (start.{bb})"
                )
            cfg = self.train_config(bb, rid, self.seeds[0])
            configlib.validate("train", cfg, prefix=f"runs.{bb}/{rid}")
        for name, table in self.tables.items():
            bb = table["backbone"]
            if bb not in self.backbones:
                raise TokenDriftError(f"workflow config: tables: {name} needs backbone {bb!r} (start.{bb})")
            for row in table["rows"]:
                m = row.get("model")
                if m and m != "start":
                    run = self.runs.get((bb, m))
                    if run is None:
                        raise TokenDriftError(f"workflow config: tables: {name} needs run {bb}/{m}, absent from runs")
                    if self.run_steps(run) < self.table_step(name):
                        raise TokenDriftError(
                            f"workflow config: run {bb}/{m} trains {self.run_steps(run)} steps but "
                            f"{name} reads it at step {self.table_step(name)}"
                        )
        for s in self.config["steps"]["curve"]:
            if s > self.long:
                raise TokenDriftError(f"workflow config: steps.curve: {s} exceeds steps.long ({self.long})")
        self.source  # noqa: B018 (validated here, before any job starts)
        if "pretrain" in self.config["evaluator"]:
            configlib.validate("evaluator", self.evaluator_config(), prefix="evaluator.pretrain")
        for bb in self.backbones:
            pre = self.config["start"][bb].get("pretrain")
            if pre is not None:
                configlib.validate("train", self.pretrain_config(bb), prefix=f"start.{bb}.pretrain")

    # ------------------------------------------------------------------ jobs

    def run_steps(self, run: Run) -> int:
        return self.long if run.steps == "long" else self.short

    def table_step(self, table: str) -> int:
        at = self.tables[table]["at"]
        return self.long if at == "long" else self.short if at == "short" else at

    def pretrain_config(self, bb: str) -> dict:
        return deep_merge(self.config["start"][bb]["pretrain"], {"source": self.config["source"]})

    def pretrain_steps(self, bb: str) -> int:
        return configlib.validate("train", self.pretrain_config(bb))["steps"]

    def evaluator_config(self) -> dict:
        return deep_merge(self.config["evaluator"]["pretrain"], {"source": self.config["source"]})

    def train_config(self, bb: str, rid: str, seed: int) -> dict:
        """The full job config of one training run (what `tokendrift train` receives)."""
        run = self.runs[(bb, rid)]
        steps = self.run_steps(run)
        keep = sorted(s for s in self.model_steps(bb, rid) if 0 < s < steps)
        cfg = deep_merge(self.config["train"], run.set)
        return deep_merge(
            cfg, {"init": str(self.start_model(bb)), "seed": seed, "steps": steps, "checkpoint_steps": keep}
        )

    def model_steps(self, bb: str, model: str) -> set[int]:
        """Every checkpoint step of a model that some table or figure evaluates."""
        return {u.step for u in self.units if u.backbone == bb and u.model == model}

    @cached_property
    def code_digest(self) -> str:
        """Digest of the code that trains, samples and scores (a param of those jobs)."""
        return code_digest(reporting=False)

    @cached_property
    def report_digest(self) -> str:
        """Digest of all the package's code (a param of the tables, figures, probe and import)."""
        return code_digest()

    # ------------------------------------------------------------------ paths

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

    def temperatures(self, model: str) -> list[float]:
        """The starting checkpoint is sampled over the sweep; trained models at temperature 1."""
        return self.sweep() if model == "start" else [1.0]

    def cells(self, u: Unit) -> list[tuple[float, int]]:
        return [(t, n) for t in self.temperatures(u.model) for n in self.nfes]

    def sample_dir(self, u: Unit, temperature: float, nfe: int) -> Path:
        return self.unit_dir("samples", u) / f"T{temp_str(temperature)}_nfe{nfe}"

    def score_file(self, u: Unit, temperature: float, nfe: int) -> Path:
        return self.unit_dir("scores", u) / f"T{temp_str(temperature)}_nfe{nfe}.json"

    def nelbo_file(self, u: Unit) -> Path:
        return self.unit_dir("scores", u) / "nelbo.json"

    def unit(self, w) -> Unit:
        """The unit of a Snakemake job's wildcards (the start rules have no model/step wildcard)."""
        return Unit(w.backbone, getattr(w, "model", "start"), int(w.seed), int(getattr(w, "step", 0)))

    # ------------------------------------------------------------------ data stage and downloads

    @cached_property
    def source(self) -> dict:
        """The source config, validated and normalized (tokendrift.core.source.normalize)."""
        return normalize(self.config["source"])

    @cached_property
    def prepared(self) -> list[str]:
        """The data stage's output that text-source jobs read ([] for the synthetic language)."""
        src = self.config["source"]
        return [str(prepared_dir(src) / "meta.json")] if needs_preparation(src) else []

    @cached_property
    def fetch_items(self) -> dict[str, tuple[str, str]]:
        """item -> (what, spec) of `tokendrift fetch`: everything the study reads from outside."""
        c, items, src = self.config, {}, self.source
        if src["kind"] == "openwebtext":
            items["dataset"] = ("dataset", json.dumps(c["source"], sort_keys=True))
            items["tokenizer"] = ("tokenizer", src["tokenizer"])
        if "name" in c["evaluator"]:
            items["evaluator"] = ("evaluator", c["evaluator"]["name"])
        for bb in self.backbones:
            if "import" in c["start"][bb]:
                items[f"start_{bb}"] = ("checkpoint", c["start"][bb]["import"])
        return items

    def fetch_file(self, item: str) -> str:
        return str(self.root / "fetch" / f"{item}.json")

    @cached_property
    def manifest(self) -> list[str]:
        """The joined fetch manifest ([] when the study downloads nothing)."""
        return [str(self.root / "fetch" / "manifest.json")] if self.fetch_items else []

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

    @cached_property
    def entropy_rate_file(self) -> list[str]:
        """The synthetic source's entropy rate (its oracle Gen.-PPL floor), written by the
        entropy_rate job and read by the tables and figures ([] for a text source)."""
        return [str(self.root / "source" / "entropy_rate.json")] if self.source["kind"] == "synthetic" else []

    # ------------------------------------------------------------------ what the targets need

    def row_step(self, table: str, model: str) -> int:
        return 0 if model == "start" else self.table_step(table)

    def curve_steps(self) -> list[int]:
        """Steps of Figure 2: 0 (the start checkpoint), the curve steps, short and long."""
        return sorted({0, self.short, self.long, *self.config["steps"]["curve"]})

    def sweep(self) -> list[float]:
        return sorted({*map(float, self.config["sample"]["sweep"]), 1.0})

    def table_units(self, table: str) -> list[Unit]:
        """The rows' checkpoints and the starting checkpoint (its sweep is the matched-entropy control)."""
        t = self.tables[table]
        units = [
            Unit(t["backbone"], r["model"], s, self.row_step(table, r["model"]))
            for r in t["rows"]
            if "model" in r
            for s in self.seeds
        ]
        # once each: a table whose rows include the start checkpoint must not count its seeds twice
        return list(dict.fromkeys(units + [Unit(t["backbone"], "start", s, 0) for s in self.seeds]))

    def figure2_units(self) -> list[Unit]:
        return [
            Unit(bb, m, s, step)
            for bb in self.backbones
            for m in self.figure2.get(bb, [])
            for step in ([0] if m == "start" else self.curve_steps()[1:])
            for s in self.seeds
        ]

    @cached_property
    def units(self) -> list[Unit]:
        units = {u for t in self.tables for u in self.table_units(t)} | set(self.figure2_units())
        return sorted(units)

    def score_files(self, units, nelbo: bool = True) -> list[str]:
        """The score file of every cell of ``units``, then (``nelbo``) their NELBO files."""
        files = [str(self.score_file(u, t, n)) for u in units for t, n in self.cells(u)]
        return files + ([str(self.nelbo_file(u)) for u in units] if nelbo else [])

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

    def probe_outputs(self, bb: str) -> list[str]:
        return [self.probe_file(bb, f) for f in ("probe.json", "probe.png", "probe.pdf", "top3.md")]

    # ------------------------------------------------------------------ completion records (tokendrift.core.records)

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
        from .core.records import mark_incomplete, verify_jobs

        redo = verify_jobs(self.job_records(), self.records_cache, log)
        mark_incomplete(redo)
        return redo

    # ------------------------------------------------------------------ job logs (the rules' log: files)

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

    def summary(self) -> dict:
        """Counts of unique jobs, for the dry-run test and `tokendrift grid`."""
        return {
            "start": len(self.backbones),
            "evaluator": int("pretrain" in self.config["evaluator"]),
            "train": len(self.runs) * len(self.seeds),
            "sample": len(self.units),
            "score": len(self.units),
            "sample_sets": sum(len(self.cells(u)) for u in self.units),
        }

    # ------------------------------------------------------------------ what each rule asks (workflow/rules/*.smk)
    # A rule's outputs are the paths above at its wildcards; its inputs and its job's arguments are
    # these functions of the job's wildcards ``w``; the options of a job are its config section.

    def job_options(self, section: str, prefix: str = "") -> list[str]:
        """The flags of a job schema set to the config's section (tokendrift/schemas/<section>.schema.yaml)."""
        return configlib.option_args(section, self.config[section], prefix)

    @property
    def config_args(self) -> list[str]:
        """How the jobs that rebuild the grid (tables, figures, tracking) get this config."""
        return ["--config-json", json.dumps(self.raw), "--schema", self.schema]

    def fetch_args(self, w) -> list[str]:
        what, spec = self.fetch_items[w.item]
        return [what, spec, "--item", w.item]

    def source_args(self, w) -> list[str]:
        """The source config of the data-stage jobs (prepare_data, entropy_rate)."""
        return ["--source-json", json.dumps(self.config["source"])]

    def pretrain_args(self, w) -> list[str]:
        bb = w.backbone
        config = json.dumps(self.pretrain_config(bb))
        return [bb, "--config-json", config, "--out", str(self.pretrain_dir(bb)), "--discard-stale"]

    def import_args(self, w) -> list[str]:
        start = self.config["start"][w.backbone]
        model = ["--model-json", json.dumps(start["model"])] if "model" in start else []
        return [start["import"], str(self.import_dir(w.backbone)), "--diffusion", w.backbone, *model,
                "--source-json", json.dumps(self.config["source"])]  # fmt: skip

    def evaluator_args(self, w) -> list[str]:
        return ["evaluator", "--config-json", json.dumps(self.evaluator_config()), "--out", str(self.evaluator_dir)]

    def train_inputs(self, w) -> list[str]:
        return [str(self.start_done(w.backbone)), *self.job_inputs]

    def train_args(self, w) -> list[str]:
        job = self.train_config(w.backbone, w.model, int(w.seed))
        out = self.train_dir(w.backbone, w.model, int(w.seed))
        return ["--config-json", json.dumps(job), "--out", str(out), "--discard-stale"]

    def sample_dirs(self, u: Unit) -> list[Path]:
        """A unit's sample folders, one per cell."""
        return [self.sample_dir(u, t, n) for t, n in self.cells(u)]

    def sample_files(self, u: Unit) -> list[str]:
        """What says a unit's sample folders are complete: their meta.json, written last."""
        return [str(d / "meta.json") for d in self.sample_dirs(u)]

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

    def probe_file(self, bb: str, name: str) -> str:
        return str(self.probe_dir(bb) / name)

    def probe_inputs(self, w) -> list[str]:
        return [
            *(self.checkpoint_done(w.backbone, m, self.seeds[0]) for m in self.probe_models(w.backbone)),
            *self.job_inputs,
        ]

    def probe_args(self, w) -> list[str]:
        ckpts = [a for m, p in self.probe_models(w.backbone).items() for a in ("--checkpoint", f"{m}={p}")]
        return [*ckpts, "--out", str(self.probe_dir(w.backbone)), *self.job_options("probe")]

    def report_category(self, table: str) -> str:
        """A table's category in Snakemake's report: "Table 1" for the paper's, its name for one's own."""
        return f"Table {table[5:]}" if table[5:].isdigit() else table


def workflow_grid(config: dict, basedir: str, configfiles) -> Grid:
    """The grid of a Snakemake run: its config, or the embedded default (workflow/config/default.yaml,
    with any ``--config key=value`` on top) when no --configfile or profile names one, validated by
    workflow/schemas/config.schema.yaml."""
    base = Path(basedir)
    if not configfiles:
        config = deep_merge(configlib.load_file(base / "workflow" / "config" / "default.yaml"), config)
    return Grid(config, base / "workflow" / "schemas" / "config.schema.yaml")


def add_grid_args(p) -> None:
    """The workflow config of a job that reads the whole grid: a file, or JSON (from the DAG)."""
    p.add_argument("config", nargs="?", help="workflow config file (workflow/config/*.yaml)")
    p.add_argument("--config-json", help="the workflow config as a JSON string (what the Snakemake rules pass)")
    p.add_argument("--schema", default="workflow/schemas/config.schema.yaml", help="workflow config schema")


def grid_from_args(args) -> Grid:
    if bool(args.config) == bool(args.config_json):
        raise TokenDriftError("give a workflow config file or --config-json (exactly one)")
    if args.config_json:
        try:
            raw = json.loads(args.config_json)
        except json.JSONDecodeError as e:
            raise TokenDriftError(f"--config-json is not valid JSON: {e}") from None
    else:
        raw = configlib.load_file(args.config)
    return Grid(raw, args.schema)


def describe(args) -> int:
    grid = grid_from_args(args)
    print(json.dumps(grid.summary(), indent=2))
    if getattr(args, "cost", None):  # the GPU-hours of every stage, from a bench/gpu.py measurement
        from .report.cost import describe_cost

        print(describe_cost(grid, args.config or "--config-json", args.cost, args.profile_yaml))
    return 0


def register(sub) -> None:
    p = sub.add_parser("grid", help="validate a workflow config and count the unique jobs of its grid")
    add_grid_args(p)
    p.add_argument(
        "--cost",
        metavar="RESULTS.json",
        help="also print the GPU-hours of every stage and the total, from `python bench/gpu.py`'s "
        "bench/results/gpu.json (tokendrift/report/cost.py)",
    )
    p.add_argument(
        "--profile-yaml",
        default="profiles/slurm/profile.yaml",
        help="with --cost: the profile whose set-resources give the GPUs per job",
    )
    p.set_defaults(func=describe)
