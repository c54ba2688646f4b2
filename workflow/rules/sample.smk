# One job per checkpoint (backbone, model, seed, step): the backbone's own sampler at every
# NFE of the config; the starting checkpoint also over the temperature sweep (matched-entropy
# control). Each sample folder is written atomically.


rule sample_run:
    input:
        lambda w: G.checkpoint_done(w.backbone, getattr(w, "model", "start"), int(w.seed)),
        G.job_inputs,
    output:
        G.unit_patterns("samples", start=False, leaf="/meta.json"),
    params:
        ckpt=lambda w: G.unit_checkpoint(G.unit(w)),
        out=lambda w: f"{G.unit_dir('samples', G.unit(w))}/T{{temperature}}_nfe{{nfe}}",
        temps=lambda w: " ".join(map(str, G.temperatures(G.unit(w).model))),
        nfe=" ".join(map(str, G.nfes)),
        opts=(f"--n-samples {G.config['sample']['n_samples']} --batch-size {G.config['sample']['batch_size']} "
              f"--precision {G.config['sample']['precision']} {G.device_arg('sample')}"),
        code=G.code_digest,
    log:
        f"{LOGS}/sample/{{backbone}}/{{model}}/seed{{seed}}_step{{step}}.log",
    wildcard_constraints:
        model="(?!start/)[a-z0-9_]+",
    threads: 1
    shell:
        G.job_env + THREADS + "tokendrift sample {params.ckpt} --nfe {params.nfe} --temperature {params.temps} "
        "--seed {wildcards.seed} {params.opts} --out {params.out:q} > {log} 2>&1"


use rule sample_run as sample_start with:
    output:
        G.unit_patterns("samples", start=True, leaf="/meta.json"),
    log:
        f"{LOGS}/sample/{{backbone}}/start/seed{{seed}}.log",
