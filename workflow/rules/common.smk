# Reads and validates the config, expands the grid (tokendrift.grid) and names the paths.
import json
import os
import shlex

from snakemake.exceptions import WorkflowError

from tokendrift.grid import Grid
from tokendrift.utils import TokenDriftError

if not config:
    raise WorkflowError("no config: use a profile (--profile profiles/local) or --configfile workflow/config/<name>.yaml")
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
