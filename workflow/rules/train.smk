# Continual training: one job per (backbone, run of the sheet, seed). The output is the run's
# done.json; its checkpoints/ folder is not an output, so Snakemake never deletes it before a
# rerun or a requeue, and the job resumes from checkpoints/last.


rule train:
    input:
        lambda w: G.start_done(w.backbone),
        G.job_inputs,
    output:
        f"{ROOT}/train/{{backbone}}/{{model}}/seed{{seed}}/done.json",
    params:
        job=lambda w: json.dumps(G.train_config(w.backbone, w.model, int(w.seed))),
        out=lambda w: G.train_dir(w.backbone, w.model, int(w.seed)),
        code=G.code_digest,
    log:
        f"{LOGS}/train/{{backbone}}/{{model}}/seed{{seed}}.log",
    threads: 1
    resources:
        requeue=1,
    shell:
        G.job_env + THREADS + "tokendrift train --config-json {params.job:q} --out {params.out} --discard-stale > {log} 2>&1"
