"""MLflow tracking with one writer: this import step reads the per-job result files (which
stay the source of truth) and logs them, so no job ever talks to MLflow and an MLflow outage
never fails a training job (SQLite has one writer; a tracking server works the same way when
the config names one; docs/orchestration.md).

Layout in the experiment (default ``tokendrift-<name>``, store ``sqlite:///<root>/mlflow.db``):
one parent run per table (tag ``table``; its tables and the figures as artifacts; each row's mean
over seeds as metrics ``gen_ppl/nfeN/<model>``, ...) with one
child run per row x seed (tags ``table``, ``backbone``, ``variant``, ``seed``; params = the
cell and its training options; metrics ``gen_ppl/nfeN``, ``entropy/nfeN``,
``oracle_gen_ppl/nfeN``, ``nelbo``; the first samples as an artifact), and one run per
training job (tag ``kind=train``) with its step curves. Each run carries the digest of the
files it came from: a rerun skips what is unchanged and replaces what changed.

    tokendrift track CONFIG            # import (idempotent)
    tokendrift compare TABLE CONFIG    # one table's ablations side by side, from MLflow
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from ..core import config as configlib
from ..core.records import check
from ..core.utils import TokenDriftError, atomic_write_json, read_json
from ..grid.layout import Layout, add_grid_args, grid_from_args
from ..grid.sheet import Unit
from .figures import FIGURES

KEY = "tokendrift.key"
DIGEST = "tokendrift.digest"
# The score file's numbers logged as MLflow metrics (per NFE): Gen.-PPL, entropy, oracle Gen.-PPL,
# MAUVE, and the exact bigram divergence of a synthetic source with its noise floor.
SCORE_METRICS = ("gen_ppl", "entropy", "oracle_gen_ppl", "mauve", "ngram_kl2", "ngram_kl2_floor")
SUMMARY = "tokendrift.summary_digest"  # digest of the score files behind a parent run's row means
ARTIFACTS = "tokendrift.artifacts_digest"  # ... and of its table and figure artifacts


def tracking_uri(g: Layout) -> str:
    return g.config["mlflow"]["tracking_uri"] or f"sqlite:///{Path(g.root).resolve()}/mlflow.db"


def _client(g: Layout):
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(g)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    name = g.config["mlflow"]["experiment"] or f"tokendrift-{g.config['name']}"
    try:
        exp = client.get_experiment_by_name(name)
        artifacts = (Path(g.root) / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
        exp_id = exp.experiment_id if exp else client.create_experiment(name, artifact_location=artifacts)
    except Exception as e:  # unreachable server, unwritable SQLite file, bad URI
        raise TokenDriftError(
            f"MLflow store {uri}: unreachable ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "the result files are intact, rerun `tokendrift track` when it is back"
        ) from None
    mlflow.set_tracking_uri(uri)
    return client, exp_id


def _digest(files) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(str(f).encode())
        h.update(Path(f).read_bytes() if Path(f).exists() else b"-")
    return h.hexdigest()[:16]


def provenance_tags(files) -> dict:
    """Tags naming what produced a result: the sha256 of the fetch manifest its job recorded
    (``none`` when the study downloads nothing) and the versions of torch, transformers and
    datasets, from the first result file of ``files`` that records them."""
    for f in files:
        if Path(f).exists():
            prov = read_json(f, "result file").get("provenance")
            if prov:
                v = prov.get("versions") or {}
                return {
                    "fetch_manifest_sha256": (prov.get("manifest") or {}).get("sha256", "none"),
                    **{f"version.{k}": v.get(k) for k in ("torch", "transformers", "datasets")},
                }
    return {}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


def train_options(g: Layout, bb: str, rid: str, seed: int) -> dict:
    """A run's full training config, defaults filled in (so every ablation's options compare)."""
    return configlib.validate("train", g.train_config(bb, rid, seed))


class Importer:
    def __init__(self, g: Layout):
        self.g = g
        self.client, self.exp = _client(g)
        self.existing = {}
        for run in self.client.search_runs([self.exp], max_results=50000):
            key = run.data.tags.get(KEY)
            if key:
                self.existing[key] = (run.info.run_id, run.data.tags.get(DIGEST))
        self.imported, self.skipped = [], 0

    def run(self, key: str, digest: str, *, name: str, tags: dict, parent: str | None = None):
        """An up-to-date run for ``key``: None when unchanged, else a fresh run id."""
        old = self.existing.get(key)
        if old and old[1] == digest:
            self.skipped += 1
            return None
        if old:
            self.client.delete_run(old[0])
        tags = {KEY: key, DIGEST: digest, **{k: str(v) for k, v in tags.items()}}
        if parent:
            tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(self.exp, tags=tags, run_name=name)
        self.existing[key] = (run.info.run_id, digest)
        self.imported.append(key)
        return run.info.run_id

    def log(self, run_id: str, params: dict, metrics: list[tuple[str, float, int]]):
        from mlflow.entities import Metric, Param

        for i in range(0, len(params), 100):  # MLflow's batch limits: 100 params, 1000 metrics
            self.client.log_batch(
                run_id, params=[Param(k, str(v)[:6000]) for k, v in list(params.items())[i : i + 100]]
            )
        ms = [Metric(k, float(v), 0, step) for k, v, step in metrics if v is not None]
        for i in range(0, len(ms), 1000):
            self.client.log_batch(run_id, metrics=ms[i : i + 1000])
        self.client.set_terminated(run_id)

    def parent(self, table: str) -> str:
        key = f"table/{table}"
        if key not in self.existing:
            run_id = self.run(
                key,
                "parent",
                name=table,
                tags={"table": table, "kind": "table", "backbone": self.g.tables[table]["backbone"]},
            )
            self.client.set_terminated(run_id)
        return self.existing[key][0]

    def summary(self, table: str):
        """The table on its parent run's page: each row's mean over its seeds per NFE (metrics
        ``gen_ppl/nfeN/<model>``, ``entropy/nfeN/<model>``, ``oracle_gen_ppl/nfeN/<model>``, ``mauve/nfeN/<model>``,
        ``ngram_kl2/nfeN/<model>``, ``nelbo/<model>``)."""
        g = self.g
        units = sorted(set(g.table_units(table)))
        files = [g.score_file(u, 1.0, n) for u in units for n in g.nfes] + [g.nelbo_file(u) for u in units]
        if not any(f.exists() for f in files):
            return
        digest = _digest(files)
        parent = self.parent(table)
        if self.client.get_run(parent).data.tags.get(SUMMARY) == digest:
            self.skipped += 1
            return
        values: dict[str, list[float]] = {}
        for u in units:
            for n in g.nfes:
                f = g.score_file(u, 1.0, n)
                if f.exists():
                    r = check(f, "its own record")
                    for m in SCORE_METRICS:
                        if r.get(m) is not None:
                            values.setdefault(f"{m}/nfe{n}/{u.model}", []).append(r[m])
            if g.nelbo_file(u).exists():
                values.setdefault(f"nelbo/{u.model}", []).append(check(g.nelbo_file(u), "its own record")["nelbo"])
        self.log(parent, {}, [(k, sum(v) / len(v), 0) for k, v in values.items()])
        self.client.set_tag(parent, SUMMARY, digest)

    def cell(self, table: str, u: Unit):
        g = self.g
        files = [g.score_file(u, t, n) for t, n in g.cells(u) if t == 1.0] + [g.nelbo_file(u)]
        if not any(f.exists() for f in files):
            return
        key = f"cell/{table}/{u.backbone}/{u.model}/seed{u.seed}/step{u.step}"
        run_id = self.run(
            key,
            _digest(files),
            name=f"{u.model} seed{u.seed}",
            parent=self.parent(table),
            tags={
                "table": table,
                "backbone": u.backbone,
                "variant": u.model,
                "seed": u.seed,
                "step": u.step,
                "kind": "cell",
                **provenance_tags(files),
            },
        )
        if run_id is None:
            return
        params = {"backbone": u.backbone, "model": u.model, "seed": u.seed, "step": u.step, "nfe": g.nfes}
        if u.model != "start":
            params.update(_flatten(train_options(g, u.backbone, u.model, u.seed), "train."))
        metrics = []
        for n in g.nfes:
            f = g.score_file(u, 1.0, n)
            if f.exists():
                r = check(f, "its own record")
                metrics += [(f"{m}/nfe{n}", r.get(m), 0) for m in SCORE_METRICS]
        if g.nelbo_file(u).exists():
            metrics.append(("nelbo", check(g.nelbo_file(u), "its own record").get("nelbo"), 0))
        self.log(run_id, params, metrics)
        text = g.sample_dir(u, 1.0, g.nfes[0]) / "text.jsonl"
        if text.exists():
            with tempfile.TemporaryDirectory() as tmp:
                head = Path(tmp) / f"samples_nfe{g.nfes[0]}.jsonl"
                head.write_text("".join(text.read_text().splitlines(keepends=True)[:16]))
                self.client.log_artifact(run_id, str(head))

    def training(self, bb: str, rid: str, seed: int):
        d = self.g.train_dir(bb, rid, seed)
        metrics_file = d / "metrics.jsonl"
        if not metrics_file.exists():
            return
        run_id = self.run(
            f"train/{bb}/{rid}/seed{seed}",
            _digest([metrics_file, d / "done.json"]),
            name=f"train {bb}/{rid} seed{seed}",
            tags={
                "kind": "train",
                "backbone": bb,
                "variant": rid,
                "seed": seed,
                "finished": (d / "done.json").exists(),
                **provenance_tags([d / "done.json"]),
            },
        )
        if run_id is None:
            return
        metrics = []
        for line in metrics_file.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut by a kill
            metrics += [
                (k.replace("=", "_"), v, rec["step"])
                for k, v in rec.items()
                if k != "step" and isinstance(v, (int, float))
            ]
        self.log(run_id, _flatten(train_options(self.g, bb, rid, seed)), metrics)

    def artifacts(self, table: str):
        files = [f for f in self.g.table_outputs(table) if Path(f).exists()]
        figs = [f for name in FIGURES for f in self.g.figure_outputs(name) if Path(f).exists()]
        if not files and not figs:
            return
        digest = _digest(files + figs)
        parent = self.parent(table)
        if self.client.get_run(parent).data.tags.get(ARTIFACTS) == digest:
            self.skipped += 1
            return
        gate = Path(self.g.gate_file(table))  # the baseline gate's verdict on the parent run (tag baseline_gate)
        for k, v in (read_json(gate, "gate file").get("mlflow_tags", {}) if gate.exists() else {}).items():
            self.client.set_tag(parent, k, str(v))
        for f in files:
            self.client.log_artifact(parent, f, "tables")
        for f in figs:
            self.client.log_artifact(parent, f, "figures")
        self.client.set_tag(parent, ARTIFACTS, digest)  # a tag, not a marker run: the children are the rows' seeds

    def probe(self, bb: str):
        files = [Path(f) for f in self.g.probe_outputs(bb)]
        if not files[0].exists():
            return
        run_id = self.run(f"probe/{bb}", _digest(files), name=f"probe {bb}", tags={"kind": "probe", "backbone": bb})
        if run_id is None:
            return
        check(files[0].parent / "done.json", "the probe's record")  # its four files, cut short or altered
        data = read_json(files[0], "probe file")
        metrics = [
            (f"{label}/{key}", r[key]["mean"][d - 1], d)
            for label, r in data.items()
            for key in ("top1", "entropy", "frequent_share")
            for d in range(1, r["span"] + 1)
        ]
        self.log(run_id, {"checkpoints": {k: v["checkpoint"] for k, v in data.items()}}, metrics)
        for f in files:
            if f.exists():
                self.client.log_artifact(run_id, str(f), "probe")


def import_results(g: Layout) -> dict:
    imp = Importer(g)
    for bb in g.backbones:
        imp.probe(bb)
    for table in g.tables:
        for u in sorted(set(g.table_units(table))):
            imp.cell(table, u)
        imp.summary(table)
        imp.artifacts(table)
    for bb, rid in g.runs:
        for seed in g.seeds:
            imp.training(bb, rid, seed)
    summary = {
        "tracking_uri": tracking_uri(g),
        "imported": imp.imported,
        "skipped": imp.skipped,
        "runs": len(imp.existing),
    }
    atomic_write_json(g.tracking_file, summary)
    return summary


def compare(g: Layout, table: str):
    """One table's rows side by side (mean over seeds per NFE), read back from MLflow."""
    import pandas as pd

    if table not in g.tables:
        raise TokenDriftError(f"table {table!r}: not one of {list(g.tables)}")
    client, exp = _client(g)
    runs = client.search_runs([exp], filter_string=f"tags.table = '{table}' and tags.kind = 'cell'", max_results=50000)
    if not runs:
        raise TokenDriftError(f"no results of {table} in MLflow ({tracking_uri(g)}): run `tokendrift track` first")
    rows = [{"variant": r.data.tags["variant"], "seed": int(r.data.tags["seed"]), **r.data.metrics} for r in runs]
    df = pd.DataFrame(rows)
    order = [r["model"] for r in g.tables[table]["rows"] if r.get("model")]
    cols = [
        c for n in g.nfes for c in (f"{m}/nfe{n}" for m in SCORE_METRICS if m != "ngram_kl2_floor") if c in df.columns
    ] + (["nelbo"] if "nelbo" in df.columns else [])
    mean = df.groupby("variant")[cols].mean()
    sd = df.groupby("variant")[cols].std()
    n = df.groupby("variant")["seed"].count().rename("n")
    out = mean.round(3).astype(str) + " ± " + sd.round(3).astype(str)
    return out.join(n).reindex([m for m in order if m in mean.index])


def run_track(args) -> int:
    s = import_results(grid_from_args(args))
    print(f"MLflow {s['tracking_uri']}: {len(s['imported'])} runs imported, {s['skipped']} unchanged")
    return 0


def run_compare(args) -> int:
    import pandas as pd

    with pd.option_context("display.width", 250, "display.max_columns", 50):
        print(compare(grid_from_args(args), args.table).to_string())
    return 0


def register(sub) -> None:
    p = sub.add_parser("track", help="import every result file into MLflow (the one writer; idempotent)")
    add_grid_args(p)
    p.set_defaults(func=run_track)
    q = sub.add_parser("compare", help="print one table's ablations side by side from MLflow")
    q.add_argument("table", help="a table of the config: table1 ... table6 or an own table's name")
    add_grid_args(q)
    q.set_defaults(func=run_compare)
