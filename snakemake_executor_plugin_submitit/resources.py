"""Rule resources -> submitit parameters.

The resource names a rule may set (all optional):

==================  ==============================================================
resource            submitit parameter (AutoExecutor spelling) / effect
==================  ==============================================================
threads (rule)      ``cpus_per_task`` (also passed as ``--cores`` to the job)
cpus_per_task       ``cpus_per_task``; wins over ``threads``
mem_mb              ``mem_gb = mem_mb / 1024`` (Slurm ``--mem``, GiB-based)
mem_mb_per_cpu      ``slurm_mem_per_cpu`` (instead of ``mem_gb``)
runtime             ``timeout_min`` (minutes; Snakemake parses "2h" etc.)
gpu | gpus |        ``gpus_per_node``
gpus_per_node
gpu_model           ``slurm_gpus_per_node = "<model>:<n>"`` (needs a gpu count)
slurm_partition     ``slurm_partition``
slurm_account       ``slurm_account``
qos | slurm_qos     ``slurm_qos``
constraint          ``slurm_constraint``
tasks_per_node      ``tasks_per_node`` (data-parallel: one process per task)
nodes               ``nodes``
slurm_extra         ``slurm_additional_parameters`` parsed from "--flag[=value] ..."
requeue             0/1: submit as a checkpointable callable that is requeued on
                    timeout or preemption (see ``jobs.RequeueableShellCommand``)
==================  ==============================================================

A rule without ``runtime`` gets the executor setting ``default_runtime`` (submitit
always writes ``--time``; its own default would be 5 minutes).
"""

import shlex
from collections.abc import Mapping
from typing import Any

from snakemake_interface_common.exceptions import WorkflowError

GPU_NAMES = ("gpu", "gpus", "gpus_per_node")


def _int(resources: Mapping[str, Any], name: str, rule: str, minimum: int) -> int | None:
    """Read resource `name` as an integer >= minimum; None when unset."""
    value = resources.get(name)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or isinstance(value, float)
        and value.is_integer()
        or isinstance(value, str)
        and value.strip().lstrip("+").isdigit()
    ):
        value = int(value)
    if not isinstance(value, int) or value < minimum:
        raise WorkflowError(f"rule {rule}: resource {name}={value!r} must be an integer >= {minimum}")
    return value


def _str(resources: Mapping[str, Any], name: str) -> str | None:
    value = resources.get(name)
    if value is None or value == "":
        return None
    return str(value)


def parse_slurm_extra(extra: str, rule: str) -> dict[str, Any]:
    """Parse ``slurm_extra`` ("--exclusive --mail-type=END --comment 'a b'") into
    submitit's ``slurm_additional_parameters`` (flag -> value, True for bare flags)."""
    try:
        tokens = shlex.split(extra)
    except ValueError as e:
        raise WorkflowError(f"rule {rule}: resource slurm_extra={extra!r}: {e}")
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or len(tok) < 3:
            raise WorkflowError(
                f"rule {rule}: resource slurm_extra={extra!r}: expected long options like --name=value, got {tok!r}"
            )
        key, sep, value = tok[2:].partition("=")
        if sep:
            out[key] = value
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("-"):
            out[key] = tokens[i + 1]
            i += 1
        else:
            out[key] = True
        i += 1
    return out


def wants_requeue(resources: Mapping[str, Any], rule: str) -> bool:
    """True when the rule sets resource ``requeue=1``."""
    value = _int(resources, "requeue", rule, 0)
    if value is not None and value > 1:
        raise WorkflowError(f"rule {rule}: resource requeue={value!r} must be 0 or 1")
    return bool(value)


def submitit_parameters(
    resources: Mapping[str, Any],
    threads: int,
    *,
    rule: str,
    default_runtime: int,
    signal_delay_s: int,
) -> dict[str, Any]:
    """Map one job's resources to submitit ``AutoExecutor.update_parameters`` kwargs.

    Generic names (timeout_min, mem_gb, cpus_per_task, gpus_per_node, tasks_per_node,
    nodes, name) apply to every cluster; ``slurm_*`` names only to Slurm.
    """
    p: dict[str, Any] = {"name": f"smk-{rule}"}
    cpus = _int(resources, "cpus_per_task", rule, 1)
    p["cpus_per_task"] = cpus if cpus is not None else max(1, int(threads or 1))

    runtime = _int(resources, "runtime", rule, 1)
    p["timeout_min"] = runtime if runtime is not None else int(default_runtime)

    mem_per_cpu = _int(resources, "mem_mb_per_cpu", rule, 1)
    mem_mb = _int(resources, "mem_mb", rule, 1)
    if mem_per_cpu is not None:
        p["slurm_mem_per_cpu"] = f"{mem_per_cpu}MB"
    elif mem_mb is not None:
        p["mem_gb"] = mem_mb / 1024

    gpus = None
    for name in GPU_NAMES:
        gpus = _int(resources, name, rule, 0)
        if gpus is not None:
            break
    model = _str(resources, "gpu_model")
    if model is not None and not gpus:
        raise WorkflowError(f"rule {rule}: resource gpu_model={model!r} needs gpu >= 1")
    if gpus:
        p["gpus_per_node"] = gpus
        if model is not None:
            p["slurm_gpus_per_node"] = f"{model}:{gpus}"

    tasks = _int(resources, "tasks_per_node", rule, 1)
    if tasks is not None:
        p["tasks_per_node"] = tasks
    nodes = _int(resources, "nodes", rule, 1)
    if nodes is not None:
        p["nodes"] = nodes

    for name, key in (
        ("slurm_partition", "slurm_partition"),
        ("slurm_account", "slurm_account"),
        ("qos", "slurm_qos"),
        ("slurm_qos", "slurm_qos"),
        ("constraint", "slurm_constraint"),
    ):
        value = _str(resources, name)
        if value is not None:
            p[key] = value
    extra = _str(resources, "slurm_extra")
    if extra is not None:
        p["slurm_additional_parameters"] = parse_slurm_extra(extra, rule)
    p["slurm_signal_delay_s"] = int(signal_delay_s)
    return p


def local_parameters(params: Mapping[str, Any], rule: str) -> dict[str, Any]:
    """The subset of `params` that submitit's LocalExecutor understands.

    Local jobs run on this machine: CPUs and memory are not enforced; ``gpus_per_node``
    sets CUDA_VISIBLE_DEVICES to the first N devices; ``nodes`` must be 1.
    """
    if params.get("nodes", 1) != 1:
        raise WorkflowError(
            f"rule {rule}: resource nodes={params['nodes']} needs Slurm (--submitit-cluster local runs on one node)"
        )
    out = {
        "timeout_min": params["timeout_min"],
        "tasks_per_node": params.get("tasks_per_node", 1),
        "gpus_per_node": params.get("gpus_per_node", 0),
        "signal_delay_s": params["slurm_signal_delay_s"],
    }
    return out


def num_tasks(params: Mapping[str, Any]) -> int:
    """Processes the job starts: nodes x tasks_per_node."""
    return int(params.get("nodes", 1)) * int(params.get("tasks_per_node", 1))
