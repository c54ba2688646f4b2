"""Status of submitted jobs: result files first, then one batched scheduler query.

A finished submitit task leaves ``<id>_<task>_result.pkl`` (``("success", value)`` or
``("error", traceback)``) in the log folder; one listing of that folder per cycle settles
every job that finished normally, with no scheduler query. Jobs without a result file are
looked up with ONE scheduler query for all of them (``sacct -j id1,id2,...`` or one
``squeue``), at most once per ``query_interval`` seconds: submitit's own
SlurmInfoWatcher backs off up to minutes (docs/orchestration.md), so this module calls the
scheduler itself. A job the scheduler reports finished but that left no result file (cancel,
timeout, OOM, node failure) is reported failed once a later query still says so and
``grace_s`` has passed; nothing waits on ``Job.exception()`` and its 15 s timeout.
"""

import getpass
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from submitit.core.utils import JobPaths, pickle_load
from submitit.slurm.slurm import read_job_id

log = logging.getLogger("snakemake_executor_plugin_submitit")

# Every scheduler query made by this process (a benchmark reads it, or the debug log
# line "submitit scheduler query #N").
SCHEDULER_QUERIES = 0

# Slurm states in which a job may still produce its result.
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "RESV_DEL_HOLD",
        "COMPLETING",
        "CONFIGURING",
        "RESIZING",
        "SUSPENDED",
        "STOPPED",
        "SIGNALING",
        "STAGE_OUT",
        "UNKNOWN",
    }
)


def _run_text(argv: Sequence[str]) -> str:
    # own session: a Ctrl-C to Snakemake's process group must not kill the query
    return subprocess.run(
        list(argv),
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,
    ).stdout


def parse_sacct(text: str) -> dict[str, str]:
    """``sacct -X -n -P -o JobID,State`` output -> {job id: state}; array ranges
    ("12_[3-5%2]") are expanded, "CANCELLED by 0" becomes "CANCELLED"."""
    states: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0] or "." in parts[0]:
            continue
        state = parts[1].split()[0] if parts[1].split() else "UNKNOWN"
        try:
            ids = read_job_id(parts[0])
        except Exception:  # an id format we do not know: skip the line
            continue
        for split in ids:
            if len(split) >= 3:
                for k in range(int(split[1]), int(split[2]) + 1):
                    states[f"{split[0]}_{k}"] = state
            else:
                states["_".join(split[:2])] = state
    return states


