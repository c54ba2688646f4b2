"""A study's status in one command: per table and row, which seeds are done, failed (with the
log to read), running or missing, then the one command that reruns what is missing.

    tokendrift status CONFIG [--directory D] [--profile P]

It reads only result files, Snakemake's own records in ``D/.snakemake`` and the drivers' records
(never runs Snakemake; it updates the cache of verified digests); every path comes from
tokendrift.grid.layout.Layout. The rules, per job:

- **done**: every output exists, none is marked incomplete, and each completion record matches
  the files it lists (tokendrift.core.records). A damaged one makes its job **failed**, naming the file:
  the next Snakemake reruns that job.
- **running**: an output is marked incomplete (``.snakemake/incomplete/<urlsafe base64 of its
  path>``, written when Snakemake starts or submits the job, removed when it ends: a job queued
  on Slurm counts as running) and either Snakemake holds the working directory (a lock in
  ``.snakemake/locks/``) or the job's log changed in the last ``--recent`` seconds (a cluster job
  that outlived a killed Snakemake). A lock left by a killed driver does not count, nor a recent
  log when that driver's jobs stopped with it (local jobs): "driver gone since ..." is printed,
  with the commands that resume.
- **failed**: neither done nor running, and its log exists: it started and ended without its
  outputs (an error, a kill, an interrupted Snakemake). Its log is named.
- **missing**: none of these: it never started (or waits for another job).

A row's seed is one checkpoint (a sampling and a scoring job, after its training job and the
shared ones: downloads, data, starting checkpoint, evaluator). It is done when its scores are;
else running when one of its jobs runs; else failed when the first unfinished job of its chain
failed (that job's log is shown); else missing.

The rerun command is ``snakemake all_tables --configfile CONFIG --rerun-triggers mtime``: with
the workflow profile's ``keep-going`` and ``rerun-incomplete`` it redoes what is missing, failed
or interrupted and what depends on it (the tables, figures and MLflow import), and
``--rerun-triggers mtime`` makes an existing result count as done, as it does here.
"""

from __future__ import annotations

import base64
import os
import shlex
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..core.records import Verifier
from ..grid.layout import Layout, add_grid_args, grid_from_args
from ..grid.sheet import Unit

STATES = ("done", "failed", "running", "missing")

# --------------------------------------------------------------------------- the driver's liveness
# Each Snakemake that runs jobs here (not a dry run, not the Snakemake of one job) records itself
# in .snakemake/tokendrift/drivers/<host>-<pid>.json when it starts (the workflow's onstart) and
# touches that file every HEARTBEAT_S seconds; it removes it when it ends (onsuccess, onerror). A
# record left behind is a driver that was killed: on its own host, its PID is gone (or reused by a
# process started later); on another host, its heartbeat is older than STALE_S.
HEARTBEAT_S = 10.0
STALE_S = 6 * HEARTBEAT_S


def drivers_dir(workdir: str | Path = ".") -> Path:
    return Path(workdir) / ".snakemake" / "tokendrift" / "drivers"


def stops_jobs(workflow) -> bool:
    """Whether the jobs of this Snakemake stop when it dies: the project's submitit executor running
    local processes (its watchdog, snakemake_executor_plugin_submitit.jobs). Snakemake's own local
    executor leaves its jobs running, and cluster jobs run on."""
    cluster = getattr(workflow.executor_settings, "cluster", None)
    if cluster is None or workflow.local_exec:
        return False
    from snakemake_executor_plugin_submitit import resolve_cluster

    return resolve_cluster(cluster) == "local"


def record_driver(workdir: str | Path = ".", stops: bool = False) -> Path:
    """Record this process as the driver of the runs in ``workdir`` and keep its heartbeat (a daemon
    thread that dies with it); the records of drivers gone before it are removed. ``stops``: its
    jobs stop when it dies (``stops_jobs``)."""
    import socket
    import threading

    import psutil

    from ..core.utils import atomic_write_json

    for old in read_drivers(workdir):
        if not old["alive"]:
            Path(old["file"]).unlink(missing_ok=True)
    me = psutil.Process()
    path = drivers_dir(workdir) / f"{socket.gethostname()}-{me.pid}.json"
    atomic_write_json(
        path,
        {
            "pid": me.pid,
            "host": socket.gethostname(),
            "create_time": me.create_time(),
            "started": time.time(),
            "stops_jobs": stops,
        },
    )

    def beat():
        while True:
            time.sleep(HEARTBEAT_S)
            try:
                os.utime(path)
            except FileNotFoundError:
                return  # the run ended (end_driver)

    threading.Thread(target=beat, name="tokendrift-heartbeat", daemon=True).start()
    return path


