"""Single-task local jobs as child processes of Snakemake (no submitit controller and task).

Through submitit's LocalExecutor, a local job is two Python processes around its command:
submitit's controller (``submitit.local._local``) and its task (``submitit.core._submit``, which
unpickles a ``jobs.ShellCommand``). Each imports submitit, and the pair costs a job about 0.5
CPU-seconds and 0.6 s of its slot: on 2 cores, a tenth of the embedded default's wall time
(BENCHMARKS.md, section 5). A job of ONE task on ``--submitit-cluster local`` therefore runs its
command directly, with what the controller and task gave it:

- the command in its own session (``/bin/sh -c``, the whole process group signalled as one), its
  environment with ``SUBMITIT_EXECUTOR=local`` and ``CUDA_VISIBLE_DEVICES`` set to the requested
  GPUs (none: empty), as submitit's controller sets them; standard output and error appended to
  the files submitit would write (``<id>_0_log.out``, ``<id>_0_log.err``; the id is the PID);
- the time limit: at ``timeout - signal_delay`` (the moment submitit's controller sends USR2) the
  command's group gets SIGTERM and, ``term_grace_s`` later, SIGKILL; a job with ``requeue=1``
  then runs the same command line again (at most ``max_requeues`` times), any other fails;
- what the command leaves in its group when it ends is stopped (SIGTERM, SIGKILL after
  ``jobs.LEFTOVER_GRACE_S``), without holding up the job's success;
- the driver's liveness: ONE watchdog process per run (``WATCHDOG``, in its own session) reads
  the process groups of the running jobs from a pipe that only Snakemake holds open. When
  Snakemake dies, even by ``kill -9``, the pipe ends and the watchdog stops those groups.

Jobs of several tasks (ranks) still go through submitit's LocalExecutor (``jobs.ShellCommand``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from submitit.core.utils import JobPaths

from .jobs import LEFTOVER_GRACE_S, group_alive, signal_group

# The watchdog: "+PGID" / "-PGID" lines register and release a job's process group; at the end of
# its input (Snakemake exited or was killed), the groups still registered get SIGTERM, then
# SIGKILL after the grace period in argv[1].
WATCHDOG = r"""
import os, signal, sys, time
groups = set()
for line in sys.stdin:
    if line[:1] in "+-" and line[1:].strip().isdigit():
        (groups.add if line[0] == "+" else groups.discard)(int(line[1:]))
def signal_all(sig):
    for g in list(groups):
        try:
            os.killpg(g, sig)
        except OSError:
            groups.discard(g)
signal_all(signal.SIGTERM)
end = time.monotonic() + float(sys.argv[1])
while groups and time.monotonic() < end:
    time.sleep(0.1)
    signal_all(0)
