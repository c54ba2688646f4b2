# The data stage: a text source (OpenWebText, a .txt folder) tokenized once, streamed into flat
# token files that every training, NELBO, sampling and probe job maps read-only. One job per
# source config, whatever the number of runs; the synthetic language needs none.

if G.prepared:

    rule prepare_data:
        input:
            G.manifest,
        output:
            G.prepared,
        params:
            source=json.dumps(G.config["source"]),
        log:
            f"{LOGS}/prepare_data.log",
        threads: G.source["num_proc"]
        resources:
            requeue=1,
        shell:
            G.job_env + THREADS + "tokendrift prepare --source-json {params.source:q} > {log} 2>&1"
