# Continual training: one job per (backbone, run of the sheet, seed). The output is the run's
# done.json; its checkpoints/ folder is not an output, so Snakemake never deletes it before a
# rerun or a requeue, and the job resumes from checkpoints/last.


rule train:
    input:
        G.train_inputs,
    output:
        G.checkpoint_done("{backbone}", "{model}", "{seed}"),
    params:
        env=G.job_env,
        args=G.train_args,
        code=G.code_digest,
    log:
        G.log("train"),
    threads: 1
    resources:
        requeue=1,
    conda:
        CONDA_ENV
    shell:
        JOB_ENV + "tokendrift train {params.args:q} > {log:q} 2>&1"
