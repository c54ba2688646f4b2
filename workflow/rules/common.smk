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


wildcard_constraints:
    backbone="mdlm|duo",
    model="[a-z0-9_]+",
    seed=r"\d+",
    step=r"\d+",
