# Tables 1-6 (Markdown, LaTeX, CSV, an HTML page and the baseline gate), Figure 2 and the
# quality-diversity figure, built from the score files; then the one MLflow writer imports every
# result file (tokendrift.tracking).
# These jobs rebuild the grid from the same config the workflow read (passed as JSON).
CONFIG_ARG = f"--config-json {shlex.quote(json.dumps(config))} --schema {G.schema}"

# Snakemake's report (`snakemake ... all_tables --report report.html`): the front page
# (workflow/report/workflow.rst) shows every table and figure; each table's HTML page, the
# figures and the probe plots are also items of their own, grouped by table, each with a caption
# from workflow/report/.
report: "../report/workflow.rst"


def table_category(table):
    return f"Table {table[5:]}" if table[5:].isdigit() else table


for _table in G.tables:
    _md, _tex, _csv, _html, _gate = G.table_outputs(_table)

    rule:
        name:
            _table
        input:
            G.table_inputs(_table),
        output:
            _md,
            _tex,
            _csv,
            report(_html, caption="../report/table.rst", category=table_category(_table), subcategory="Table",
                   labels={"table": table_category(_table), "content": G.tables[_table]["title"]}),
            _gate,
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
        report(G.figure_outputs("figure2")[0], caption="../report/figure2.rst", category="Figures", subcategory="Figures",
               labels={"figure": "Figure 2: Gen.-PPL against training step"}),
        G.figure_outputs("figure2")[1],
        G.report_html("figure2"),
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
        report(G.figure_outputs("quality_diversity")[0], caption="../report/quality_diversity.rst", category="Figures", subcategory="Figures",
               labels={"figure": "Quality vs diversity (all tables)"}),
        G.figure_outputs("quality_diversity")[1],
        G.report_html("quality_diversity"),
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
