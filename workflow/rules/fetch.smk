# Downloads, only where the network is: each item the study reads from outside (dataset files,
# tokenizer, evaluator, released start checkpoints) is fetched by a local rule (the login node)
# into the project's Hugging Face cache, with a manifest of its files and their sha256. Compute
# jobs run offline against that cache (G.job_env). `snakemake --profile <p> fetch` runs alone.

if G.fetch_items:

    rule fetch_item:
        output:
            G.fetch_file("{item}"),
        params:
            env=G.fetch_env,
            args=G.fetch_args,
        log:
            G.log("fetch_item"),
        wildcard_constraints:
            item="|".join(G.fetch_items),
        localrule: True
        conda:
            CONDA_ENV
        shell:
            FETCH_ENV + "tokendrift fetch {params.args:q} --out {output:q} > {log:q} 2>&1"

    rule fetch_manifest:
        input:
            [G.fetch_file(i) for i in G.fetch_items],
        output:
            G.manifest,
        log:
            G.log("fetch_manifest"),
        localrule: True
        conda:
            CONDA_ENV
        shell:
            "tokendrift fetch manifest {input:q} --out {output:q} > {log:q} 2>&1"


rule fetch:
    input:
        G.manifest,
