"""Tests of the submitit Snakemake executor plugin.

End-to-end tests run the real `snakemake --executor submitit --submitit-cluster local` in a
temporary folder. Snakemake finds executor plugins with pkgutil.iter_modules, which does
not see setuptools' editable-install finder, so the repository root is put on PYTHONPATH
for the subprocess. Slurm itself is not needed: its edges (sacct/squeue output, srun
detection) are faked at the plugin's own boundary.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from snakemake_interface_common.exceptions import WorkflowError
from submitit import AutoExecutor
from submitit.core.utils import JobPaths, cloudpickle_dump
from submitit.local.local import LocalExecutor
from submitit.slurm.slurm import SlurmExecutor

import snakemake_executor_plugin_submitit as plugin
from snakemake_executor_plugin_submitit import jobs, resources, status
from snakemake_executor_plugin_submitit.local import LocalRunner, retire_stale_files
from tests.conftest import ctrl_c_reaches_it

REPO = Path(plugin.__file__).resolve().parents[1]

SNAKEFILE = """
rule all:
    input: expand("out/a{i}.txt", i=range(2)), "out/b.txt", "out/ddp.txt", "out/after_fail.txt"

rule a:
    output: "out/a{i}.txt"
    shell: "echo a{wildcards.i} >> runs.log; echo {wildcards.i} > {output}"

rule b:
    output: "out/b.txt"
    threads: 3
    shell: "echo b >> runs.log; echo $OMP_NUM_THREADS > {output}"

rule ddp:
    output: "out/ddp.txt"
    resources: tasks_per_node=2
    shell: "echo ddp >> runs.log; echo $RANK/$WORLD_SIZE/$MASTER_PORT >> ranks.log; if [ $RANK = 0 ]; then echo ok > {output}; fi"

rule fail:
    output: "out/fail.txt"
    shell: "echo fail >> runs.log; test ! -e FAIL; echo ok > {output}"

rule after_fail:
    input: "out/fail.txt"
    output: "out/after_fail.txt"
    shell: "echo after_fail >> runs.log; cp {input} {output}"
