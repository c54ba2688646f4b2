# The paper's tables and the config's own (Markdown, LaTeX, CSV, an HTML page and the baseline
# gate) and the figures (tokendrift.grid.sheet.FIGURES), built from the score files; then the one MLflow
# writer imports every result file (tokendrift.tracking).
# These jobs rebuild the grid from the same config the workflow read (G.config_args).

# Snakemake's report (`snakemake ... all_tables --report report.html`): the front page
# (workflow/report/workflow.rst) shows every table and figure; each table's HTML page, the
# figures and the probe plots are also items of their own, grouped by table, each with a caption
# from workflow/report/.
report: "../report/workflow.rst"


for _table in G.tables:
    _md, _tex, _csv, _html, _gate = G.table_outputs(_table)

    rule:
        name:
            _table
        input:
            G.table_inputs(_table),
            G.entropy_rate_file,
        output:
            _md,
            _tex,
            _csv,
            report(_html, caption="../report/table.rst", category=G.report_category(_table), subcategory="Table",
                   labels={"table": G.report_category(_table), "content": G.tables[_table]["title"]}),
            _gate,
        params:
            config=G.config_args,
            table=_table,
            code=G.report_digest,
        log:
            G.log("aggregate", name=_table),
        localrule: True
        conda:
            CONDA_ENV
        shell:
            "tokendrift aggregate {params.config:q} --table {params.table:q} > {log:q} 2>&1"


for _figure, (_title, _) in FIGURES.items():
    _image, *_files = G.figure_outputs(_figure)

    rule:
        name:
            _figure
        input:
            G.figure_inputs(_figure),
            G.entropy_rate_file,
        output:
            report(_image, caption=f"../report/{_figure}.rst", category="Figures", subcategory="Figures",
                   labels={"figure": _title}),
            _files,
            G.report_html(_figure),
        params:
            config=G.config_args,
            figure=_figure,
            code=G.report_digest,
        log:
            G.log("aggregate", name=_figure),
        localrule: True
        conda:
            CONDA_ENV
        shell:
            "tokendrift aggregate {params.config:q} --figure {params.figure:q} > {log:q} 2>&1"


rule track:
    input:
        G.all_outputs(),
    output:
        G.tracking_file,
    params:
        config=G.config_args,
        code=G.report_digest,
    log:
        G.log("track"),
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "tokendrift track {params.config:q} > {log:q} 2>&1"


rule all_tables:
    input:
        G.all_outputs(),
        G.tracking_file,
