"""Issue 6, figure 3: sampler and scorer overhead against bare forward passes on the same
tensors, measured side by side in one process (interleaved repetitions, medians).

- Sampling: wall time per NFE of `Diffusion.sample` (MDLM and DUO, float64 draws) against the
  same number of bare `model(x, sigma)` calls on a batch of the same shape. Target: <= 5%.
  Beside it, the sampler's own work: `Diffusion.sample` with a model that returns one stored
  forward output, against the same bare forwards (a share that run-to-run noise in the
  forwards does not move).
- Scoring: samples per second of `score.gen_ppl` (retokenization, first-EOS rule, NLL) against
  bare evaluator forwards on the already tokenized ids. Target: <= 10%.

    python -m bench.sample_score_overhead [--device cpu] [--preset tiny] [--n 256] [--nfe 16]
Writes bench/results/sample_score_overhead_<device>.json (with --glibc-default-malloc:
..._glibc_default.json).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.step_overhead import add_allocator_arg, allocator, make_init, write_results
from tokendrift.core.checkpoint import load_model_dir
from tokendrift.core.data import make_source
from tokendrift.core.diffusion import make_diffusion
from tokendrift.jobs.evaluator import train_evaluator
from tokendrift.jobs.score import gen_ppl, load_evaluator


def timed(fn, device) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


class StoredOutput(torch.nn.Module):
    """Returns one stored forward output whatever its input: sampling with it times the
    sampler's own work (draws, weights, bookkeeping) without the forwards."""

    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.out = out
        self.anchor = torch.nn.Parameter(torch.empty(0, device=out.device))  # the sampler's device

    def forward(self, x, sigma):
        return self.out


def time_sampler(model, diff, n: int, length: int, nfe: int, reps: int, device: str) -> dict:
    """One sampler batch of ``n`` samples at ``nfe`` against the same number of bare forwards, and
    the sampler's own work (StoredOutput); medians of ``reps`` interleaved repetitions."""
    gen = torch.Generator(device=device).manual_seed(0)
    x = diff.prior_sample(n, length, gen, device)
    sigma = diff.sigma(torch.full((n,), 0.5, device=device))
    info: dict = {}
    stored = StoredOutput(model(x, sigma))

    def sample(m=model, i=info):
        return diff.sample(m, n, length, nfe, generator=gen, batch_size=n, info=i)

    bare = lambda: [model(x, sigma) for _ in range(info["forward_passes"])]  # noqa: E731
    own = lambda: sample(stored, {})  # noqa: E731
    sample()  # warm-up, and the forward count the sampler makes
    own()
    ts, tb, to = [], [], []
    for _ in range(reps):
        ts.append(timed(sample, device))
        tb.append(timed(bare, device))
        to.append(timed(own, device))
    s, b, o = statistics.median(ts), statistics.median(tb), statistics.median(to)
    return {
        "sampler_s": s,
        "bare_forwards_s": b,
        "forward_passes": info["forward_passes"],
        "per_nfe_s": s / nfe,
        "own_work_s": o,
        "own_work_share": o / b,
        "overhead": s / b - 1,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--n", type=int, default=256, help="samples per batch")
    ap.add_argument("--nfe", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    add_allocator_arg(ap)
    args = ap.parse_args()
    malloc = allocator(args)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for bb in ("mdlm", "duo"):
            init = make_init(Path(tmp) / bb, args.preset, args.length, bb)
            model, meta = load_model_dir(init, device=args.device)
            diff = make_diffusion(bb, model.config.vocab_size)
            rows[f"sample_{bb}"] = time_sampler(model, diff, args.n, args.length, args.nfe, args.reps, args.device)
        # scoring: the embedded default's kind of evaluator (GPT-2 architecture, word-level tokenizer)
        src = make_source({"kind": "synthetic", "length": args.length})
        with torch.enable_grad():
            train_evaluator(src, Path(tmp) / "ev", steps=1, batch_size=4)
        lm, tok = load_evaluator(str(Path(tmp) / "ev" / "model"), device=args.device)
        texts = src.decode(src.batch("valid", 0, args.n))
        ids = tok(texts, return_tensors="pt", padding=True)["input_ids"].to(args.device)
        score = lambda: gen_ppl(texts, (lm, tok), batch_size=64, device=args.device)  # noqa: E731
        bare = lambda: [lm(ids[i : i + 64], use_cache=False).logits.float() for i in range(0, len(ids), 64)]  # noqa: E731
        score()
        ts, tb = [], []
        for _ in range(args.reps):
            ts.append(timed(score, args.device))
            tb.append(timed(bare, args.device))
        s, b = statistics.median(ts), statistics.median(tb)
        rows["score"] = {
            "score_s": s,
            "bare_forwards_s": b,
            "samples_per_s": args.n / s,
            "bare_samples_per_s": args.n / b,
            "overhead": s / b - 1,
        }
    for k, r in rows.items():
        print(
            f"{k:12} overhead {100 * r['overhead']:6.1f}%  "
            + "  ".join(f"{a}={v:.4g}" for a, v in r.items() if a != "overhead")
        )
    write_results(
        f"sample_score_overhead_{args.device}", args, malloc, rows, {"sampler_overhead": 0.05, "score_overhead": 0.10}
    )


if __name__ == "__main__":
    main()
