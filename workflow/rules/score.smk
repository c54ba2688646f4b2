# One job per checkpoint: Gen.-PPL under the evaluator (and the oracle when the source has
# one) plus sample entropy for each of its sample folders, and its held-out NELBO per token.


rule score_run:
    input:
        unpack(G.score_inputs),
    output:
        scores=G.score_outputs(start=False),
        nelbo=G.nelbo_output(start=False),
    params:
        env=G.job_env,
        args=G.score_args,
        code=G.code_digest,
    log:
        G.log("score_run"),
    wildcard_constraints:
        model="(?!start/)[a-z0-9_]+",
    threads: 1
    conda:
        CONDA_ENV
    shell:
        JOB_ENV + "tokendrift score {params.args:q} --out {output.scores:q} --nelbo-out {output.nelbo:q} > {log:q} 2>&1"


use rule score_run as score_start with:
    output:
        scores=G.score_outputs(start=True),
        nelbo=G.nelbo_output(start=True),
    log:
        G.log("score_start"),
    priority: 5  # as sample_start: every table's control row waits on it
