# Position-wise information-decay probe (docs/evaluation.md): the start, continuation and
# TokenDrift checkpoints of each backbone (first seed, long step), one forward pass over
# validation prompts followed by a masked (MDLM) or fully noised (DUO) span.


rule probe:
    input:
        lambda w: [G.checkpoint_done(w.backbone, m, G.seeds[0]) for m in G.probe_models(w.backbone)],
        G.job_inputs,
    output:
        # probe.png is a report item (workflow/report/probe.rst)
        *(report(f, caption="../report/probe.rst", category="Figures", subcategory="Probe", labels={"figure": "probe {backbone}"})
          if f.endswith(".png") else f for f in G.probe_outputs("{backbone}")),
    params:
        ckpts=lambda w: " ".join(f"--checkpoint {m}={p}" for m, p in G.probe_models(w.backbone).items()),
        out=lambda w: G.probe_dir(w.backbone),
        opts=(f"--n-prompts {G.config['probe']['n_prompts']} --prompt-len {G.config['probe']['prompt_len']} "
              f"--span {G.config['probe']['span']} {G.device_arg('probe')}"),
        code=G.report_digest,
    log:
        f"{LOGS}/probe/{{backbone}}.log",
    threads: 1
    shell:
        G.job_env + THREADS + "tokendrift probe {params.ckpts} --out {params.out} {params.opts} > {log} 2>&1"


rule probe_all:
    input:
        [f for bb in G.backbones for f in G.probe_outputs(bb)],
