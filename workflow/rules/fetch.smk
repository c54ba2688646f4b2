# Downloads, only where the network is: each item the study reads from outside (dataset files,
# tokenizer, evaluator, released start checkpoints) is fetched by a local rule (the login node)
# into the project's Hugging Face cache, with a manifest of its files and their sha256. Compute
# jobs run offline against that cache (G.job_env). `snakemake --profile <p> fetch` runs alone.

if G.fetch_items:

    rule fetch_item:
        output:
            G.fetch_file("{item}"),
        params:
            what=lambda w: G.fetch_items[w.item][0],
            spec=lambda w: G.fetch_items[w.item][1],
        log:
            f"{LOGS}/fetch/{{item}}.log",
        wildcard_constraints:
            item="|".join(G.fetch_items),
        localrule: True
        shell:
            G.fetch_env + "tokendrift fetch {params.what} {params.spec:q} --item {wildcards.item} --out {output} > {log} 2>&1"

    rule fetch_manifest:
        input:
            [G.fetch_file(i) for i in G.fetch_items],
        output:
            G.manifest,
        localrule: True
        shell:
            "tokendrift fetch manifest {input} --out {output}"


rule fetch:
    input:
        G.manifest,
