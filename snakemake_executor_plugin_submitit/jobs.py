"""What a submitit task runs: one Snakemake job's command line.

``ShellCommand`` runs ``/bin/sh -c <command>`` (the command begins with the
``export VAR=... &&`` declarations Snakemake adds when
``pass_envvar_declarations_to_cmd=True``, so it needs a shell; docs/orchestration.md). The
command runs in its own session so that the whole process tree can be signalled, with
SIGUSR2 ignored (Slurm's ``--signal=USR2@N`` reaches every process of the step; only
the submitit wrapper must act on it).

Data-parallel jobs (``nodes * tasks_per_node > 1``): submitit starts one task per rank and
each task calls this object. Each task gets MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE (from submitit's ``JobEnvironment``, as
``submitit.helpers.TorchDistributedEnvironment`` computes them, except the port:
``master_port``) and, when GPUs were requested, CUDA_VISIBLE_DEVICES narrowed to its own GPU
(``distributed_env``). Global rank 0 runs the inner Snakemake (which prepares and checks the
outputs); the other ranks run the rule's formatted ``shell:`` command directly, so only one
Snakemake manages the job's files, each with ``{log}`` pointing at its own files
(``rank_log``): the job's log is rank 0's. Rank 0 alone decides success. When one rank fails,
the others stop their commands and fail too (they watch each other's result files): without
that, a rank waits for the failed one at the rendezvous until torch's 30-minute timeout or the
job's time limit, holding the node.

When the command ends, what is left of its process group is stopped. When the scheduler
stopped it (SIGTERM: scancel, ``scontrol requeue``, preemption; or USR2, the time limit's and
preemption's warning, after which the other ranks' commands lose rank 0), the task exits without a
result file (SystemExit is not pickled by submitit), so the status loop goes by the
scheduler's state: a requeued job is still active, a cancelled one failed.

``RequeueableShellCommand`` adds submitit's ``checkpoint()`` hook: on timeout or preemption
(USR2) it stops the command (SIGTERM to its process group, SIGKILL after
``term_grace_s``) and returns a ``DelayedSubmission`` of itself, so submitit requeues the
job and the same command line runs again; the command resumes from its own checkpoint.
"""

import hashlib
import os
import pickle
import signal
import subprocess
import time
from pathlib import Path

import psutil
from submitit import JobEnvironment
from submitit.core.utils import DelayedSubmission, JobPaths, pickle_load
from submitit.helpers import Checkpointable

# seconds the processes a finished command left behind get between SIGTERM and SIGKILL
LEFTOVER_GRACE_S = 2.0
# seconds between two checks that the driver (the Snakemake that submitted a local job) still
# runs, and that the other ranks of a multi-task job have not failed
DRIVER_POLL_S = 0.5
# Rank 0's rendezvous port is drawn from here: below Linux's default ephemeral range
# (net.ipv4.ip_local_port_range, 32768-60999). In that range any client socket, even one closed
# seconds ago and still in TIME_WAIT, holds its port, and rank 0's TCPStore then fails with
# EADDRINUSE while the other ranks wait for it. submitit's own draw (20000-60000) lands there 70%
# of the time; with the ~250 sockets in TIME_WAIT counted on the test node during a Slurm
# test run, about one 2-rank job in 160 (it happened in CI).
RENDEZVOUS_PORTS = range(20000, 32768)


class CommandFailed(RuntimeError):
    """The job's command exited with a non-zero status."""


def _child_setup() -> None:  # pragma: no cover - runs in the forked child
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def driver_alive(pid: int, create_time: float) -> bool:
    """Whether the process ``pid`` started at ``create_time`` still runs (not a later one with its PID)."""
    try:
        return abs(psutil.Process(pid).create_time() - create_time) < 1e-3
    except psutil.Error:
        return False


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to process group ``pgid``; a group that is gone is no error."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill_group(proc: subprocess.Popen | None, grace_s: float) -> None:
    """SIGTERM the process group of `proc` (a session leader), wait up to `grace_s`
    for the group to empty, then SIGKILL what is left. Safe to call repeatedly."""
    if proc is None:
        return
    pgid = proc.pid
    if grace_s > 0:
        signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            proc.poll()  # reap our direct child so it does not linger as a zombie
            if not group_alive(pgid):
                return
            time.sleep(0.1)
    signal_group(pgid, signal.SIGKILL)
    proc.poll()


def master_port(job_id: str) -> int:
    """The rendezvous port of job ``job_id``: the same on every rank and node, in ``RENDEZVOUS_PORTS``."""
    digest = hashlib.sha256(job_id.encode()).digest()
    return RENDEZVOUS_PORTS[int.from_bytes(digest[:8], "big") % len(RENDEZVOUS_PORTS)]