"""


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def _snakemake(cwd, *args, timeout=120):
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--executor",
        "submitit",
        "--submitit-cluster",
        "local",
        "--nocolor",
        *args,
    ]
    return subprocess.run(cmd, check=False, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _runs(path):
    return (path / "runs.log").read_text().split() if (path / "runs.log").exists() else []


# --- end to end -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    """One keep-going run with a failing rule (shared by the tests below)."""
    d = tmp_path_factory.mktemp("wf")
    (d / "Snakefile").write_text(SNAKEFILE)
    (d / "FAIL").touch()
    first = _snakemake(d, "-j", "6", "--keep-going")
    return d, first


def test_keep_going_failure_and_outputs(workflow):
    d, first = workflow
    log = first.stdout + first.stderr
    assert first.returncode != 0, log
    for name in ["a0", "a1"]:
        assert (d / "out" / f"{name}.txt").read_text().strip() == name[1], log
    # threads: 3 reached the inner Snakemake as --cores 3 (not "all" = this node's CPUs)
    assert (d / "out" / "b.txt").read_text().strip() == "3"
    assert not (d / "out" / "fail.txt").exists()
    assert not (d / "out" / "after_fail.txt").exists()
    assert "Error in rule fail" in log and "submitit job" in log
    assert "returned non-zero exit status 1" in log  # the job's own error, from its log
    assert sorted(_runs(d)) == sorted(["a0", "a1", "b", "ddp", "ddp", "fail"])  # ddp: 2 ranks
    # tasks_per_node=2: two processes with torch.distributed variables, one port
    ranks = sorted((d / "ranks.log").read_text().split())
    assert [r.split("/")[:2] for r in ranks] == [["0", "2"], ["1", "2"]]
    assert ranks[0].split("/")[2] == ranks[1].split("/")[2]
    assert (d / "out" / "ddp.txt").read_text().strip() == "ok"
    # files of successful jobs are removed, those of the failed job kept
    (run_folder,) = list((d / ".snakemake" / "submitit").iterdir())
    ids = {p.name.split("_")[0] for p in run_folder.iterdir() if not p.name.startswith(".")}
    assert len(ids) == 1, sorted(p.name for p in run_folder.iterdir())


def test_rerun_runs_only_missing(workflow):
    d, _ = workflow
    (d / "FAIL").unlink()
    before = len(_runs(d))
    second = _snakemake(d, "-j", "4", "--submitit-direct-shell", "--submitit-keep-logs")
    assert second.returncode == 0, second.stdout + second.stderr
    assert _runs(d)[before:] == ["fail", "after_fail"]
    assert (d / "out" / "after_fail.txt").read_text().strip() == "ok"
    # direct shell: no inner Snakemake ran, so its banner is absent from the job logs
    newest = sorted((d / ".snakemake" / "submitit").iterdir())[-1]
    logs = sorted(newest.glob("*_0_log.err"))
    assert len(logs) == 2 and not any("SNAKEMAKE" in p.read_text() for p in logs)


def test_a_conda_directive_without_conda_deployment_keeps_the_direct_shell(tmp_path):
    """Snakemake ignores a rule's conda: unless --sdm conda is given, and so does the direct shell:
    a rule with an environment still runs without an inner Snakemake, and with several ranks."""
    (tmp_path / "env.yaml").write_text("channels: [conda-forge]\ndependencies: [python]\n")
    (tmp_path / "Snakefile").write_text(
        'rule ddp:\n    output: "ddp.txt"\n    conda: "env.yaml"\n    resources: tasks_per_node=2\n'
        '    shell: "echo $RANK >> ranks.log; if [ $RANK = 0 ]; then echo ok > {output}; fi"\n'
    )
    r = _snakemake(tmp_path, "-j", "1", "--submitit-direct-shell", "--submitit-keep-logs")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted((tmp_path / "ranks.log").read_text().split()) == ["0", "1"]
    logs = list((tmp_path / ".snakemake" / "submitit").glob("*/*_log.err"))
    assert logs and not any("SNAKEMAKE" in p.read_text() for p in logs)


def test_each_rank_of_a_multi_task_job_writes_its_own_log(tmp_path):
    """Ranks > 0 run the rule's command with {log} pointing at their own files: the job's log
    is rank 0's alone (before, every rank truncated and wrote the same file)."""
    (tmp_path / "Snakefile").write_text(
        'rule ddp:\n    output: "ddp.txt"\n    log: "logs/ddp/job.log"\n    resources: tasks_per_node=4\n'
        '    shell: "echo rank $RANK > {log}; if [ $RANK = 0 ]; then echo ok > {output}; fi"\n'
    )
    r = _snakemake(tmp_path, "-j", "1", "--submitit-direct-shell")
    assert r.returncode == 0, r.stdout + r.stderr
    logs = tmp_path / "logs" / "ddp"
    assert (logs / "job.log").read_text() == "rank 0\n"
    for rank in (1, 2, 3):
        assert (logs / f"job.rank{rank}.log").read_text() == f"rank {rank}\n"
    assert jobs.rank_log("a.b/job", 2) == "a.b/job.rank2" and jobs.rank_log("x/.log", 1) == "x/.log.rank1"


def _slurm_task(monkeypatch, rank: int, tasks: int = 4) -> None:
    """The variables Slurm gives task ``rank`` of a one-node job (what submitit's
    SlurmJobEnvironment reads)."""
    for k, v in {
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": "42",
        "SLURM_NTASKS": str(tasks),
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_JOB_NODELIST": "gpu001",
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank),
    }.items():
        monkeypatch.setenv(k, v)


