"""Snakemake executor plugin built on submitit (`snakemake --executor submitit`).

Each Snakemake job is submitted through submitit, to Slurm (sbatch, one array per batch
of same-resource jobs) or to local processes (``--submitit-cluster local``; a job of one task
runs there as a plain child process with the same liveness, limits and logs, ``local.py``), and runs the
inner ``python -m snakemake`` command from ``format_job_exec`` with ``--cores`` set to the
allocation's CPUs; with ``--submitit-direct-shell`` a plain ``shell:`` rule runs its own
formatted command instead (no inner Snakemake start-up per job). Rule resources map to
submitit parameters (``resources.py`` lists the names). The status loop settles finished
jobs from their result files and asks the scheduler about the others with ONE batched
query per interval (``status.py``). On Ctrl-C the plugin cancels its jobs (one scancel, or
the local process trees). Rules with ``resources: requeue=1`` are requeued on timeout or
preemption and rerun the same command line (``jobs.py``). How the workflow uses it:
docs/orchestration.md.
"""

import json
import os
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
from snakemake_interface_executor_plugins.jobs import JobExecutorInterface
from snakemake_interface_executor_plugins.settings import (
    CommonSettings,
    DeploymentMethod,
    ExecutorSettingsBase,
)
from submitit import AutoExecutor
from submitit.local.local import LocalExecutor

from .jobs import RequeueableShellCommand, ShellCommand, rank_log
from .local import LocalRunner, retire_stale_files
from .resources import local_parameters, num_tasks, submitit_parameters, wants_requeue
from .status import LocalWatcher, SlurmWatcher, StatusPoller, Tracked, failure_message


@dataclass
class ExecutorSettings(ExecutorSettingsBase):
    cluster: str = field(
        default="auto",
        metadata={
            "help": "Where jobs run: 'slurm' (sbatch through submitit), 'local' (local "
            "processes through submitit) or 'auto' (slurm if sbatch and srun are on PATH, "
            "else local).",
            "choices": ["auto", "slurm", "local"],
            "env_var": False,
            "required": False,
        },
    )
    folder: str = field(
        default=".snakemake/submitit",
        metadata={
            "help": "Folder for submitit's job pickles and logs; each run uses a new "
            "sub-folder. On Slurm it must be on the filesystem shared with the nodes.",
            "env_var": False,
            "required": False,
        },
    )
    poll_interval: float = field(
        default=1.0,
        metadata={
            "help": "Seconds between status cycles. A cycle lists the log folder (finished "
            "jobs leave a result file there); it queries the scheduler only as "
            "--submitit-query-interval allows.",
            "env_var": False,
            "required": False,
        },
    )
    query_interval: float = field(
        default=10.0,
        metadata={
            "help": "Minimum seconds between scheduler queries; each is ONE sacct/squeue "
            "call for all active jobs that have no result file yet.",
            "env_var": False,
            "required": False,
        },
    )
    status_command: str = field(
        default="sacct",
        metadata={
            "help": "Slurm status query: 'sacct' (needs accounting) or 'squeue'.",
            "choices": ["sacct", "squeue"],
            "env_var": False,
            "required": False,
        },
    )
    result_grace_s: float = field(
        default=10.0,
        metadata={
            "help": "Seconds a job may be reported finished without a result file "
            "(slow shared filesystem) before it counts as failed (cancelled, timed out, "
            "out of memory).",
            "env_var": False,
            "required": False,
        },
    )
    default_runtime: int = field(
        default=1440,
        metadata={
            "help": "Time limit in minutes for rules without a 'runtime' resource.",
            "env_var": False,
            "required": False,
        },
    )
    slurm_signal_delay_s: int = field(
        default=90,
        metadata={
            "help": "Seconds before the time limit at which jobs receive USR2 "
            "(sbatch --signal=USR2@N): a rule with resources requeue=1 is then "
            "checkpointed and requeued.",
            "env_var": False,
            "required": False,
        },
    )
    max_requeues: int = field(
        default=3,
        metadata={
            "help": "How many times a requeue=1 job may be requeued after timeouts "
            "(submitit max_num_timeout); preemptions do not count.",
            "env_var": False,
            "required": False,
        },
    )
    requeue_grace_s: float = field(
        default=30.0,
        metadata={
            "help": "Seconds a requeued job's command gets between SIGTERM and SIGKILL; "
            "keep it below slurm-signal-delay-s.",
            "env_var": False,
            "required": False,
        },
    )
    direct_shell: bool = field(
        default=False,
        metadata={
            "help": "Run plain shell: rules (no conda/container/env-modules in use under --sdm, "
            "benchmark, shadow or tmpdir) without the inner 'python -m snakemake': the main "
            "process prepares the job's outputs and the task runs the formatted shell "
            "command with Snakemake's strict bash mode and thread variables. Saves the "
            "inner Snakemake start-up (seconds per job); inputs are not waited for on the "
            "compute node (--wait-for-files).",
            "env_var": False,
            "required": False,
        },
    )
    keep_logs: bool = field(
        default=False,
        metadata={
            "help": "Keep the submitit files (pickles, logs) of successful jobs; those of failed jobs are always kept.",
            "env_var": False,
            "required": False,
        },
    )


