"""The embedded default's evidence (docs/embedded_default.md): its tiny pretrained MDLM and DUO sampled at NFE
4, 8, 16 and 64 and sampling temperatures 0.6-1.0; oracle Gen.-PPL, evaluator Gen.-PPL, sample
entropy and held-out NELBO against the entropy-rate floor. Uses the DAG's pretrained models
(results/<name>/start, evaluator), training them first if absent (each resumes after a kill).
Prints a Markdown table and writes results/<name>/evidence.json.

    python bench/embedded_default.py [--config workflow/config/default.yaml]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import yaml

from tokendrift.data import make_source
from tokendrift.grid import Grid
from tokendrift.pretrain import pretrain_backbone, pretrain_evaluator
from tokendrift.sample import sample_checkpoint
from tokendrift.score import checkpoint_nelbo, load_evaluator, sample_entropy, score_samples
from tokendrift.utils import atomic_write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="workflow/config/default.yaml")
    ap.add_argument("--nfe", type=int, nargs="+", default=[4, 8, 16, 64])
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.6, 0.7, 0.8, 0.9, 1.0])
    ap.add_argument("--n-samples", type=int, default=256, help="samples per (NFE, temperature) cell")
    args = ap.parse_args()
    g = Grid(yaml.safe_load(Path(args.config).read_text()), "workflow/schemas/config.schema.yaml")
    out, smp = g.root, g.config["sample"]
    source = make_source(g.config["source"])
    timings = {}  # wall seconds of pretraining done here (0 when the DAG already did it)

    t0 = time.time()
    pretrain_evaluator(g.evaluator_config(), str(Path(g.evaluator()).parent))
    timings["pretrain_evaluator_s"] = time.time() - t0
    for backbone in ("mdlm", "duo"):
        t0 = time.time()
        pretrain_backbone(backbone, g.pretrain_config(backbone), str(g.start_model(backbone).parents[1]))
        timings[f"pretrain_{backbone}_s"] = time.time() - t0

    evaluator = load_evaluator(g.evaluator())
    rows = []
    for backbone in ("mdlm", "duo"):
        ckpt = g.start_model(backbone)
        nelbo = checkpoint_nelbo(str(ckpt), str(out / f"evidence/{backbone}_nelbo.json"))["nelbo"]
        for nfe in args.nfe:
            for temp in args.temperatures:
                sdir = out / f"evidence/{backbone}/nfe{nfe}_T{temp}"
                score_file = sdir.parent / f"{sdir.name}.json"
                if not score_file.exists():
                    sample_checkpoint(str(ckpt), str(sdir), nfe=nfe, n_samples=args.n_samples, seed=0,
                                      temperature=temp, batch_size=smp["batch_size"])
                    score_samples(str(sdir), evaluator, str(score_file), evaluator_name=g.evaluator())
                r = json.loads(score_file.read_text())
                rows.append({"backbone": backbone, "nfe": nfe, "temperature": temp, "oracle_gen_ppl": r["oracle_gen_ppl"],
                             "gen_ppl": r["gen_ppl"], "entropy": r["entropy"], "nelbo": nelbo})

    floor = math.exp(source.entropy_rate)
    data_entropy = sample_entropy(source.batch("valid", 0, 256))
    result = {"entropy_rate": source.entropy_rate, "entropy_rate_se": source.entropy_rate_se, "oracle_floor": floor,
              "data_sample_entropy": data_entropy, "timings": timings, "rows": rows}
    atomic_write_json(out / "evidence.json", result)
    print(f"entropy rate {source.entropy_rate:.3f} ± {source.entropy_rate_se:.3f} nats/token -> oracle Gen.-PPL floor "
          f"{floor:.1f}; data sample entropy {data_entropy:.2f}")
    print("pretraining wall time: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    print("\n| backbone | T | " + " | ".join(f"NFE {n} oracle / AR / entropy" for n in args.nfe) + " | NELBO |")
    print("|---|---|" + "---|" * len(args.nfe) + "---|")
    for backbone in ("mdlm", "duo"):
        for temp in args.temperatures:
            cells = [next(r for r in rows if r["backbone"] == backbone and r["nfe"] == n and r["temperature"] == temp)
                     for n in args.nfe]
            print(f"| {backbone} | {temp} | " + " | ".join(
                f"{c['oracle_gen_ppl']:.1f} / {c['gen_ppl']:.1f} / {c['entropy']:.2f}" for c in cells)
                + f" | {cells[0]['nelbo']:.3f} |")


if __name__ == "__main__":
    main()