signal_all(signal.SIGKILL)
"""


def retire_stale_files(folder: Path, job_id: str) -> None:
    """A local job id is a PID: rename the result and logs of an earlier job of this run with the
    same id, so that the new job is not mistaken for it (nor its log appended to that one's)."""
    stamp = uuid.uuid4().hex[:6]
    for p in Path(folder).glob(f"{job_id}_*_*"):
        if p.name.endswith(("_result.pkl", "_log.out", "_log.err")):
            p.rename(p.with_name(f"old-{stamp}-{p.name}"))


@dataclass
class LocalJob:
    """One job's command and its current run."""

    command: str
    cwd: str
    env: dict
    paths: JobPaths
    signal_at: float  # monotonic time of the time limit's signal
    requeues_left: int  # runs still allowed after a time limit (0: the job fails)
    limit_s: float
    proc: subprocess.Popen | None = None
    kill_at: float | None = None  # the time limit's SIGTERM was sent; SIGKILL then
    runs: int = 0


class LocalRunner:
    """Starts, watches and stops the single-task local jobs of one Snakemake run."""

    def __init__(self, folder: Path, term_grace_s: float, max_requeues: int) -> None:
        self.folder = Path(folder)
        self.term_grace_s = float(term_grace_s)
        self.max_requeues = int(max_requeues)
        self.jobs: dict[str, LocalJob] = {}
        self._leftovers: dict[int, float] = {}  # process group -> when to SIGKILL it
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", WATCHDOG, str(LEFTOVER_GRACE_S)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to Snakemake's group must not end it
            text=True,
        )

    def _tell(self, line: str) -> None:
        try:
            self._watchdog.stdin.write(line + "\n")
            self._watchdog.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass

    def start(
        self,
        command: str,
        cwd: str,
        timeout_min: float,
        signal_delay_s: float,
        gpus_per_node: int = 0,
        requeue: bool = False,
    ) -> str:
        """Start ``command``; its job id (the PID of its first run)."""
        env = dict(os.environ, SUBMITIT_EXECUTOR="local", CUDA_VISIBLE_DEVICES=",".join(map(str, range(gpus_per_node))))
        limit_s = 60.0 * float(timeout_min)
        job = LocalJob(
            command=command,
            cwd=cwd,
            env=env,
            paths=JobPaths(self.folder, job_id="starting", task_id=0),
            signal_at=time.monotonic() + max(0.0, limit_s - float(signal_delay_s)),
            requeues_left=self.max_requeues if requeue else 0,
            limit_s=limit_s,
        )
        for f in (job.paths.stdout, job.paths.stderr):  # left by a start that failed
            f.unlink(missing_ok=True)
        self._launch(job)
        job_id = str(job.proc.pid)
        paths = JobPaths(self.folder, job_id=job_id, task_id=0)
        retire_stale_files(self.folder, job_id)
        for old, new in ((job.paths.stdout, paths.stdout), (job.paths.stderr, paths.stderr)):
            old.rename(new)  # the open files follow
        job.paths = paths
        self.jobs[job_id] = job
        return job_id

    def _launch(self, job: LocalJob) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(job.paths.stdout, "ab") as out, open(job.paths.stderr, "ab") as err:
            job.proc = subprocess.Popen(
                ["/bin/sh", "-c", job.command],
                cwd=job.cwd,
                env=job.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        job.runs += 1
        job.kill_at = None
        self._tell(f"+{job.proc.pid}")

    def poll(self, job_id: str) -> tuple[str, str]:
        """("running" | "success" | "error", reason) of a started job."""
        self._stop_leftovers()
        job = self.jobs[job_id]
        now = time.monotonic()
        rc = job.proc.poll()
        if rc is None:
            if job.kill_at is None and now >= job.signal_at:
                signal_group(job.proc.pid, signal.SIGTERM)
                job.kill_at = now + self.term_grace_s
            elif job.kill_at is not None and now >= job.kill_at:
                signal_group(job.proc.pid, signal.SIGKILL)
            return ("running", "")
        self._ended(job.proc.pid)
        if job.kill_at is not None:  # stopped at its time limit
            if job.requeues_left > 0:
                job.requeues_left -= 1
                job.signal_at = now + job.limit_s  # a requeued run gets the whole limit again
                self._launch(job)
                return ("running", "")
            del self.jobs[job_id]
            return ("error", f"timed out after {job.limit_s / 60:g} min (run {job.runs}; no requeue left)")
        del self.jobs[job_id]
        if rc != 0:
            return ("error", f"command exited with status {rc}")
        return ("success", "")

    def _ended(self, pgid: int) -> None:
        """The command ``pgid`` ended: stop what it left in its group, in the background."""
        if group_alive(pgid):
            signal_group(pgid, signal.SIGTERM)
            self._leftovers[pgid] = time.monotonic() + LEFTOVER_GRACE_S
        else:
            self._tell(f"-{pgid}")

    def _stop_leftovers(self) -> None:
        now = time.monotonic()
        for pgid, kill_at in list(self._leftovers.items()):
            if not group_alive(pgid):
                del self._leftovers[pgid]
                self._tell(f"-{pgid}")
            elif now >= kill_at:
                signal_group(pgid, signal.SIGKILL)

    def cancel(self, job_ids: list[str], timeout_s: float = 3.0) -> None:
        """Stop these jobs: SIGTERM to their groups, SIGKILL to what is left after ``timeout_s``."""
        groups = [self.jobs.pop(j).proc.pid for j in job_ids if j in self.jobs]
        for g in groups:
            signal_group(g, signal.SIGTERM)
        end = time.monotonic() + timeout_s
        while any(map(group_alive, groups)) and time.monotonic() < end:
            time.sleep(0.1)
        for g in groups:
            signal_group(g, signal.SIGKILL)
            self._tell(f"-{g}")

    def close(self) -> None:
        """The run ended: the watchdog stops what is still registered (nothing, normally) and exits."""
        try:
            self._watchdog.stdin.close()
        except OSError:
            pass
