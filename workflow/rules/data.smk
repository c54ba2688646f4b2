# The data stage: a text source (OpenWebText, a .txt folder) tokenized once, streamed into flat
# token files that every training, NELBO, sampling and probe job maps read-only. One job per
# source config, whatever the number of runs. The synthetic language needs none; its entropy
# rate (the oracle Gen.-PPL floor of the tables and figures) is computed once instead.

if G.prepared:

    rule prepare_data:
        input:
            G.manifest,
        output:
            G.prepared,
        params:
            env=G.job_env,
            args=G.source_args,
        log:
            G.log("prepare_data"),
        threads: G.source["num_proc"]
        resources:
            requeue=1,
        conda:
            CONDA_ENV
        shell:
            JOB_ENV + "tokendrift prepare {params.args:q} > {log:q} 2>&1"


if G.entropy_rate_file:

    rule entropy_rate:
        output:
            G.entropy_rate_file,
        params:
            env=G.job_env,
            args=G.source_args,
        log:
            G.log("entropy_rate"),
        threads: 1
        priority: 10  # seconds of work that every table and figure waits on: not left for the end
        conda:
            CONDA_ENV
        shell:
            JOB_ENV + "tokendrift entropy-rate {params.args:q} --out {output:q} > {log:q} 2>&1"
