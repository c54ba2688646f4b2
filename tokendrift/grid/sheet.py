"""The sheet: what a validated workflow config evaluates (docs/grid.md). No path is named here
(tokendrift.grid.layout names them, tokendrift.grid.rules turns both into Snakemake rules).

A *model* of a backbone is ``start`` (the starting, "released" checkpoint) or the id of a
training run. An *evaluation unit* ``Unit(backbone, model, seed, step)`` is one checkpoint:
one sampling job draws its samples at every NFE (and, for the starting checkpoint, every
temperature of the sweep), one scoring job scores them and the checkpoint's held-out NELBO.
A checkpoint is shared by every table and figure that needs it, so each is evaluated once;
loading the model (and gpt2-large) once per checkpoint rather than once per NFE is what keeps
the embedded default inside its time budget and saves GPU allocations on a cluster.

The paper's runs, tables, Figure-2 curves and reported values are package data
(tokendrift/grid/paper_grid.yaml); a config keeps, replaces or adds to them.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import yaml

from ..core import config as configlib
from ..core.config import deep_merge
from ..core.source import normalize
from ..core.utils import TokenDriftError

BACKBONES = ("mdlm", "duo")
PAPER_GRID_FILE = Path(__file__).parent / "paper_grid.yaml"


def paper_tables() -> dict:
    """The paper's grid and reported values (tokendrift/grid/paper_grid.yaml)."""
    return yaml.safe_load(PAPER_GRID_FILE.read_text())


@dataclass(frozen=True)
class Run:
    backbone: str
    id: str
    steps: str  # "long" | "short"
    set: dict

    @classmethod
    def of(cls, entry: dict) -> "Run":
        """A run of a sheet entry (tokendrift/grid/paper_grid.yaml or the config's ``runs``)."""
        return cls(entry["backbone"], entry["id"], entry["steps"], entry.get("set", {}))


@dataclass(frozen=True, order=True)
class Unit:
    """One checkpoint of one seed: sampled (at every NFE and temperature) by one job, scored by one."""

    backbone: str
    model: str
    seed: int
    step: int


class Sheet:
    """The runs, tables, Figure-2 curves and evaluation units of a workflow config, checked."""

    def __init__(self, config: dict, schema: str | Path):
        self.schema = str(schema)
        self.raw = copy.deepcopy(config or {})  # as written: what the jobs that rebuild the grid get
        self.config = configlib.validate_with(Path(schema), config, what="workflow config")
        c = self.config
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
            configlib.validate("train", self.run_config(bb, rid, self.seeds[0]), prefix=f"runs.{bb}/{rid}")
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

    def run_config(self, bb: str, rid: str, seed: int, init: str | None = None) -> dict:
        """The options of one training run: the config's ``train`` section, the run's ``set``, its
        starting checkpoint (``init``: the layout's path), seed, steps and the steps some table or
        figure reads."""
        run = self.runs[(bb, rid)]
        steps = self.run_steps(run)
        keep = sorted(s for s in self.model_steps(bb, rid) if 0 < s < steps)
        cfg = deep_merge(self.config["train"], run.set)
        job = {"init": init} if init is not None else {}
        return deep_merge(cfg, {**job, "seed": seed, "steps": steps, "checkpoint_steps": keep})

    def model_steps(self, bb: str, model: str) -> set[int]:
        """Every checkpoint step of a model that some table or figure evaluates."""
        return {u.step for u in self.units if u.backbone == bb and u.model == model}

    def temperatures(self, model: str) -> list[float]:
        """The starting checkpoint is sampled over the sweep; trained models at temperature 1."""
        return self.sweep() if model == "start" else [1.0]

    def cells(self, u: Unit) -> list[tuple[float, int]]:
        return [(t, n) for t in self.temperatures(u.model) for n in self.nfes]

    @cached_property
    def source(self) -> dict:
        """The source config, validated and normalized (tokendrift.jobs.prepare.normalize)."""
        return normalize(self.config["source"])

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