@pytest.mark.parametrize("mask", ["0,1,2,3", "4,5,6,7", None], ids=["gpus-per-node", "other-ids", "unset"])
def test_every_rank_of_a_4_task_job_sees_one_gpu_and_uses_it(monkeypatch, mask):
    """The 4-rank H100 job: each task's CUDA_VISIBLE_DEVICES is its own GPU and the training job
    resolves cuda:0 in it (before, the mask was narrowed but ranks 1-3 asked for cuda:LOCAL_RANK)."""
    from tokendrift.core.distributed import resolve_device

    job_gpus = (mask or "0,1,2,3").split(",")
    seen = []
    for rank in range(4):
        _slurm_task(monkeypatch, rank)
        env = jobs.distributed_env(4, {} if mask is None else {"CUDA_VISIBLE_DEVICES": mask})
        assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"]) == (str(rank), str(rank), "4")
        visible = env["CUDA_VISIBLE_DEVICES"].split(",")
        device = resolve_device("auto", env, cuda_count=len(visible))  # torch counts the visible GPUs
        assert device == torch.device("cuda", 0), (rank, env)
        seen.append(visible[device.index])
    assert seen == job_gpus  # four ranks, four distinct GPUs of the job


def test_the_rendezvous_port_is_the_jobs_own_and_below_the_ephemeral_range(monkeypatch):
    """Every rank gets the same port, drawn from the job id below Linux's ephemeral ports (where a
    closed client socket in TIME_WAIT made rank 0's TCPStore fail with EADDRINUSE); a MASTER_PORT
    in the environment wins."""
    ports = set()
    for rank in range(4):
        _slurm_task(monkeypatch, rank)
        ports.add(jobs.distributed_env(0, {})["MASTER_PORT"])
    assert ports == {str(jobs.master_port("42"))}
    drawn = {jobs.master_port(f"{job}_{task}") for job in range(1000, 1020) for task in range(50)}
    assert min(drawn) >= 20000 and max(drawn) < 32768 and len(drawn) > 900  # 1000 ids, few repeats
    assert jobs.distributed_env(0, {"MASTER_PORT": "29500"})["MASTER_PORT"] == "29500"


def test_a_rank_that_fails_stops_the_other_ranks_of_its_job(tmp_path):
    """A rank that fails before the rendezvous (seen: EADDRINUSE on rank 0's port) used to leave
    the others waiting for it until torch's 30-minute timeout or the time limit. Now each rank's
    task sees the other's error result and stops its command: the job fails within seconds, with
    both ranks' reasons, whichever rank failed."""
    sleeper = tmp_path / "rank_sleeper.py"
    sleeper.write_text("import time\ntime.sleep(300)\n")
    (tmp_path / "Snakefile").write_text(
        "rule all:\n    input: expand('out/{r}.txt', r=range(2))\n"
        "rule ddp:\n    output: 'out/{r}.txt'\n    resources: tasks_per_node=2\n"
        f"    shell: 'if [ $RANK = {{wildcards.r}} ]; then exit 3; fi; {sys.executable} {sleeper}; touch {{output}}'\n"
    )
    t0 = time.monotonic()
    r = _snakemake(tmp_path, "-j", "2", "--keep-going", "--submitit-direct-shell", "--submitit-keep-logs")
    elapsed = time.monotonic() - t0
    assert r.returncode != 0 and elapsed < 60, (elapsed, r.stdout[-3000:] + r.stderr[-3000:])
    assert r.stderr.count("Error in rule ddp") == 2, r.stderr[-3000:]
    errs = "".join(p.read_text() for p in (tmp_path / ".snakemake/submitit").glob("*/*_log.err"))
    for failed, stopped in (("0", "1"), ("1", "0")):
        assert f"command exited with status 3 (rank {failed})" in errs, errs[-3000:]
        assert f"rank {failed} of this job failed: the command of rank {stopped} stopped" in errs, errs[-3000:]
    assert not _tree_marked(str(sleeper))
    assert not any((tmp_path / "out").glob("*.txt"))


