# TokenDrift: the paper's tables and figures as a DAG (README.md, "Running the pipeline").
#   snakemake all_tables                              # the embedded default, Snakemake's local executor
#   snakemake --profile profiles/local all_tables     # the embedded default on a laptop
#   snakemake --profile profiles/slurm all_tables     # the paper config on a Slurm cluster
# The profile names the config file (--configfile replaces it; with neither, the embedded
# default); the grid of table cells is expanded by tokendrift.grid from that config, validated
# by workflow/schemas/config.schema.yaml. profiles/default is the workflow profile (every run).
from snakemake.utils import min_version

min_version("9.0")


include: "workflow/rules/common.smk"
include: "workflow/rules/fetch.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/start.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/probe.smk"


rule all:
    default_target: True
    input:
        rules.all_tables.input,
