# The paper's tables and the config's own (Markdown, LaTeX, CSV, an HTML page and the baseline
# gate) and the figures (tokendrift.grid.FIGURES), built from the score files; then the one MLflow
# writer imports every result file (tokendrift.tracking).
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


for _figure, (_title, _) in FIGURES.items():
    _image, *_files = G.figure_outputs(_figure)

    rule:
        name:
            _figure
        input:
            G.figure_inputs(_figure),
        output:
            report(_image, caption=f"../report/{_figure}.rst", category="Figures", subcategory="Figures",
                   labels={"figure": _title}),
            _files,
            G.report_html(_figure),
        params:
            config=CONFIG_ARG,
            figure=_figure,
            code=G.report_digest,
        localrule: True
        shell:
            "tokendrift aggregate {params.config} --figure {params.figure}"


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