# Settings that worked on a shared filesystem (docs/orchestration.md).
common_settings = CommonSettings(
    non_local_exec=True,
    implies_no_shared_fs=False,
    job_deploy_sources=False,
    pass_default_storage_provider_args=True,
    pass_default_resources_args=True,
    pass_envvar_declarations_to_cmd=True,
    auto_deploy_default_storage_provider=False,
    init_seconds_before_status_checks=1,
)


# the variables Snakemake's shell() sets to the job's threads
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "GOTO_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def resolve_cluster(cluster: str) -> str:
    """'auto' -> 'slurm' when sbatch and srun are on PATH, else 'local'."""
    if cluster == "auto":
        return "slurm" if shutil.which("sbatch") and shutil.which("srun") else "local"
    if cluster not in ("slurm", "local"):
        raise WorkflowError(f"--submitit-cluster must be auto, slurm or local, got {cluster!r}")
    return cluster


def kill_local_tree(pids: list[int], timeout_s: float = 3.0) -> None:
    """Stop local submitit jobs rooted at controller `pids`: SIGKILL the controller and
    its task processes (submitit ignores SIGTERM there), SIGTERM the job commands below
    them (collected first, so re-parented processes are not missed), SIGKILL survivors."""
    wrappers, commands = [], []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            tasks = root.children()
            wrappers += [root] + tasks
            for task in tasks:
                commands += task.children(recursive=True)
        except psutil.NoSuchProcess:
            continue
    for procs, sig in ((commands, signal.SIGTERM), (wrappers, signal.SIGKILL)):
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
    _, alive = psutil.wait_procs(commands, timeout=timeout_s)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