def test_a_task_the_scheduler_bound_to_one_gpu_keeps_it_and_too_few_gpus_are_refused(monkeypatch):
    from tokendrift.core.distributed import resolve_device

    _slurm_task(monkeypatch, 2)
    env = jobs.distributed_env(4, {"CUDA_VISIBLE_DEVICES": "2"})  # --gpus-per-task / --gpu-bind
    assert "CUDA_VISIBLE_DEVICES" not in env and env["LOCAL_RANK"] == "2"
    assert resolve_device("cuda", {**env, "CUDA_VISIBLE_DEVICES": "2"}, cuda_count=1) == torch.device("cuda", 0)
    _slurm_task(monkeypatch, 3)
    with pytest.raises(jobs.CommandFailed, match="local rank 3 .* GPUs 0,1"):
        jobs.distributed_env(2, {"CUDA_VISIBLE_DEVICES": "0,1"})
    assert jobs.distributed_env(0, {"CUDA_VISIBLE_DEVICES": "0,1"}).get("CUDA_VISIBLE_DEVICES") is None


def test_torchrun_full_mask_resolves_cuda_local_rank():
    """torchrun leaves the mask whole: rank r of a node uses cuda:r; a local rank beyond the
    visible GPUs is refused naming the mask; no GPU and device cuda is refused."""
    from tokendrift.core.distributed import resolve_device
    from tokendrift.core.utils import TokenDriftError

    for rank in range(4):
        env = {"LOCAL_RANK": str(rank), "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
        assert resolve_device("auto", env, cuda_count=4) == torch.device("cuda", rank)
    with pytest.raises(TokenDriftError, match="local rank 2 but CUDA_VISIBLE_DEVICES=0,1 shows 2 GPUs"):
        resolve_device("cuda", {"LOCAL_RANK": "2", "CUDA_VISIBLE_DEVICES": "0,1"}, cuda_count=2)
    with pytest.raises(TokenDriftError, match="no GPU is visible"):
        resolve_device("cuda", {}, cuda_count=0)
    assert resolve_device("auto", {"LOCAL_RANK": "3"}, cuda_count=0) == torch.device("cpu")
    assert resolve_device("cpu", {"LOCAL_RANK": "3"}, cuda_count=4) == torch.device("cpu")


def _tree_marked(marker):
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in (p.info["cmdline"] or [])):
                found.append(p)
        except psutil.Error:
            pass
    return found


