# Position-wise information-decay probe (DESIGN.md section 8): the start, continuation and
# TokenDrift checkpoints of each backbone, one forward pass over prompt + masked span.


def probe_models(w):
    """label -> checkpoint of the figure-2 models at the long step, first seed."""
    seed = G.seeds[0]
    return {m: G.checkpoint(w.backbone, m, seed, 0 if m == "start" else G.long)
            for m in G.figure2.get(w.backbone, []) if m == "start" or (w.backbone, m) in G.runs}


rule probe:
    input:
        lambda w: [G.checkpoint_done(w.backbone, m, G.seeds[0]) for m in probe_models(w)],
    output:
        multiext(f"{ROOT}/probe/{{backbone}}/probe", ".json", ".png", ".pdf"),
        f"{ROOT}/probe/{{backbone}}/top3.md",
    params:
        ckpts=lambda w: " ".join(f"--checkpoint {m}={p}" for m, p in probe_models(w).items()),
        out=lambda w: f"{ROOT}/probe/{w.backbone}",
        opts=(f"--n-prompts {G.config['probe']['n_prompts']} --prompt-len {G.config['probe']['prompt_len']} "
              f"--span {G.config['probe']['span']} {G.device_arg('probe')}"),
        code=G.code_digest,
    log:
        f"{LOGS}/probe/{{backbone}}.log",
    threads: 1
    shell:
        THREADS + "tokendrift probe {params.ckpts} --out {params.out} {params.opts} > {log} 2>&1"


rule probe_all:
    input:
        expand(f"{ROOT}/probe/{{backbone}}/probe.json", backbone=G.backbones),
