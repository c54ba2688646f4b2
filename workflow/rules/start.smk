# The starting ("released") checkpoints and the Gen.-PPL evaluator: pretrained from scratch
# (embedded default) or imported from the released files (paper).


rule pretrain_start:
    input:
        G.job_inputs,
    output:
        G.pretrain_done("{backbone}"),
    params:
        env=G.job_env,
        args=G.pretrain_args,
        code=G.code_digest,
    log:
        G.log("pretrain_start"),
    threads: 2
    priority: 10  # every other job waits on the starts and the evaluator: schedule them first
    resources:
        requeue=1,
    conda:
        CONDA_ENV
    shell:
        JOB_ENV + "tokendrift pretrain {params.args:q} > {log:q} 2>&1"


rule import_start:
    input:
        G.job_inputs,
    output:
        G.import_done("{backbone}"),
    params:
        env=G.job_env,
        args=G.import_args,
        code=G.code_digest,
    log:
        G.log("import_start"),
    localrule: True  # a conversion of fetched files, offline like every job
    conda:
        CONDA_ENV
    shell:
        JOB_ENV + "tokendrift checkpoint import {params.args:q} > {log:q} 2>&1"


rule pretrain_evaluator:
    input:
        G.job_inputs,
    output:
        G.evaluator_done,
    params:
        env=G.job_env,
        args=G.evaluator_args,
        code=G.code_digest,
    log:
        G.log("pretrain_evaluator"),
    threads: 2
    priority: 10
    resources:
        requeue=1,
    conda:
        CONDA_ENV
    shell:
        JOB_ENV + "tokendrift pretrain {params.args:q} > {log:q} 2>&1"
