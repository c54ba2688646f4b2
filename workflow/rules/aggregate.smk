# Tables 1-6 (Markdown, LaTeX, CSV), Figure 2 and the quality-diversity figure, built from the
# score files; then the one MLflow writer imports every result file (tokendrift.tracking).
# These jobs rebuild the grid from the same config the workflow read (passed as JSON).
CONFIG_ARG = f"--config-json {shlex.quote(json.dumps(config))} --schema {G.schema}"


for _table in G.tables:

    rule:
        name:
            _table
        input:
            G.table_inputs(_table),
        output:
            G.table_outputs(_table),
        params:
            config=CONFIG_ARG,
            table=_table,
            code=G.report_digest,
        localrule: True
        shell:
            "tokendrift aggregate {params.config} --table {params.table}"


rule figure2:
    input:
        G.figure2_inputs(),
    output:
        G.figure_outputs("figure2"),
    params:
        config=CONFIG_ARG,
        code=G.report_digest,
    localrule: True
    shell:
        "tokendrift aggregate {params.config} --figure figure2"


rule quality_diversity:
    input:
        sorted({f for t in G.tables for f in G.table_inputs(t)}),
    output:
        G.figure_outputs("quality_diversity"),
    params:
        config=CONFIG_ARG,
        code=G.report_digest,
    localrule: True
    shell:
        "tokendrift aggregate {params.config} --figure quality_diversity"


rule track:
    input:
        G.all_outputs(),
    output:
        f"{ROOT}/tracking/imported.json",
    params:
        config=CONFIG_ARG,
        code=G.report_digest,
    localrule: True
    shell:
        "tokendrift track {params.config}"


rule all_tables:
    input:
        G.all_outputs(),
        f"{ROOT}/tracking/imported.json",
