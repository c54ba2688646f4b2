# Reads and validates the config and expands the grid (tokendrift.grid): every rule asks G for
# its paths, inputs and job arguments.
from snakemake.exceptions import WorkflowError

from tokendrift.grid import FIGURES, workflow_grid
from tokendrift.utils import TokenDriftError

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


wildcard_constraints:
    backbone="mdlm|duo",
    model="[a-z0-9_]+",
    seed=r"\d+",
    step=r"\d+",