class SlurmWatcher:
    """One scheduler call for many jobs. `run` (argv -> stdout) is the edge to Slurm."""

    def __init__(
        self,
        command: str = "sacct",
        run: Callable[[Sequence[str]], str] = _run_text,
        logger=log,
    ):
        if command not in ("sacct", "squeue"):
            raise ValueError(f"status_command must be sacct or squeue, got {command!r}")
        self.command = command
        self.calls = 0
        self._run = run
        self.log = logger

    def argv(self, job_ids: Iterable[str]) -> list[str]:
        if self.command == "sacct":
            mains = sorted({j.split("_")[0] for j in job_ids}, key=lambda s: (len(s), s))
            return ["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(mains)]
        return ["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"]

    def states(self, job_ids: Sequence[str]) -> dict[str, str] | None:
        """{id: state} for `job_ids` (one query); None if the query failed. With squeue,
        an id absent from the queue is reported as "GONE" (finished)."""
        global SCHEDULER_QUERIES
        if not job_ids:
            return {}
        argv = self.argv(job_ids)
        self.calls += 1
        SCHEDULER_QUERIES += 1
        self.log.debug(f"submitit scheduler query #{self.calls}: {argv[0]} ({len(job_ids)} jobs)")
        try:
            found = parse_sacct(self._run(argv))
        except (subprocess.SubprocessError, OSError) as e:
            if self.command == "sacct":
                # no accounting: squeue still tells which jobs have left the queue
                self.command = "squeue"
                self.log.warning(f"submitit: sacct failed ({e}); using squeue from now on")
            else:
                self.log.warning(f"submitit: squeue failed ({e}); job states unknown this cycle")
            return None
        if self.command == "squeue":
            return {j: found.get(j, "GONE") for j in job_ids}
        return {j: found[j] for j in job_ids if j in found}


class LocalWatcher:
    """States of submitit local jobs from their controller processes (no scheduler)."""

    def __init__(self) -> None:
        self.calls = 0
        self._jobs: dict[str, object] = {}

    def watch(self, job_id: str, job) -> None:
        self._jobs[job_id] = job

    def forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    def job(self, job_id: str):
        return self._jobs.get(job_id)

    def states(self, job_ids: Sequence[str]) -> dict[str, str]:
        self.calls += 1
        out = {}
        for j in job_ids:
            job = self._jobs.get(j)
            state = job.get_info().get("jobState") if job is not None else None
            out[j] = {
                "RUNNING": "RUNNING",
                "FINISHED": "COMPLETED",
                "INTERRUPTED": "CANCELLED",
            }.get(state, "GONE")
        return out


@dataclass
class Tracked:
    """One submitted submitit job as the status loop sees it (rank 0 decides)."""

    job_id: str
    folder: Path
    dead_since: float | None = None
    dead_query: int = -1

    @property
    def paths(self) -> JobPaths:
        return JobPaths(self.folder, job_id=self.job_id, task_id=0)


def _tail(path: Path, lines: int = 15) -> str:
    """Last lines of a task log, before submitit's own error traceback."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 32768))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    cut = text.rfind("submitit ERROR")
    if cut > 0:
        text = text[:cut]
    return "\n".join(text.rstrip().splitlines()[-lines:])


def failure_message(t: Tracked, reason: str) -> str:
    p = t.paths
    msg = f"submitit job {t.job_id}: {reason}\nlogs: {p.stdout} {p.stderr}\n"
    tail = _tail(p.stderr)
    if tail:
        msg += f"end of {p.stderr.name}:\n{tail}\n"
    return msg


class StatusPoller:
    """One status cycle for all active jobs: list the folder, at most one scheduler query."""

    def __init__(
        self,
        watcher,
        folder: Path,
        query_interval: float,
        grace_s: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.watcher = watcher
        self.folder = Path(folder)
        self.query_interval = float(query_interval)
        self.grace_s = float(grace_s)
        self.clock = clock
        self.queries = 0
        self._last_query = float("-inf")
        self._states: dict[str, str] = {}

    def _listing(self) -> set:
        try:
            # chmod refreshes NFS attribute caches before the listing (as submitit does)
            self.folder.chmod(self.folder.stat().st_mode)
        except OSError:
            pass
        try:
            return set(os.listdir(self.folder))
        except FileNotFoundError:
            return set()

    def cycle(self, tracked: Sequence[Tracked]) -> list[tuple[str, str]]:
        """(outcome, message) per tracked job; outcome is running, success or error."""
        names = self._listing()
        now = self.clock()
        waiting = [t for t in tracked if t.paths.result_pickle.name not in names]
        if waiting and now - self._last_query >= self.query_interval:
            states = self.watcher.states([t.job_id for t in waiting])
            self._last_query = now
            if states is not None:
                self.queries += 1
                for t in waiting:
                    self._states[t.job_id] = states.get(t.job_id, "UNKNOWN")
        out = []
        for t in tracked:
            if t.paths.result_pickle.name in names:
                out.append(self._from_result(t))
                continue
            state = self._states.get(t.job_id, "UNKNOWN")
            if state in ACTIVE_STATES:
                t.dead_since, t.dead_query = None, -1
                out.append(("running", state))
            elif t.dead_since is None:
                t.dead_since, t.dead_query = now, self.queries
                out.append(("running", state))
            elif self.queries > t.dead_query and now - t.dead_since >= self.grace_s:
                out.append(("error", failure_message(t, f"ended in state {state} without a result")))
            else:
                out.append(("running", state))
        return out

    def forget(self, job_id: str) -> None:
        self._states.pop(job_id, None)

    def _from_result(self, t: Tracked) -> tuple[str, str]:
        try:
            outcome, value = pickle_load(t.paths.result_pickle)
        except Exception as e:  # unreadable (still being copied on a slow filesystem)
            return ("running", f"result unreadable: {e}")
        if outcome == "success":
            return ("success", "")
        lines = str(value).strip().splitlines()
        return ("error", failure_message(t, "failed: " + (lines[-1] if lines else "unknown error")))