def end_driver(workdir: str | Path = ".") -> None:
    """Remove this process's driver record (the run ended, successfully or not)."""
    import socket

    (drivers_dir(workdir) / f"{socket.gethostname()}-{os.getpid()}.json").unlink(missing_ok=True)


def read_drivers(workdir: str | Path = ".", now: float | None = None) -> list[dict]:
    """The driver records of ``workdir``, each with ``alive`` and ``last_seen`` (its last heartbeat)."""
    import json
    import socket

    import psutil

    now = time.time() if now is None else now
    out = []
    d = drivers_dir(workdir)
    for f in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            rec = json.loads(f.read_text())
            last = f.stat().st_mtime
        except (OSError, ValueError):
            continue
        if rec.get("host") == socket.gethostname():
            try:
                alive = abs(psutil.Process(rec["pid"]).create_time() - rec["create_time"]) < 1.0
            except (psutil.Error, KeyError, TypeError):
                alive = False
        else:
            alive = now - last < STALE_S
        out.append({**rec, "alive": alive, "last_seen": last, "file": str(f)})
    return out


@dataclass(frozen=True)
class Job:
    name: str
    outputs: tuple[Path, ...]
    log: Path


class Snapshot:
    """What the working directory says, read once: Snakemake's incomplete markers and locks."""

    def __init__(
        self, workdir: str | Path = ".", recent: float = 600.0, now: float | None = None, records=(), cache=None
    ):
        self.workdir = Path(workdir)
        # outputs that are completion records (tokendrift.core.records), checked before a job counts as done
        self.records = {os.path.normpath(str(r)) for r in records}
        self.verifier = Verifier(self.path(Path(cache)) if cache else None)
        self.damaged: dict[Job, str] = {}
        self.recent = recent
        self.now = time.time() if now is None else now
        meta = self.workdir / ".snakemake"
        self.incomplete = set(self._markers(meta / "incomplete"))
        locks = meta / "locks"
        self.drivers = read_drivers(self.workdir, self.now)
        self.gone = [d for d in self.drivers if not d["alive"]]
        alive = any(d["alive"] for d in self.drivers)
        # a lock with only dead drivers recorded is stale (left by a killed Snakemake)
        self.locked = (
            locks.is_dir() and any(p.name.endswith(".lock") for p in locks.iterdir()) and (alive or not self.gone)
        )
        # jobs of a killed driver that ran on this host were stopped with it (the executor's watchdog)
        self.interrupted = bool(self.gone) and not alive and all(d.get("stops_jobs") for d in self.gone)
        self.gone = [] if alive else self.gone
        self._cache: dict[Job, str] = {}

    @staticmethod
    def _markers(root: Path):
        """Output paths of the incomplete markers (long names are split into '@'-prefixed folders)."""
        if not root.is_dir():
            return
        for d, _, files in os.walk(root):
            parts = [p[1:] for p in Path(d).relative_to(root).parts]
            for f in files:
                if f == "migration_underway":
                    continue
                try:
                    yield os.path.normpath(base64.urlsafe_b64decode("".join(parts) + f).decode())
                except (ValueError, UnicodeDecodeError):
                    continue

    def path(self, p: Path) -> Path:
        return p if p.is_absolute() else self.workdir / p

    def state(self, job: Job) -> str:
        if job not in self._cache:
            self._cache[job] = self._state(job)
        return self._cache[job]

    def _state(self, job: Job) -> str:
        marked = any(os.path.normpath(str(o)) in self.incomplete for o in job.outputs)
        if not marked and all(self.path(o).exists() for o in job.outputs):
            bad = [
                (f, why)
                for o in job.outputs
                if os.path.normpath(str(o)) in self.records
                for f, why in self.verifier.problems(self.path(o))
            ]
            if not bad:
                return "done"
            f = os.path.relpath(bad[0][0], self.workdir)  # as the workflow names it
            self.damaged[job] = f"{f}: {bad[0][1]}"  # the next snakemake reruns it
            return "failed"
        try:
            log_mtime = self.path(job.log).stat().st_mtime
        except FileNotFoundError:
            log_mtime = None
        recent = log_mtime is not None and self.now - log_mtime < self.recent
        if marked and (self.locked or (recent and not self.interrupted)):
            return "running"
        return "failed" if log_mtime is not None else "missing"


