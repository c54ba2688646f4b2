# The starting ("released") checkpoints and the Gen.-PPL evaluator: pretrained from scratch
# (embedded default) or imported from the released files (paper).


rule pretrain_start:
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
        THREADS + "tokendrift pretrain {wildcards.backbone} --config-json {params.job:q} --out {params.out} "
        "--discard-stale > {log} 2>&1"


rule import_start:
    output:
        f"{ROOT}/start/{{backbone}}/imported/meta.json",
    params:
        src=lambda w: G.config["start"][w.backbone]["import"],
        source=json.dumps(G.config["source"]),
        out=lambda w: f"{ROOT}/start/{w.backbone}/imported",
        code=G.code_digest,
    log:
        f"{LOGS}/start/{{backbone}}_import.log",
    localrule: True  # downloads: login node
    shell:
        "tokendrift checkpoint import {params.src:q} {params.out} --diffusion {wildcards.backbone} "
        "--source-json {params.source:q} > {log} 2>&1"


rule pretrain_evaluator:
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
        THREADS + "tokendrift pretrain evaluator --config-json {params.job:q} --out {params.out} > {log} 2>&1"