def distributed_env(gpus_per_node: int, environ: dict[str, str] | None = None) -> dict[str, str]:
    """torch.distributed variables for this submitit task; {} for a single-task job.

    The port is ``master_port`` of the job's id, unless the environment sets MASTER_PORT (as
    submitit does, that value wins).

    With GPUs, each task sees exactly one: CUDA_VISIBLE_DEVICES narrowed to the LOCAL_RANK-th of
    the GPUs visible to the job (all of them under Slurm's --gpus-per-node), which the task then
    uses as ``cuda:0`` (``tokendrift.core.distributed.resolve_device``); a task the scheduler already bound
    to one GPU (--gpus-per-task, --gpu-bind) keeps it. LOCAL_RANK stays the rank on the node.
    """
    environ = os.environ if environ is None else environ
    job = JobEnvironment()
    if job.num_tasks <= 1:
        return {}
    env = {
        "MASTER_ADDR": str(job.hostnames[0]),
        "MASTER_PORT": environ.get("MASTER_PORT") or str(master_port(job.job_id)),
        "RANK": str(job.global_rank),
        "WORLD_SIZE": str(job.num_tasks),
        "LOCAL_RANK": str(job.local_rank),
        "LOCAL_WORLD_SIZE": str(job.num_tasks // job.num_nodes),
    }
    if gpus_per_node:
        visible = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
        if len(visible) != 1:  # the job's GPUs (or none listed: 0..gpus_per_node-1)
            devices = visible or [str(i) for i in range(gpus_per_node)]
            if job.local_rank >= len(devices):
                raise CommandFailed(
                    f"task of local rank {job.local_rank} on a node with GPUs {','.join(devices)}: "
                    f"one GPU per task needs gpus_per_node >= tasks_per_node"
                )
            env["CUDA_VISIBLE_DEVICES"] = devices[job.local_rank]
    return env


def peer_results(environ: dict[str, str] | None = None) -> dict[str, Path]:
    """The result files submitit writes for the OTHER tasks of this multi-task job, by rank ({} for
    a single-task job). A task that failed has written ("error", traceback) there."""
    environ = os.environ if environ is None else environ
    job = JobEnvironment()
    if job.num_tasks <= 1:
        return {}
    folder = environ["SUBMITIT_FOLDER"]
    return {
        str(t): JobPaths(folder, job_id=job.job_id, task_id=t).result_pickle
        for t in range(job.num_tasks)
        if t != job.global_rank
    }


def failed_peer(peers: dict[str, Path]) -> str | None:
    """The rank of a task among ``peers`` that has failed, or None (submitit writes a result file
    whole, by renaming)."""
    for rank, path in peers.items():
        try:
            if pickle_load(path)[0] == "error":
                return rank
        except (OSError, EOFError, pickle.UnpicklingError, IndexError, TypeError):
            continue
    return None


def rank_log(path: str, rank: int) -> str:
    """The log a rank other than 0 of a multi-task job writes instead of the job's ``path``
    (logs/train/x.log -> logs/train/x.rank1.log)."""
    head, name = os.path.split(path)
    stem, dot, ext = name.rpartition(".")
    name = f"{stem}.rank{rank}.{ext}" if dot and stem else f"{name}.rank{rank}"
    return os.path.join(head, name)


class ShellCommand:
    """Callable submitted through submitit: runs one Snakemake job's command.

    command: the inner Snakemake command line (from ``format_job_exec``), or with
        ``--submitit-direct-shell`` the rule's own shell command.
    cwd: the workflow's working directory.
    worker_command: for multi-task jobs, the rule's formatted shell command (as
        ``Executor.direct_command`` builds it) that ranks other than 0 run, one for all or
        one per rank ({"1": ..., "2": ...}: each writing its own log); else None.
    gpus_per_node: GPUs requested per node (to split CUDA_VISIBLE_DEVICES per rank).
    term_grace_s: seconds between SIGTERM and SIGKILL when the command is stopped.
    usr2_wait_s: after a SIGTERM killed the command, how long to wait for the USR2 that
        follows on preemption before calling the job failed.
    A task of a multi-task job also stops its command, and fails, as soon as another task of
    the job has failed (``failed_peer``, checked every ``DRIVER_POLL_S``).
    driver: (PID, start time) of the Snakemake that submitted a local job: when it dies (a
        ``kill -9``), the command's process group is stopped within ``DRIVER_POLL_S`` plus
        ``LEFTOVER_GRACE_S`` seconds instead of running on as an orphan. None on a cluster,
        where a job outlives its driver and the next Snakemake finds its outputs.
    """

    def __init__(
        self,
        command: str,
        cwd: str,
        worker_command: str | dict[str, str] | None = None,
        gpus_per_node: int = 0,
        term_grace_s: float = 30.0,
        usr2_wait_s: float = 5.0,
        driver: tuple[int, float] | None = None,
    ) -> None:
        self.command = command
        self.cwd = cwd
        self.worker_command = worker_command
        self.gpus_per_node = int(gpus_per_node)
        self.term_grace_s = float(term_grace_s)
        self.usr2_wait_s = float(usr2_wait_s)
        self.driver = tuple(driver) if driver else None
        self._proc: subprocess.Popen | None = None
        self._stopped_by: str | None = None  # the scheduler's signal (SIGTERM or SIGUSR2), once seen
        self._peers: dict[str, Path] = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_proc"] = None  # a Popen cannot be pickled (checkpoint re-dumps self)
        state["_stopped_by"] = None
        state["_peers"] = {}
        return state

    def argv(self, rank: str) -> list:
        """The process to start for this task (rank 0: the job's command; other ranks:
        the rule's shell command)."""
        if rank != "0":
            cmd = self.worker_command
            if isinstance(cmd, dict):
                cmd = cmd.get(rank)
            if cmd is None:
                raise CommandFailed(f"multi-task job without a worker command for rank {rank}")
            return ["/bin/sh", "-c", cmd]
        return ["/bin/sh", "-c", self.command]

    def __call__(self) -> int:
        env = dict(os.environ)
        dist = distributed_env(self.gpus_per_node, env)
        env.update(dist)
        rank = dist.get("RANK", "0")
        argv = self.argv(rank)
        self._stopped_by = None
        self._peers = peer_results()
        old_int = signal.getsignal(signal.SIGINT)
        old_term = signal.getsignal(signal.SIGTERM)
        old_usr2 = signal.getsignal(signal.SIGUSR2)

        def on_int(signum, frame):
            kill_group(self._proc, 0)
            raise KeyboardInterrupt

        def on_term(signum, frame):
            # scancel and preemption: pass SIGTERM on to the command's own session
            self._stopped_by = "SIGTERM"
            if self._proc is not None:
                signal_group(self._proc.pid, signal.SIGTERM)
            if callable(old_term):
                old_term(signum, frame)

        def on_usr2(signum, frame):
            # the time limit's or preemption's warning: submitit's handler (rank 0 checkpoints
            # and requeues); a later failure of another rank's command is that stop, not an error
            self._stopped_by = self._stopped_by or "SIGUSR2"
            if callable(old_usr2):
                old_usr2(signum, frame)

        signal.signal(signal.SIGINT, on_int)
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGUSR2, on_usr2)
        try:
            self._proc = subprocess.Popen(argv, cwd=self.cwd, env=env, start_new_session=True, preexec_fn=_child_setup)
            rc = self._wait(rank)
        except BaseException:
            kill_group(self._proc, 0)
            raise
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
            signal.signal(signal.SIGUSR2, old_usr2)
        # what the command left in its process group (an inner Snakemake whose /bin/sh
        # died first is re-parented to init, where proctrack/linuxproc loses it)
        kill_group(self._proc, min(self.term_grace_s, LEFTOVER_GRACE_S))
        if rc != 0 and self._stopped_by is not None:
            # stopped by the scheduler (scancel, scontrol requeue, preemption, time limit):
            # preemption sends USR2 next, so give submitit's handler the chance to requeue; then
            # leave no result file, so that the scheduler's state decides (a requeued
            # job runs again, a cancelled one is reported failed)
            end = time.monotonic() + self.usr2_wait_s
            while time.monotonic() < end:
                time.sleep(0.1)
            raise SystemExit(f"command stopped after {self._stopped_by} (status {rc}, rank {rank}); no result written")
        if rc != 0:
            raise CommandFailed(f"command exited with status {rc} (rank {rank})")
        return 0

    def _wait(self, rank: str) -> int:
        """Poll (not a blocking wait) so that signal handlers can run and stop the child; stop it
        when the driver is gone or another rank of the job has failed."""
        next_check = time.monotonic() + DRIVER_POLL_S
        while True:
            rc = self._proc.poll()
            if rc is not None:
                return rc
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + DRIVER_POLL_S
                if self.driver and not driver_alive(*self.driver):
                    kill_group(self._proc, LEFTOVER_GRACE_S)
                    raise CommandFailed(f"the driver (Snakemake pid {self.driver[0]}) is gone: command stopped")
                failed = None if self._stopped_by else failed_peer(self._peers)
                if failed is not None:
                    kill_group(self._proc, LEFTOVER_GRACE_S)
                    raise CommandFailed(f"rank {failed} of this job failed: the command of rank {rank} stopped")
            time.sleep(0.1)


class RequeueableShellCommand(ShellCommand, Checkpointable):
    """A ShellCommand that submitit requeues on timeout or preemption (rule resource
    ``requeue=1``): ``checkpoint()`` is called by submitit's USR2 handler."""

    def checkpoint(self, *args, **kwargs) -> DelayedSubmission:
        kill_group(self._proc, self.term_grace_s)
        return DelayedSubmission(self, *args, **kwargs)
