# One job per checkpoint (backbone, model, seed, step): the backbone's own sampler at every
# NFE of the config; the starting checkpoint also over the temperature sweep (matched-entropy
# control). Each sample folder is written atomically.


rule sample_run:
    input:
        G.sample_inputs,
    output:
        G.sample_outputs(start=False),
    params:
        env=G.job_env,
        args=G.sample_args,
        code=G.code_digest,
    log:
        G.log("sample_run"),
    wildcard_constraints:
        model="(?!start/)[a-z0-9_]+",
    threads: 1
    conda:
        CONDA_ENV
    shell:
        JOB_ENV + "tokendrift sample {params.args:q} > {log:q} 2>&1"


use rule sample_run as sample_start with:
    output:
        G.sample_outputs(start=True),
    log:
        G.log("sample_start"),
    priority: 5  # the temperature sweep is the longest sampling job, and every table's control row waits on it
