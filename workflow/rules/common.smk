# Reads and validates the config, expands the grid (tokendrift.grid) and names the paths.
import json
import os
import shlex

from snakemake.exceptions import WorkflowError

from tokendrift.grid import FIGURES, Grid
from tokendrift.utils import TokenDriftError

if not workflow.config_settings.configfiles:
    # No --configfile (nor a profile naming one): the embedded default, with any --config key=value on top.
    from tokendrift.config import load_file
    from tokendrift.grid import deep_merge

    _default = deep_merge(load_file(os.path.join(workflow.basedir, "workflow", "config", "default.yaml")), config)
    config.clear()
    config.update(_default)
try:
    G = Grid(config, os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml"))
except TokenDriftError as e:
    raise WorkflowError(f"invalid config: {e}") from None

ROOT = str(G.root)
LOGS = f"{ROOT}/logs"
# Jobs use exactly the CPUs Snakemake gives them (torch reads OMP_NUM_THREADS at start-up).
THREADS = "export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads};"


wildcard_constraints:
    backbone="mdlm|duo",
    model="[a-z0-9_]+",
    seed=r"\d+",
    step=r"\d+",