def shared_jobs(g: Layout, bb: str) -> list[Job]:
    """The jobs every checkpoint of backbone bb waits for, in order."""
    jobs = [
        Job(f"fetch {item}", (Path(g.fetch_file(item)),), g.log_file("fetch", item=item))
        for item in getattr(g, "fetch_items", {})
    ]
    if getattr(g, "prepared", []):
        jobs.append(Job("prepare_data", tuple(map(Path, g.prepared)), g.log_file("prepare_data")))
    jobs.append(Job(f"start {bb}", (g.start_done(bb),), g.log_file("start", bb=bb)))
    return jobs


def chain(g: Layout, u: Unit, shared: list[Job] | None = None) -> list[Job]:
    """Every job one checkpoint's scores depend on, upstream first."""
    jobs = list(shared if shared is not None else shared_jobs(g, u.backbone))
    if u.model != "start":
        jobs.append(Job("train", (Path(g.checkpoint_done(u.backbone, u.model, u.seed)),), g.log_file("train", u=u)))
    jobs.append(
        Job("sample", tuple(g.sample_dir(u, t, n) / "meta.json" for t, n in g.cells(u)), g.log_file("sample", u=u))
    )
    if g.evaluator_inputs():
        jobs.append(Job("evaluator", tuple(map(Path, g.evaluator_inputs())), g.log_file("evaluator")))
    jobs.append(
        Job("score", tuple(g.score_file(u, t, n) for t, n in g.cells(u)) + (g.nelbo_file(u),), g.log_file("score", u=u))
    )
    return jobs


def unit_status(g: Layout, snap: Snapshot, u: Unit, shared: list[Job] | None = None) -> dict:
    """{"state", "job" (the job that decides it), "log" (for failed)} of one checkpoint."""
    jobs = chain(g, u, shared)
    states = [snap.state(j) for j in jobs]
    for j in jobs:  # a damaged output anywhere in the chain: that job and what follows rerun
        if j in snap.damaged:
            return {"state": "failed", "job": j.name, "damaged": snap.damaged[j]}
    if states[-1] == "done":
        return {"state": "done"}
    for j, s in zip(jobs, states):
        if s == "running":
            return {"state": "running", "job": j.name}
    j, s = next((j, s) for j, s in zip(jobs, states) if s != "done")
    if s == "failed":
        return {"state": "failed", "job": j.name, "log": str(j.log)}
    return {"state": "missing", "job": j.name}


def sections(g: Layout) -> list[tuple[str, list[tuple[str, list[Unit]]]]]:
    """(section, [(row label, its units over seeds)]): the tables' rows, then Figure 2's curves."""
    out = []
    for name, t in g.tables.items():
        rows, step = [], g.table_step(name)
        for r in t["rows"]:
            if "model" in r:
                rows.append(
                    (r["model"], [Unit(t["backbone"], r["model"], s, g.row_step(name, r["model"])) for s in g.seeds])
                )
        out.append((f"{name} ({t['backbone']}, step {step})", rows))
    curves = {}
    for u in g.figure2_units():
        curves.setdefault(f"{u.backbone} {u.model} step {u.step}", []).append(u)
    out.append(("figure2 (Gen.-PPL against step)", list(curves.items())))
    return out


def study_status(g: Layout, workdir: str | Path = ".", recent: float = 600.0, now: float | None = None) -> dict:
    records = [r for _, rs, *_ in g.job_records() for r in rs]
    snap = Snapshot(workdir, recent, now, records, g.records_cache)
    shared = {bb: shared_jobs(g, bb) for bb in g.backbones}
    units = {u: unit_status(g, snap, u, shared[u.backbone]) for u in g.units}
    outputs = [Path(f) for f in g.all_outputs()] + [Path(g.tracking_file)]
    st = {
        "units": units,
        "counts": Counter(s["state"] for s in units.values()),
        "locked": snap.locked,
        "drivers_gone": snap.gone,
        "outputs_missing": [str(f) for f in outputs if not snap.path(f).exists()],
        "sections": sections(g),
        "damaged": [(j.name, why) for j, why in snap.damaged.items()],
    }
    snap.verifier.save()
    return st


