"""The cost of MAUVE and the exact n-gram divergence in a scoring job of the embedded default.

1. Per cell, in one process (medians of interleaved repetitions): the evaluator pass that scores
   Gen.-PPL, with and without the features it now also returns; the reference texts' pass (once
   per job); `mauve.compute_mauve` on the features; the n-gram noise floor (once per job) and the
   divergence of one cell; the peak Python-heap memory of compute_mauve (tracemalloc: numpy's
   and faiss's buffers through numpy).
2. Per job: `tokendrift score` of one checkpoint's sample folders (the score_run job's
   arguments, one thread) under the code before MAUVE (``--base``, a commit, exported with
   `git archive`) and under this checkout, interleaved: wall time and peak RSS.

    python -m bench.mauve_cost --results results/default [--unit mdlm/tokendrift/seed0/step40] [--reps 5]
         [--base 99acfdc]
    python -m bench.mauve_cost --results results/default --separation-only   # after a change of evaluator
Needs a finished run of the default (its evaluator, start checkpoint and sample folders).
Writes bench/results/mauve_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import psutil

# one thread, as the score job runs (its OMP_NUM_THREADS): set before numpy and torch are imported
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]

from tokendrift.core.utils import atomic_write_json  # noqa: E402 (after the thread settings)


def median_time(fn, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def per_cell(results: Path, unit: str, reps: int) -> dict:
    import torch

    from tokendrift.core import divergence
    from tokendrift.core.data import make_source
    from tokendrift.jobs.score import OPTIONS, decode_samples, gen_ppl, load_evaluator, read_samples

    torch.set_num_threads(1)
    ev = load_evaluator(str(results / "evaluator" / "pretrain" / "model"))
    folder = sorted((results / "samples" / unit).iterdir())[0]
    ids, _, meta = read_samples(folder)
    source = make_source(meta["source"])
    texts = decode_samples(ids, source.hf_tokenizer())
    ref_ids, _ = divergence.reference_ids(source, ids.shape[0], int(meta["seed"]))
    ref_texts = decode_samples(ref_ids, source.hf_tokenizer())
    kw = dict(batch_size=64, max_length=1024)
    p = gen_ppl(texts, ev, layer=-1, **kw)["features"]
    q = gen_ppl(ref_texts, ev, layer=-1, **kw)["features"]
    floor = divergence.noise_floor(source, ids.shape[0], OPTIONS["ngram_max_order"], OPTIONS["ngram_floor_draws"], 0)
    row = {"folder": str(folder), "n_samples": int(ids.shape[0]), "feature_dim": int(p.shape[1])}
    row["gen_ppl_s"] = median_time(lambda: gen_ppl(texts, ev, **kw), reps)
    row["gen_ppl_with_features_s"] = median_time(lambda: gen_ppl(texts, ev, layer=-1, **kw), reps)
    row["reference_pass_s (once per job)"] = median_time(lambda: gen_ppl(ref_texts, ev, layer=-1, **kw), reps)
    row["compute_mauve_s"] = median_time(lambda: divergence.mauve(p, q, OPTIONS), reps)
    row["ngram_floor_s (once per job)"] = median_time(
        lambda: divergence.noise_floor(
            source, ids.shape[0], OPTIONS["ngram_max_order"], OPTIONS["ngram_floor_draws"], 0
        ),
        reps,
    )
    row["ngram_cell_s"] = median_time(lambda: divergence.ngram_divergence(ids, source, 3, 16, 0, floor), reps)
    tracemalloc.start()
    divergence.mauve(p, q, OPTIONS)
    row["compute_mauve_peak_heap_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    row["mauve"] = divergence.mauve(p, q, OPTIONS)
    return row


def separation(results: Path, counts=(64, 256)) -> list[dict]:
    """What each score tells apart, with the default's evaluator and options: MAUVE and KL₂ (with
    its floor) of fresh source samples, uniform random tokens and the marginal trap (the fresh
    samples with each position's tokens shuffled across samples: right marginals, independent
    tokens), each against ``n`` reference samples of the source."""
    import numpy as np
    import torch

    from tokendrift.core import divergence
    from tokendrift.core.data import make_source
    from tokendrift.grid.rules import workflow_grid
    from tokendrift.jobs.score import OPTIONS, decode_samples, gen_ppl, load_evaluator

    source = make_source(workflow_grid({}, str(REPO), []).config["source"])
    ev = load_evaluator(str(results / "evaluator" / "pretrain" / "model"))
    rows = []
    for n in counts:
        fresh = source.sample(n, 2)
        trap = fresh.clone()
        g = torch.Generator().manual_seed(0)
        for t in range(trap.shape[1]):
            trap[:, t] = fresh[torch.randperm(n, generator=g), t]
        sets = {
            "fresh source samples": fresh,
            "marginal trap": trap,
            "uniform random tokens": torch.from_numpy(
                np.random.default_rng(3).integers(0, source.vocab_size, fresh.shape)
            ),
        }

        def feats(ids):
            return gen_ppl(decode_samples(ids, source.hf_tokenizer()), ev, batch_size=64, max_length=1024, layer=-1)[
                "features"
            ]

        ref = feats(source.sample(n, 1))
        floor = divergence.noise_floor(source, n, 2, 16, 0)
        for name, ids in sets.items():
            kl = divergence.ngram_divergence(ids, source, 2, 16, 0, floor)["orders"]
            rows.append(
                {
                    "n": n,
                    "set": name,
                    "mauve": divergence.mauve(feats(ids), ref, OPTIONS)["mauve"],
                    "kl1": kl["1"]["kl"],
                    "kl2": kl["2"]["kl"],
                    "kl2_floor": kl["2"]["floor_mean"],
                    "kl2_floor_sd": kl["2"]["floor_sd"],
                }
            )
    return rows


def score_job(code: Path, results: Path, unit: str, out: Path) -> tuple[float, float]:
    """Wall time and peak RSS (polled every 20 ms) of one `tokendrift score` job under ``code``."""
    folders = sorted(str(d) for d in (results / "samples" / unit).iterdir())
    outs = [str(out / f"{i}.json") for i in range(len(folders))]
    bb, model, seed, step = unit.split("/")  # the score_run job's arguments (workflow/config/default.yaml)
    ckpt = results / "train" / bb / model / seed / "checkpoints" / f"step_{int(step[4:]):06d}"
    cmd = [
        sys.executable,
        "-m",
        "tokendrift.cli",
        "score",
        *folders,
        "--evaluator",
        str(results / "evaluator" / "pretrain" / "model"),
        "--out",
        *outs,
        "--batch-size",
        "64",
        "--device",
        "cpu",
        "--checkpoint",
        str(ckpt),
        "--nelbo-out",
        str(out / "nelbo.json"),
        "--nelbo-n-batches",
        "2",
        "--nelbo-batch-size",
        "64",
        "--nelbo-device",
        "cpu",
        "--nelbo-seed",
        seed[4:],
    ]
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = psutil.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{code}: score failed: {proc.stderr.read().decode()[-2000:]}")
    return wall, peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results/default")
    ap.add_argument("--unit", default="mdlm/tokendrift/seed0/step40")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--base", default="99acfdc", help="commit before MAUVE (the job's baseline)")
    ap.add_argument(
        "--separation-only",
        action="store_true",
        help="measure part 1's separation alone (a new evaluator) into bench/results/mauve_separation.json",
    )
    args = ap.parse_args()
    results = Path(args.results).resolve()
    sep = separation(results)
    print(json.dumps(sep, indent=1))
    if args.separation_only:
        atomic_write_json(REPO / "bench" / "results" / "mauve_separation.json", {"args": vars(args), "separation": sep})
        return
    cell = per_cell(results, args.unit, args.reps)
    print(json.dumps(cell, indent=1))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        base.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.base, "tokendrift"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        runs = {"base": [], "mauve": []}
        for _ in range(args.reps):
            for name, code in (("base", base), ("mauve", REPO)):
                out = Path(tmp) / name
                out.mkdir(exist_ok=True)
                runs[name].append(score_job(code, results, args.unit, out))
    job = {
        name: {
            "wall_s_median": statistics.median(w for w, _ in r),
            "wall_s": [w for w, _ in r],
            "peak_rss_mb_median": statistics.median(m for _, m in r),
        }
        for name, r in runs.items()
    }
    job["ratio"] = job["mauve"]["wall_s_median"] / job["base"]["wall_s_median"]
    print(json.dumps(job, indent=1))
    out = REPO / "bench" / "results" / "mauve_cost.json"
    load = os.getloadavg()
    out.write_text(
        json.dumps(
            {
                "args": vars(args),
                "loadavg": load,
                "cpu_count": os.cpu_count(),
                "separation": sep,
                "per_cell": cell,
                "score_job": job,
                "target": "the score job at most 2x its time before MAUVE",
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