@pytest.mark.parametrize("whole_group", [True, False], ids=["ctrl-c-group", "sigint-main"])
def test_sigint_leaves_no_job_processes(tmp_path, whole_group):
    sleeper = tmp_path / "sleeper.py"
    sleeper.write_text("import time\ntime.sleep(300)\n")
    (tmp_path / "Snakefile").write_text(
        "rule all:\n    input: expand('out/{i}.txt', i=range(2))\n"
        "rule long:\n    output: 'out/{i}.txt'\n"
        f"    shell: 'touch started.{{wildcards.i}}; {sys.executable} {sleeper}; touch {{output}}'\n"
    )
    args = [
        sys.executable,
        "-m",
        "snakemake",
        "--executor",
        "submitit",
        "--submitit-cluster",
        "local",
        "-j",
        "2",
        "--nocolor",
    ]
    if not whole_group:
        args.append("--submitit-direct-shell")
    proc = subprocess.Popen(
        args,
        cwd=tmp_path,
        env=_env(),
        start_new_session=True,
        preexec_fn=ctrl_c_reaches_it,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 40
        while time.time() < deadline and not ((tmp_path / "started.0").exists() and (tmp_path / "started.1").exists()):
            time.sleep(0.2)
        assert (tmp_path / "started.1").exists(), "jobs did not start"
        assert len(_tree_marked(str(sleeper))) >= 2
        if whole_group:  # what Ctrl-C in a terminal does
            os.killpg(proc.pid, signal.SIGINT)
        else:  # only Snakemake: the plugin's cancel_jobs must stop everything
            os.kill(proc.pid, signal.SIGINT)
        proc.communicate(timeout=30)
        assert proc.returncode != 0
        deadline = time.time() + 5
        while time.time() < deadline and _tree_marked(str(tmp_path)):
            time.sleep(0.2)
        left = [p for p in _tree_marked(str(tmp_path)) if p.status() != psutil.STATUS_ZOMBIE]
        assert not left, [p.cmdline() for p in left]
        assert not (tmp_path / "out" / "0.txt").exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for p in _tree_marked(str(tmp_path)):
            p.kill()


# --- resources -> submitit parameters ---------------------------------------------------


def test_resource_mapping_reaches_sbatch(tmp_path, monkeypatch):
    res = {
        "mem_mb": 2048,
        "runtime": 90,
        "gpu": 2,
        "gpu_model": "a100",
        "slurm_partition": "gpu",
        "slurm_account": "proj",
        "qos": "high",
        "tasks_per_node": 2,
        "nodes": 1,
        "constraint": "ib",
        "slurm_extra": "--exclusive --mail-type=END --comment 'a b'",
        "requeue": 1,
        "tmpdir": "/tmp",
    }
    p = resources.submitit_parameters(res, 3, rule="train", default_runtime=1440, signal_delay_s=120)
    assert p == {
        "name": "smk-train",
        "cpus_per_task": 3,
        "timeout_min": 90,
        "mem_gb": 2.0,
        "gpus_per_node": 2,
        "slurm_gpus_per_node": "a100:2",
        "tasks_per_node": 2,
        "nodes": 1,
        "slurm_partition": "gpu",
        "slurm_account": "proj",
        "slurm_qos": "high",
        "slurm_constraint": "ib",
        "slurm_signal_delay_s": 120,
        "slurm_additional_parameters": {"exclusive": True, "mail-type": "END", "comment": "a b"},
    }
    assert resources.wants_requeue(res, "train") and resources.num_tasks(p) == 2
    # submitit accepts every name, and the sbatch script carries the values (srun
    # detection is submitit's edge to the cluster: fake it)
    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    ex = AutoExecutor(tmp_path, cluster="slurm")
    ex.update_parameters(**p)
    text = ex._executor._make_submission_file_text("true", "uid")
    for line in [
        "--cpus-per-task=3",
        "--mem=2GB",
        "--time=90",
        "--gpus-per-node=a100:2",
        "--partition=gpu",
        "--account=proj",
        "--qos=high",
        "--ntasks-per-node=2",
        "--constraint=ib",
        "--signal=USR2@120",
        "--exclusive",
        "--mail-type=END",
        "--job-name=smk-train",
    ]:
        assert f"#SBATCH {line}" in text, (line, text)
    # defaults: threads -> cpus, default runtime, no GPU; mem_mb 1000 -> 1000MB
    q = resources.submitit_parameters({"mem_mb": 1000}, 1, rule="r", default_runtime=60, signal_delay_s=90)
    ex = AutoExecutor(tmp_path, cluster="slurm")
    ex.update_parameters(**q)
    text = ex._executor._make_submission_file_text("true", "uid")
    assert "#SBATCH --mem=1000MB" in text and "#SBATCH --time=60" in text
    assert "gpus" not in text and not resources.wants_requeue({}, "r")
    assert resources.local_parameters(q, "r") == {
        "timeout_min": 60,
        "tasks_per_node": 1,
        "gpus_per_node": 0,
        "signal_delay_s": 90,
    }


@pytest.mark.parametrize(
    "res, needle",
    [
        ({"runtime": "soon"}, "runtime"),
        ({"gpu": -1}, "gpu"),
        ({"gpu_model": "a100"}, "gpu_model"),
        ({"slurm_extra": "-C ib"}, "slurm_extra"),
        ({"requeue": 2}, "requeue"),
    ],
)
def test_bad_resources_name_rule_and_resource(res, needle):
    with pytest.raises(WorkflowError) as e:
        p = resources.submitit_parameters(res, 1, rule="train", default_runtime=1, signal_delay_s=90)
        resources.wants_requeue(res, "train")
        resources.local_parameters(p, "train")
    assert "rule train" in str(e.value) and needle in str(e.value)
    with pytest.raises(WorkflowError, match="nodes"):
        p = resources.submitit_parameters({"nodes": 2}, 1, rule="t", default_runtime=1, signal_delay_s=90)
        resources.local_parameters(p, "t")


def test_every_setting_has_help_and_a_default():
    from dataclasses import MISSING, fields

    for f in fields(plugin.ExecutorSettings):
        assert f.metadata["help"] and f.default is not MISSING, f.name


@pytest.mark.parametrize(
    "on_path, want",
    [({"sbatch", "srun"}, "slurm"), ({"sbatch"}, "local"), ({"srun"}, "local"), (set(), "local")],
)
def test_auto_cluster_is_slurm_only_with_sbatch_and_srun_on_path(monkeypatch, on_path, want):
    monkeypatch.setattr(plugin.shutil, "which", lambda name: f"/usr/bin/{name}" if name in on_path else None)
    assert plugin.resolve_cluster("auto") == want
    assert plugin.resolve_cluster("local") == "local" and plugin.resolve_cluster("slurm") == "slurm"
    with pytest.raises(WorkflowError, match="auto, slurm or local, got 'pbs'"):
        plugin.resolve_cluster("pbs")


# --- status loop: one batched query per interval ---------------------------------------


class FakeWatcher:
    """Stands in for SlurmWatcher (the plugin's edge to the scheduler)."""

    def __init__(self, states):
        self.states_by_id = states
        self.calls = []

    def states(self, job_ids):
        self.calls.append(list(job_ids))
        return {j: self.states_by_id[j] for j in job_ids if j in self.states_by_id}


def test_status_poller_one_query_per_interval(tmp_path):
    ids = [f"{1000 + i}" for i in range(100)]
    tracked = [status.Tracked(job_id=j, folder=tmp_path) for j in ids]
    for t in tracked[:10]:
        cloudpickle_dump(("success", 0), t.paths.result_pickle)
    for t in tracked[10:15]:
        cloudpickle_dump(
            ("error", "Traceback\nCommandFailed: command exited with status 1"),
            t.paths.result_pickle,
        )
    states = {j: "RUNNING" for j in ids[15:95]}
    states.update({j: "CANCELLED" for j in ids[95:]})
    watcher = FakeWatcher(states)
    now = [0.0]
    poller = status.StatusPoller(watcher, tmp_path, query_interval=10, grace_s=10, clock=lambda: now[0])
    t0 = time.perf_counter()
    out = poller.cycle(tracked)
    assert time.perf_counter() - t0 < 2.0  # nothing blocks on missing result files
    assert len(watcher.calls) == 1 and sorted(watcher.calls[0]) == sorted(ids[15:])
    kinds = [o for o, _ in out]
    assert kinds[:10] == ["success"] * 10 and kinds[10:15] == ["error"] * 5
    assert "status 1" in out[10][1] and kinds[15:] == ["running"] * 85
    # a simulated minute at one cycle per second: one query per 10 s, never one per job
    for second in range(1, 61):
        now[0] = float(second)
        out = poller.cycle(tracked[15:])
    assert len(watcher.calls) == 1 + 6
    assert all(len(c) == 85 or len(c) == 80 for c in watcher.calls)
    # cancelled without a result: an error after a later query and the grace period
    assert [o for o, _ in out][-5:] == ["error"] * 5
    assert "CANCELLED" in out[-1][1] and "without a result" in out[-1][1]


def test_slurm_watcher_batches_and_parses():
    argvs = []

    def fake_sacct(argv):
        argvs.append(argv)
        return "101|COMPLETED\n102_0|RUNNING\n102_[1-7%8]|PENDING\n103|CANCELLED by 0\n103.batch|CANCELLED\n"

    w = status.SlurmWatcher("sacct", run=fake_sacct)
    before = status.SCHEDULER_QUERIES
    got = w.states(["101", "102_0", "102_5", "103", "104"])
    assert len(argvs) == 1 and argvs[0][-1] == "101,102,103,104" and argvs[0][0] == "sacct"
    assert got == {"101": "COMPLETED", "102_0": "RUNNING", "102_5": "PENDING", "103": "CANCELLED"}
    assert status.SCHEDULER_QUERIES == before + 1 and w.calls == 1

    w = status.SlurmWatcher("squeue", run=lambda argv: "102_0|RUNNING\n")
    assert w.states(["102_0", "101"]) == {"102_0": "RUNNING", "101": "GONE"}

    def broken(argv):
        raise subprocess.CalledProcessError(1, argv)

    w = status.SlurmWatcher("sacct", run=broken)
    assert w.states(["1"]) is None and w.command == "squeue"  # no accounting: fall back


# --- requeue on timeout -----------------------------------------------------------------


def _sleeper_past_limit(tmp_path):
    """A command that sleeps past its limit on the first run and succeeds on the second."""
    pidfile, runs = tmp_path / "pid", tmp_path / "runs"
    sleeper = f"import os,time; open('{pidfile}','w').write(str(os.getpid())); time.sleep(60)"
    cmd = f'echo run >> {runs}; if [ $(wc -l < {runs}) -ge 2 ]; then exit 0; fi; {sys.executable} -c "{sleeper}"'
    return cmd, pidfile, runs


def _timeout_job(tmp_path, cls):
    """A command that sleeps past a 4 s limit on its first run and succeeds on its second;
    submitit's local controller sends USR2 2 s before the limit."""
    cmd, pidfile, runs = _sleeper_past_limit(tmp_path)
    ex = LocalExecutor(tmp_path / "sub", max_num_timeout=1)
    ex.update_parameters(timeout_min=4 / 60, signal_delay_s=2)
    job = ex.submit(cls(command=cmd, cwd=str(tmp_path), term_grace_s=1))
    job.wait()
    pid = int(pidfile.read_text())
    alive = psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    return job, runs.read_text().split(), alive


def test_requeue_reruns_command_and_kills_first_run(tmp_path):
    job, runs, alive = _timeout_job(tmp_path, jobs.RequeueableShellCommand)
    assert job.result() == 0 and runs == ["run", "run"]
    assert not alive


def test_no_requeue_without_resource(tmp_path):
    job, runs, alive = _timeout_job(tmp_path, jobs.ShellCommand)
    assert "timed-out and not checkpointable" in str(job.exception())
    assert runs == ["run"] and not alive


# --- single-task local jobs without submitit's processes (local.py) ----------------------


def _settle(runner, job_id, timeout_s=30.0):
    """Poll a local job as the status loop does until it is no longer running."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        outcome, reason = runner.poll(job_id)
        if outcome != "running":
            return outcome, reason
        time.sleep(0.05)
    raise AssertionError(f"local job {job_id} still running after {timeout_s} s")


def _gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("requeue", [True, False], ids=["requeue", "no-requeue"])
def test_a_local_job_at_its_time_limit_is_stopped_and_requeued_only_when_asked(tmp_path, requeue):
    """The limit's signal comes at timeout - signal_delay (3 s - 1 s): the command's group gets
    SIGTERM (SIGKILL after the grace); a requeue=1 job reruns the same command line into the same
    logs, another fails naming the limit."""
    cmd, pidfile, runs = _sleeper_past_limit(tmp_path)
    runner = LocalRunner(tmp_path / "sub", term_grace_s=1, max_requeues=1)
    try:
        job_id = runner.start(f"echo out; echo err >&2; {cmd}", str(tmp_path), 3 / 60, 1, requeue=requeue)
        outcome, reason = _settle(runner, job_id)
    finally:
        runner.close()
    assert _gone(int(pidfile.read_text()))
    paths = JobPaths(tmp_path / "sub", job_id=job_id, task_id=0)
    if requeue:
        assert (outcome, runs.read_text().split()) == ("success", ["run", "run"])
        assert paths.stdout.read_text().split() == ["out", "out"] and paths.stderr.read_text().split() == ["err", "err"]
    else:
        assert outcome == "error" and "timed out after 0.05 min" in reason and runs.read_text().split() == ["run"]


def test_a_local_job_runs_with_submitit_s_environment_and_its_leftovers_are_stopped(tmp_path):
    """The command sees SUBMITIT_EXECUTOR=local (warm start keys on it) and only the GPUs it asked
    for; a process it left in its group is stopped after the job succeeds; a failure is named."""
    runner = LocalRunner(tmp_path / "sub", term_grace_s=1, max_requeues=0)
    try:
        ok = runner.start(
            f"echo $SUBMITIT_EXECUTOR/$CUDA_VISIBLE_DEVICES > env.txt; {sys.executable} -c 'import time; time.sleep(60)' &"
            " echo $! > left.pid",
            str(tmp_path),
            5,
            0,
            gpus_per_node=2,
        )
        assert _settle(runner, ok) == ("success", "")
        bad = runner.start("exit 3", str(tmp_path), 5, 0)
        assert _settle(runner, bad) == ("error", "command exited with status 3")
        left = int((tmp_path / "left.pid").read_text())
        end = time.monotonic() + 10
        while not _gone(left) and time.monotonic() < end:
            time.sleep(0.1)
    finally:
        runner.close()
    assert (tmp_path / "env.txt").read_text().strip() == "local/0,1"
    assert _gone(left)


def test_the_watchdog_stops_local_jobs_when_their_driver_is_killed(tmp_path):
    """kill -9 of the process that started a local job: the run's watchdog sees its pipe end and
    stops the job's process group (SIGTERM; SIGKILL after the grace)."""
    driver = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from snakemake_executor_plugin_submitit.local import LocalRunner; "
            f"r = LocalRunner({str(tmp_path / 'sub')!r}, 1, 0); "
            "print(r.start('sleep 300 & echo $! > child.pid; wait', sys.argv[1], 5, 0), flush=True); time.sleep(300)",
            str(tmp_path),
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        job = int(driver.stdout.readline())
        end = time.monotonic() + 10
        while not (tmp_path / "child.pid").exists() and time.monotonic() < end:
            time.sleep(0.05)
        child = int((tmp_path / "child.pid").read_text())
        assert not _gone(job) and not _gone(child)
        driver.kill()
        driver.wait()
        end = time.monotonic() + 10
        while not (_gone(job) and _gone(child)) and time.monotonic() < end:
            time.sleep(0.1)
        assert _gone(job) and _gone(child)
    finally:
        driver.kill()


def test_the_files_of_an_earlier_job_with_the_same_pid_are_set_aside(tmp_path):
    """A local job id is a PID, which the system may give again: the earlier job's result and logs
    are renamed, nothing else of the folder (another id sharing the prefix, submitit's pickles)."""
    names = ["42_0_log.err", "42_0_log.out", "42_0_result.pkl", "42_submitted.pkl", "421_0_log.err"]
    for n in names:
        (tmp_path / n).write_text(n)
    retire_stale_files(tmp_path, "42")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert [n for n in left if not n.startswith("old-")] == ["421_0_log.err", "42_submitted.pkl"]
    assert sorted(n.split("-", 2)[2] for n in left if n.startswith("old-")) == names[:3]