def rerun_command(config: str, directory: str | None, profile: str | None) -> str:
    cmd = [
        "snakemake",
        *(["--profile", profile] if profile else []),
        "all_tables",
        "--configfile",
        config,
        "--rerun-triggers",
        "mtime",
    ]
    if directory not in (None, "."):
        cmd += ["--directory", directory]
    return shlex.join(cmd)


def render(st: dict, config: str, directory: str | None = None, profile: str | None = None) -> str:
    lines = []
    for title, rows in st["sections"]:
        lines.append(title)
        width = max(len(label) for label, _ in rows) if rows else 0
        for label, units in rows:
            by = {s: [] for s in STATES}
            for u in units:
                s = st["units"][u]
                by[s["state"]].append((u.seed, s))
            parts = []
            if by["done"]:
                parts.append("done " + " ".join(str(k) for k, _ in by["done"]))
            for k, s in by["failed"]:
                parts.append(f"FAILED {k} ({s['job']}: {s.get('log') or 'damaged ' + s['damaged']})")
            if by["running"]:
                parts.append("running " + ", ".join(f"{k} ({s['job']})" for k, s in by["running"]))
            if by["missing"]:
                parts.append("missing " + ", ".join(f"{k} ({s['job']})" for k, s in by["missing"]))
            lines.append(f"  {label:<{width}}  seeds " + "; ".join(parts))
    c = st["counts"]
    lines.append("")
    lines.append(
        f"{len(st['units'])} checkpoints: "
        + ", ".join(f"{c.get(s, 0)} {s}" for s in STATES)
        + f"; {len(st['outputs_missing'])} table/figure/probe/MLflow outputs missing"
    )
    for d in st.get("drivers_gone", []):
        lines.append(
            f"driver gone since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(d['last_seen']))} "
            f"(last heartbeat): Snakemake pid {d['pid']} on {d['host']}, started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(d['started']))}, was killed; "
            + (
                "its jobs were stopped with it"
                if d.get("stops_jobs")
                else "its jobs may still run (cluster jobs, or orphans of Snakemake's own executor)"
            )
        )
    todo = c.get("failed", 0) + c.get("missing", 0) + c.get("running", 0)
    if not todo and not st["outputs_missing"]:
        lines.append("nothing to rerun")
        return "\n".join(lines)
    cmd = rerun_command(config, directory, profile)
    if st.get("drivers_gone") and not st["locked"]:
        unlock = [x for x in shlex.split(cmd) if x != "all_tables"]
        lines.append("resume: release its lock, then rerun what it left unfinished (and what depends on it):")
        lines.append(f"  {shlex.join(unlock[:1] + ['--unlock'] + unlock[1:])}")
    elif c.get("running", 0) or st["locked"]:
        lines.append(
            "Snakemake is still running here: when it ends (or after `snakemake --unlock` if it was "
            "killed), rerun what is missing with"
        )
    else:
        lines.append("rerun what is missing, failed or interrupted (and what depends on it) with")
    lines.append(f"  {cmd}")
    return "\n".join(lines)


def run_status(args) -> int:
    g = grid_from_args(args)
    st = study_status(g, args.directory, args.recent)
    config = args.config or "CONFIG"
    print(render(st, config, args.directory, args.profile))
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "status",
        help="which seeds of each table row are done, failed, running or missing "
        "(reads result files and .snakemake/ only)",
    )
    add_grid_args(p)
    p.add_argument("--directory", default=".", help="the folder Snakemake runs in (its --directory)")
    p.add_argument("--profile", help="the profile to name in the rerun command (as given to snakemake --profile)")
    p.add_argument(
        "--recent",
        type=float,
        default=600.0,
        help="seconds: a job marked incomplete counts as running while its log changed this recently, "
        "even when no Snakemake holds the folder",
    )
    p.set_defaults(func=run_status)
