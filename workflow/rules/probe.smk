# Position-wise information-decay probe (docs/evaluation.md): the start, continuation and
# TokenDrift checkpoints of each backbone (first seed, long step), one forward pass over
# validation prompts followed by a masked (MDLM) or fully noised (DUO) span.


rule probe:
    input:
        G.probe_inputs,
    output:
        G.probe_file("{backbone}", "probe.json"),
        report(G.probe_file("{backbone}", "probe.png"), caption="../report/probe.rst", category="Figures",
               subcategory="Probe", labels={"figure": "probe {backbone}"}),
        G.probe_file("{backbone}", "probe.pdf"),
        G.probe_file("{backbone}", "top3.md"),
    params:
        env=G.job_env,
        args=G.probe_args,
        code=G.report_digest,
    log:
        G.log("probe"),
    threads: 1
    conda:
        CONDA_ENV
    shell:
        JOB_ENV + "tokendrift probe {params.args:q} > {log:q} 2>&1"


rule probe_all:
    input:
        G.probe_targets,
