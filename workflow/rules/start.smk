# The starting ("released") checkpoints and the Gen.-PPL evaluator: pretrained from scratch
# (embedded default) or imported from the released files (paper).


rule pretrain_start:
    input:
        G.job_inputs,
    output:
        f"{ROOT}/start/{{backbone}}/pretrain/done.json",
    params:
        job=lambda w: json.dumps(G.pretrain_config(w.backbone)),
        out=lambda w: f"{ROOT}/start/{w.backbone}/pretrain",
        code=G.code_digest,
    log:
        f"{LOGS}/start/{{backbone}}.log",
    threads: 2
    resources:
        requeue=1,
    shell:
        G.job_env + THREADS + "tokendrift pretrain {wildcards.backbone} --config-json {params.job:q} --out {params.out} "
        "--discard-stale > {log} 2>&1"


rule import_start:
    input:
        G.job_inputs,
    output:
        f"{ROOT}/start/{{backbone}}/imported/meta.json",
    params:
        src=lambda w: G.config["start"][w.backbone]["import"],
        source=json.dumps(G.config["source"]),
        model=lambda w: json.dumps(G.config["start"][w.backbone].get("model", {"preset": "small"})),
        out=lambda w: f"{ROOT}/start/{w.backbone}/imported",
        code=G.code_digest,
    log:
        f"{LOGS}/start/{{backbone}}_import.log",
    localrule: True  # a conversion of fetched files, offline like every job
    shell:
        G.job_env + "tokendrift checkpoint import {params.src:q} {params.out} --diffusion {wildcards.backbone} "
        "--model-json {params.model:q} --source-json {params.source:q} > {log} 2>&1"


rule pretrain_evaluator:
    input:
        G.job_inputs,
    output:
        f"{ROOT}/evaluator/pretrain/metrics.json",
    params:
        job=json.dumps(G.evaluator_config()) if "pretrain" in G.config["evaluator"] else "",
        out=f"{ROOT}/evaluator/pretrain",
        code=G.code_digest,
    log:
        f"{LOGS}/evaluator.log",
    threads: 2
    resources:
        requeue=1,
    shell:
        G.job_env + THREADS + "tokendrift pretrain evaluator --config-json {params.job:q} --out {params.out} > {log} 2>&1"
