"""The embedded default's evaluator: held-out NLL against training time, per recipe.

Trains the default's evaluator as its DAG job does (`tokendrift.jobs.pretrain.pretrain_evaluator`
on the config's evaluator section and source, workflow/config/default.yaml) once per recipe
(dropout, peak lr, steps), each from scratch in a temporary folder, one thread, and prints and
writes its held-out NLL per token and its training time. Two recipes at a time when
``--parallel 2`` (as the DAG runs its jobs on 2 cores), so their times compare within a pair.

    python bench/evaluator_budget.py [--recipes 0.1:1e-3:400 0:3e-3:250 ...] [--parallel 2]

Writes bench/results/evaluator_budget.json (BENCHMARKS.md section 5, "The evaluator's budget").
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread, as the DAG's evaluator job
os.environ.setdefault("MKL_NUM_THREADS", "1")

import yaml  # noqa: E402

from tokendrift.core.utils import atomic_write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# the recipe of the default before 2026-12-07 evening, then the variants tried
RECIPES = [
    "0.1:1e-3:400",
    "0:1e-3:400",
    "0:1e-3:300",
    "0:2e-3:300",
    "0:3e-3:200",
    "0:3e-3:250",
    "0:3e-3:300",
]


def train_one(recipe: str, config: str) -> dict:
    import torch

    from tokendrift.core.utils import tune_allocator
    from tokendrift.grid.layout import Layout
    from tokendrift.jobs.pretrain import pretrain_evaluator

    tune_allocator()
    torch.set_num_threads(1)
    dropout, lr, steps = recipe.split(":")
    g = Layout(yaml.safe_load(Path(config).read_text()), REPO / "workflow/schemas/config.schema.yaml")
    job = {**g.evaluator_config(), "dropout": float(dropout), "lr": float(lr), "steps": int(steps)}
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        metrics = pretrain_evaluator(job, out)  # the DAG's evaluator job, its config validated as there
        seconds = time.perf_counter() - t
    return {"recipe": recipe, **{k: job[k] for k in ("dropout", "lr", "steps")}, "seconds": seconds, **metrics}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="+", default=RECIPES, help="dropout:lr:steps")
    ap.add_argument("--config", default=str(REPO / "workflow/config/default.yaml"))
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "bench/results/evaluator_budget.json"))
    a = ap.parse_args()
    with ProcessPoolExecutor(a.parallel) as pool:
        rows = list(pool.map(train_one, a.recipes, [a.config] * len(a.recipes)))
    print("| dropout | lr | steps | held-out NLL | training time |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dropout']} | {r['lr']:g} | {r['steps']} | {r['valid_nll']:.4f} | {r['seconds']:.1f} s |")
    atomic_write_json(a.out, {"config": a.config, "parallel": a.parallel, "rows": rows})
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
