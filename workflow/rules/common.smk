# Reads and validates the config and expands the grid (tokendrift.grid): every rule asks G, the
# rule adapter (tokendrift.grid.rules), for its paths, inputs and job arguments.
from snakemake.exceptions import WorkflowError

from tokendrift.core.utils import TokenDriftError
from tokendrift.report.figures import FIGURES
from tokendrift.report.status import end_driver, record_driver, stops_jobs
from tokendrift.grid.rules import workflow_grid
from tokendrift.report.figures import FIGURES
from tokendrift.report.status import end_driver, record_driver, stops_jobs
from tokendrift.core.utils import TokenDriftError

try:
    G = workflow_grid(config, workflow.basedir, workflow.config_settings.configfiles)
except TokenDriftError as e:
    raise WorkflowError(f"invalid config: {e}") from None

CONDA_ENV = "../../envs/tokendrift.yaml"

# Every value a shell line substitutes is quoted (`:q`; a list param is an argument list, each
# element quoted): a path or name of the config is data, never shell. A compute job's shell line
# starts with its environment (G.job_env) and exactly the CPUs Snakemake gives it (torch reads
# OMP_NUM_THREADS at start-up); a fetch job's with the project's Hugging Face cache (G.fetch_env).
JOB_ENV = "export {params.env:q} OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads};"
FETCH_ENV = "export {params.env:q};"


# Every job's completion record checked against the files it lists (size, SHA-256): the outputs of
# a job whose files were cut short or altered are marked incomplete, so that this run reruns that
# job (and what depends on it), with a message naming the file and the job. The driver alone
# checks: not the Snakemake of one job.
if not (workflow.remote_exec or workflow.subprocess_exec):
    G.verify_records()


# The driver's liveness (tokendrift.report.status): recorded when this Snakemake starts running jobs, with
# a heartbeat, and removed when it ends; a record left behind tells `tokendrift status` that the
# driver was killed.
onstart:
    record_driver(stops=stops_jobs(workflow))


onsuccess:
    end_driver()


onerror:
    end_driver()
