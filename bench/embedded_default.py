"""The embedded default's evidence: pretrain its tiny MDLM, DUO and evaluator, then sample
each checkpoint at NFE 4, 8, 16, 64 and sampling temperatures 0.6-1.0, and score oracle
Gen.-PPL, AR-evaluator Gen.-PPL, sample entropy and held-out NELBO against the entropy-rate
floor. Prints a Markdown table and writes results/<name>/evidence.json.

    python bench/embedded_default.py [--config workflow/config/default.yaml] [--out results/default]

Every stage resumes: a rerun after a kill continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import yaml

from tokendrift.data import make_source
from tokendrift.pretrain import pretrain_backbone, pretrain_evaluator
from tokendrift.sample import sample_checkpoint
from tokendrift.score import checkpoint_nelbo, load_evaluator, sample_entropy, score_samples
from tokendrift.utils import atomic_write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="workflow/config/default.yaml")
    ap.add_argument("--out", default=None)
    ap.add_argument("--nfe", type=int, nargs="+", default=[4, 8, 16, 64])
    args = ap.parse_args()
    cfg = yaml.safe_load(Path(args.config).read_text())
    out = Path(args.out or f"results/{cfg['name']}")
    pre, smp = cfg["pretrain"], cfg["sample"]
    source = make_source(cfg["source"])
    timings = {}

    t0 = time.time()
    pretrain_evaluator({**pre["evaluator"], "source": cfg["source"]}, str(out / "pretrain/evaluator"))
    timings["pretrain_evaluator_s"] = time.time() - t0
    for backbone in ("mdlm", "duo"):
        t0 = time.time()
        pretrain_backbone(backbone, {**pre[backbone], "source": cfg["source"]}, str(out / f"pretrain/{backbone}"))
        timings[f"pretrain_{backbone}_s"] = time.time() - t0

    evaluator = load_evaluator(str(out / "pretrain/evaluator/model"))
    rows = []
    for backbone in ("mdlm", "duo"):
        steps = pre[backbone]["steps"]
        ckpt = out / f"pretrain/{backbone}/checkpoints/step_{steps:06d}"
        nelbo = checkpoint_nelbo(str(ckpt), str(out / f"nelbo/{backbone}.json"))["nelbo"]
        for nfe in args.nfe:
            for temp in smp["temperatures"]:
                sdir = out / f"evidence/{backbone}/nfe{nfe}_T{temp}"
                score_file = sdir.parent / f"{sdir.name}.json"
                if not score_file.exists():
                    sample_checkpoint(str(ckpt), str(sdir), nfe=nfe, n_samples=smp["n_samples"], seed=0,
                                      temperature=temp, batch_size=smp["batch_size"])
                    score_samples(str(sdir), evaluator, str(score_file), evaluator_name=str(out / "pretrain/evaluator/model"))
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
        for temp in smp["temperatures"]:
            cells = [next(r for r in rows if r["backbone"] == backbone and r["nfe"] == n and r["temperature"] == temp)
                     for n in args.nfe]
            print(f"| {backbone} | {temp} | " + " | ".join(
                f"{c['oracle_gen_ppl']:.1f} / {c['gen_ppl']:.1f} / {c['entropy']:.2f}" for c in cells)
                + f" | {cells[0]['nelbo']:.3f} |")


if __name__ == "__main__":
    main()
