# One job per checkpoint: Gen.-PPL under the evaluator (and the oracle when the source has
# one) plus sample entropy for each of its sample folders, and its held-out NELBO per token.


def score_inputs(w):
    u = G.unit(w)
    return {"samples": [f"{G.sample_dir(u, t, n)}/meta.json" for t, n in G.cells(u)],
            "evaluator": G.evaluator_inputs(), "checkpoint": G.checkpoint_done(u.backbone, u.model, u.seed),
            "data": G.job_inputs}


rule score_run:
    input:
        unpack(score_inputs),
    output:
        scores=G.unit_patterns("scores", start=False, leaf=".json"),
        nelbo=f"{ROOT}/scores/{{backbone}}/{{model}}/seed{{seed}}/step{{step}}/nelbo.json",
    params:
        samples=lambda w: " ".join(str(G.sample_dir(G.unit(w), t, n)) for t, n in G.cells(G.unit(w))),
        ckpt=lambda w: G.unit_checkpoint(G.unit(w)),
        evaluator=G.evaluator(),
        opts=(f"--batch-size {G.config['score']['batch_size']} --max-length {G.config['score']['max_length']} "
              f"{G.device_arg('score')} --nelbo-batches {G.config['nelbo']['n_batches']} "
              f"--nelbo-batch-size {G.config['nelbo']['batch_size']} --nelbo-n-t {G.config['nelbo']['n_t']}"),
        code=G.code_digest,
    log:
        f"{LOGS}/score/{{backbone}}/{{model}}/seed{{seed}}_step{{step}}.log",
    wildcard_constraints:
        model="(?!start/)[a-z0-9_]+",
    threads: 1
    shell:
        G.job_env + THREADS + "tokendrift score {params.samples} --out {output.scores} --evaluator {params.evaluator:q} {params.opts} "
        "--checkpoint {params.ckpt} --nelbo-out {output.nelbo} --nelbo-seed {wildcards.seed} > {log} 2>&1"


use rule score_run as score_start with:
    output:
        scores=G.unit_patterns("scores", start=True, leaf=".json"),
        nelbo=f"{ROOT}/scores/{{backbone}}/start/seed{{seed}}/step0/nelbo.json",
    log:
        f"{LOGS}/score/{{backbone}}/start/seed{{seed}}.log",