class Executor(RemoteExecutor):
    def __post_init__(self):
        self.settings = self.workflow.executor_settings
        self.cluster = resolve_cluster(self.settings.cluster)
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self.run_folder = Path(self.settings.folder).expanduser().absolute() / run_id
        self.run_folder.mkdir(parents=True, exist_ok=True)
        if self.cluster == "slurm":
            self.watcher = SlurmWatcher(self.settings.status_command, logger=self.logger)
            query_interval = self.settings.query_interval
        else:
            self.watcher = LocalWatcher()
            query_interval = 0.0
        self.poller = StatusPoller(self.watcher, self.run_folder, query_interval, self.settings.result_grace_s)
        # single-task local jobs: child processes of this one, with one watchdog for the run
        self.local = (
            LocalRunner(self.run_folder, self.settings.requeue_grace_s, self.settings.max_requeues)
            if self.cluster == "local"
            else None
        )
        self.next_seconds_between_status_checks = self.settings.poll_interval
        self._job_cores: int | None = None
        self._used_ids: set = set()
        # external ids of submitted jobs not yet reported finished: Snakemake's active_jobs
        # list is empty while a status cycle runs, so cancel_jobs must not rely on it alone
        self._unfinished: dict[str, None] = {}
        self._started = time.monotonic()
        # local jobs stop when this process dies (jobs.ShellCommand polls it): no orphans after kill -9
        self._driver = (os.getpid(), psutil.Process().create_time())
        self.logger.info(f"submitit executor: cluster={self.cluster}, files in {self.run_folder}")

    # --- command line ----------------------------------------------------------------
    @property
    def cores(self):
        """--cores of the inner Snakemake: the allocation's CPUs, not 'all' (the node's)."""
        if self._job_cores is not None:
            return self._job_cores
        return super().cores

    def _rule_name(self, job: JobExecutorInterface) -> str:
        return job.name if job.is_group() else job.rule.name

    def plan(self, job: JobExecutorInterface) -> tuple[str, dict, ShellCommand]:
        """(batch key, submitit parameters, callable) for one job; WorkflowError on bad
        resources."""
        rule = self._rule_name(job)
        params = submitit_parameters(
            job.resources,
            job.threads,
            rule=rule,
            default_runtime=self.settings.default_runtime,
            signal_delay_s=self.settings.slurm_signal_delay_s,
        )
        if self.cluster == "local":
            local_parameters(params, rule)  # validates (nodes == 1)
        cls = RequeueableShellCommand if wants_requeue(job.resources, rule) else ShellCommand
        cpus = params["cpus_per_task"]
        worker = None
        if num_tasks(params) > 1:
            if not self.direct_eligible(job):
                raise WorkflowError(
                    f"rule {rule}: resources tasks_per_node/nodes ask for "
                    f"{num_tasks(params)} processes; ranks > 0 run the rule's shell "
                    "command directly, so the rule needs a plain shell: command (no group, "
                    "conda/container/env-modules in use under --sdm, benchmark, shadow or tmpdir)"
                )
            worker = {str(r): self.direct_command(job, cpus, rank=r) for r in range(1, num_tasks(params))}
        if self.settings.direct_shell and self.direct_eligible(job):
            self.workflow.async_run(job.prepare())  # what the inner Snakemake would do
            command = self.direct_command(job, cpus)
        else:
            self._job_cores = cpus
            try:
                command = self.format_job_exec(job)
            finally:
                self._job_cores = None
        fn = cls(
            command=command,
            cwd=os.getcwd(),
            worker_command=worker,
            gpus_per_node=params.get("gpus_per_node", 0),
            term_grace_s=self.settings.requeue_grace_s,
            driver=self._driver if self.cluster == "local" else None,
        )
        key = json.dumps([cls.__name__, params], sort_keys=True, default=str)
        return key, params, fn

    def direct_eligible(self, job: JobExecutorInterface) -> bool:
        """A job whose rule's formatted shell command can run without Snakemake. A rule's conda
        environment, container or environment modules count only under the deployment method
        that uses them (--sdm conda, apptainer, env-modules): otherwise Snakemake ignores them too."""
        if job.is_group() or not job.rule.shellcmd or "tmpdir" in job.rule.shellcmd:
            return False
        if job.benchmark or job.is_shadow or job.is_norun:
            return False
        used = self.workflow.deployment_settings.deployment_method
        return not (
            (DeploymentMethod.CONDA in used and job.conda_env_spec)
            or (DeploymentMethod.APPTAINER in used and job.container_img_url)
            or (DeploymentMethod.ENV_MODULES in used and job.env_modules)
        )

    def direct_command(self, job: JobExecutorInterface, cpus: int, rank: int = 0) -> str:
        """The job's shell command as Snakemake's shell() would run it: the workflow's
        shell executable and prefix/suffix (bash strict mode by default), the thread
        variables set to the allocation's CPUs, the envvars declarations first. For a rank
        other than 0 of a multi-task job, ``{log}`` names that rank's own files (``rank_log``),
        so that the job's log is rank 0's alone."""
        from snakemake.shell import shell

        exe = shell.get_executable() or "/bin/sh"
        prefix = getattr(shell, "_process_prefix", None)
        if prefix is None:
            prefix = "set -euo pipefail; " if os.path.basename(exe) == "bash" else ""
        suffix = getattr(shell, "_process_suffix", None) or ""
        body = job.shellcmd
        if rank and job.log:
            logs = type(job.log)(toclone=job.log, custom_map=lambda f: rank_log(str(f), rank))
            dirs = sorted({os.path.dirname(f) for f in logs if os.path.dirname(f)})
            mkdir = f"mkdir -p {' '.join(shlex.quote(d) for d in dirs)}; " if dirs else ""
            body = mkdir + job.format_wildcards(job.rule.shellcmd, log=logs)
        cmd = " ".join((prefix, body, suffix)).strip()
        threads = " ".join(f"{v}={cpus}" for v in THREAD_VARS)
        return (
            f"{self.get_envvar_declarations()} export {threads} && exec {shlex.quote(exe)} -c {shlex.quote(cmd)}"
        ).strip()

    # --- submission ------------------------------------------------------------------
    def run_jobs(self, jobs: list[JobExecutorInterface]):
        """Submit all ready jobs; jobs with identical parameters go out as one batch
        (one sbatch array on Slurm)."""
        for job in jobs:
            self.run_job_pre(job)
        self._dispatch(jobs)

    def run_job(self, job: JobExecutorInterface):
        self._dispatch([job])

    def _dispatch(self, jobs: list[JobExecutorInterface]) -> None:
        """Plan each job; start the single-task local ones directly, batch the others."""
        batches = {}
        for job in jobs:
            try:
                key, params, fn = self.plan(job)
            except Exception as e:  # bad resources, protected output: fail this job only
                self.report_job_error(SubmittedJobInfo(job), msg=str(e))
                continue
            if self.local is not None and num_tasks(params) == 1:
                self._start_local(job, params, fn)
                continue
            batches.setdefault(key, (params, []))[1].append((job, fn))
        for params, members in batches.values():
            self._submit(params, members)

    def _start_local(self, job: JobExecutorInterface, params: dict, fn: ShellCommand) -> None:
        """A single-task local job as a child process (local.py)."""
        try:
            job_id = self.local.start(
                fn.command,
                fn.cwd,
                timeout_min=params["timeout_min"],
                signal_delay_s=params["slurm_signal_delay_s"],
                gpus_per_node=params.get("gpus_per_node", 0),
                requeue=isinstance(fn, RequeueableShellCommand),
            )
        except OSError as e:
            self.report_job_error(SubmittedJobInfo(job), msg=f"local job start failed: {e}")
            return
        self._report_submitted(job, job_id)

    def _report_submitted(self, job: JobExecutorInterface, job_id: str) -> None:
        tracked = Tracked(job_id=job_id, folder=self.run_folder)
        self._used_ids.add(job_id)
        self._unfinished[job_id] = None
        self.logger.info(
            f"Job {job.jobid} submitted as submitit {self.cluster} job {job_id} (log: {tracked.paths.stderr})."
        )
        self.report_job_submission(SubmittedJobInfo(job, external_jobid=job_id, aux={"tracked": tracked}))

    def make_executor(self, params: dict):
        """A fresh submitit executor for one parameter set (submitit keeps parameters
        between update_parameters calls, so executors are not shared)."""
        if self.cluster == "slurm":
            ex = AutoExecutor(self.run_folder, cluster="slurm", slurm_max_num_timeout=self.settings.max_requeues)
            ex.update_parameters(**params)
        else:
            ex = LocalExecutor(self.run_folder, max_num_timeout=self.settings.max_requeues)
            ex.update_parameters(**local_parameters(params, params["name"]))
            ex._throttling = 0.0  # local processes need no submission throttle
        return ex

    def _submit(self, params: dict, members: list[tuple[JobExecutorInterface, ShellCommand]]):
        try:
            ex = self.make_executor(params)
            with ex.batch():
                handles = [ex.submit(fn) for _, fn in members]
        except Exception as e:
            for job, _ in members:
                self.report_job_error(SubmittedJobInfo(job), msg=f"submitit submission failed: {e}")
            return
        for (job, _), handle in zip(members, handles):
            job_id = str(handle.job_id)
            if self.cluster == "local":
                if job_id in self._used_ids:
                    retire_stale_files(self.run_folder, job_id)
                self.watcher.watch(job_id, handle)
            self._report_submitted(job, job_id)

    # --- status ----------------------------------------------------------------------
    async def check_active_jobs(self, active_jobs: list[SubmittedJobInfo]) -> AsyncGenerator[SubmittedJobInfo, None]:
        if not active_jobs:
            return
        tracked = [j.aux["tracked"] for j in active_jobs]
        local = self.local.jobs if self.local is not None else {}
        async with self.status_rate_limiter:
            queued = [t for t in tracked if t.job_id not in local]
            polled = self.poller.cycle(queued) if queued else []
        outcomes = []
        for t in tracked:
            if t.job_id in local:
                outcome, reason = self.local.poll(t.job_id)
                outcomes.append((outcome, failure_message(t, reason) if outcome == "error" else reason))
            else:
                outcomes.append(polled.pop(0))
        for info, t, (outcome, message) in zip(active_jobs, tracked, outcomes):
            if outcome == "running":
                yield info
                continue
            self.poller.forget(t.job_id)
            self._unfinished.pop(t.job_id, None)
            if self.cluster == "local":
                self.watcher.forget(t.job_id)
            if outcome == "success":
                if not self.settings.keep_logs:
                    self._remove_files(t.job_id)
                self.report_job_success(info)
            else:
                self.report_job_error(info, msg=message)

    def _remove_leftover_submission_files(self) -> None:
        """Array sbatch scripts of arrays whose jobs all succeeded, and dangling links."""
        try:
            names = os.listdir(self.run_folder)
        except OSError:
            return
        for n in names:
            base = n[: -len("_submission.sh")] + "_"
            if n.endswith("_submission.sh") and not any(m.startswith(base) and m != n for m in names):
                (self.run_folder / n).unlink(missing_ok=True)
        for p in self.run_folder.glob(".submission_file_*.sh"):
            if p.is_symlink() and not p.exists():
                p.unlink()

    def _remove_files(self, job_id: str) -> None:
        for p in self.run_folder.glob(f"{job_id}_*"):
            try:
                p.unlink()
            except OSError:
                pass

    # --- cancel / shutdown -----------------------------------------------------------
    def cancel_jobs(self, active_jobs: list[SubmittedJobInfo]):
        given = [j.external_jobid for j in active_jobs if j.external_jobid]
        ids = list(dict.fromkeys(given + list(self._unfinished)))
        if not ids:
            return
        if self.cluster == "slurm":
            try:
                subprocess.run(["scancel", *ids], check=False, timeout=60, capture_output=True)
            except (OSError, subprocess.SubprocessError) as e:
                self.logger.error(f"submitit: scancel {' '.join(ids)} failed: {e}")
        else:
            direct = [i for i in ids if i in self.local.jobs]
            kill_local_tree([int(i) for i in ids if i not in direct])
            self.local.cancel(direct)
        self.logger.info(f"submitit: cancelled {len(ids)} job(s)")

    def shutdown(self):
        super().shutdown()
        if self.local is not None:
            self.local.close()
        elapsed = time.monotonic() - self._started
        queries = self.watcher.calls if self.cluster == "slurm" else 0
        self.logger.info(
            f"submitit executor: {queries} scheduler status queries in {elapsed:.0f} s "
            f"({60 * queries / max(elapsed, 1e-9):.1f}/min)"
        )
        self._remove_leftover_submission_files()
        try:
            self.run_folder.rmdir()  # only succeeds when every job was cleaned up
        except OSError:
            pass
