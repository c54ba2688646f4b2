"""Issue 6, figures 1 and 2: the TokenDrift training step against a continuation step (same
backbone, batch and device; interleaved, median of N timed steps after warm-up), and the drift
field's share of a TokenDrift step (1024 real + 1024 generated queue entries, 3 temperatures,
features of size 2d).

    python bench/step_overhead.py                       # CPU, tiny DiT, length 64, batch 16
    python bench/step_overhead.py --device cuda --preset small --length 1024 --micro-batch 2 --bf16
                                                        # the paper's H100 setting (random weights)
    ... --device cuda --sync-debug                      # and the host syncs of one step (train mode)

Prints a table and writes bench/results/step_overhead_<device>_<preset>.json (with
--glibc-default-malloc: ..._glibc_default.json). Targets: ratio
<= 2.1 (the floor is about 2.0: the frozen encoder's forward and input-gradient backward on the
soft embeddings plus its forward on clean text); drift share <= 2%; on the H100, the
continuation step's model FLOPs utilization >= 40%.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python bench/step_overhead.py` from anywhere

from tests.paper_files import random_model_dir  # noqa: E402
from tokendrift.core.objective import drift_field  # noqa: E402
from tokendrift.core.utils import tune_allocator  # noqa: E402
from tokendrift.jobs import train as T  # noqa: E402
from tokendrift.jobs.train_state import make_state  # noqa: E402


def machine(device: str) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "cpu": platform.processor() or platform.machine(),
    }
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line)
    except (OSError, StopIteration):
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def add_allocator_arg(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--glibc-default-malloc",
        action="store_true",
        help="leave glibc's malloc as it starts, instead of tuning it as every pipeline job does",
    )


def allocator(args) -> str:
    """Set up malloc as the pipeline's jobs do (tokendrift.core.utils.tune_allocator); say which it got."""
    if args.glibc_default_malloc:
        return "glibc default"
    return "tuned as the jobs are" if tune_allocator() else "untouched (malloc tuned by the user, or not glibc)"


def write_results(stem: str, args, malloc: str, rows, targets: dict) -> None:
    """bench/results/<stem>.json with the arguments, the machine and its malloc, the rows and the
    targets. A --glibc-default-malloc run goes to <stem>_glibc_default.json, beside the tuned run's."""
    out = Path(__file__).parent / "results" / f"{stem}{'_glibc_default' if args.glibc_default_malloc else ''}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "args": vars(args),
                "machine": {**machine(args.device), "malloc": malloc},
                "rows": rows,
                "targets": targets,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


def make_init(folder: Path, preset: str, length: int, diffusion: str) -> Path:
    from tokendrift.core.data import make_source

    src = make_source({"kind": "synthetic", "length": length, **({"vocab_size": 50257} if preset == "small" else {})})
    return random_model_dir(folder, diffusion, src.config, src.vocab_size + 1, length, preset)


def setup(init: Path, variant: str, args, extra: dict | None = None) -> tuple:
    """A training job's Setup with the AdamW and noise generator of its training state
    (``make_state``: the generator in train mode, so dropout runs as in training); ``extra``
    adds job options."""
    cfg = T.resolve_config(
        {
            "variant": variant,
            "init": str(init),
            "global_batch": args.micro_batch,
            "micro_batch": args.micro_batch,
            "device": args.device,
            "precision": "bf16" if args.bf16 else "fp32",
            "optim": {"warmup_steps": 0},
            **(extra or {}),
        }
    )
    s = T.build(cfg)
    if variant == "tokendrift":  # steady state: full queues
        d = s.queues["real"].dim
        for q in s.queues.values():
            q.push(
                torch.nn.functional.normalize(torch.randn(cfg["objective"]["queue_size"], d, device=s.device), dim=-1)
            )
    state = make_state(s)  # single process: state.model is s.model, now in training mode
    assert state.model is s.model and s.model.training
    return s, state.optimizer, state.noise


def step(s, opt, noise, k: int, x0: torch.Tensor | None = None, split: dict | None = None) -> float:
    """Seconds of one training step (micro-step, backward, AdamW) on batch ``k`` of the source, or
    on ``x0``; ``split`` gets the micro-step with its backward ("micro_s") and the optimizer
    ("optimizer_s") apart, for a loop that accumulates several micro-steps per optimizer step."""
    sync = torch.cuda.synchronize if s.device.type == "cuda" else (lambda: None)
    x0 = T.to_device(s.source.batch("train", k, s.cfg["micro_batch"]), s.device) if x0 is None else x0
    sync()
    t0 = time.perf_counter()
    loss = T.micro_step(s, s.model, x0, noise, {})
    loss.backward()
    if split is not None:
        sync()
        split["micro_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync()
    if split is not None:
        split["optimizer_s"] = time.perf_counter() - t1
    return time.perf_counter() - t0


def host_syncs(fn) -> int:
    """The CUDA host syncs ``fn`` makes, by torch's sync debug mode (one warning per sync); the
    bench's own torch.cuda.synchronize() calls are explicit and not reported by it."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def drift_time(d: int, device: str, reps: int, anchors: int) -> float:
    """Median seconds of one drift_field call: `anchors` anchors against 1024 + 1024 queue entries
    (plus the anchors' own real and generated features, as in the step)."""
    g = torch.Generator(device=device).manual_seed(0)
    norm = torch.nn.functional.normalize
    h = norm(torch.randn(anchors, d, generator=g, device=device), dim=-1)
    pos = norm(torch.randn(1024 + anchors, d, generator=g, device=device), dim=-1)
    neg = torch.cat([h, norm(torch.randn(1024, d, generator=g, device=device), dim=-1)])
    times = []
    for _ in range(reps + 3):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        drift_field(h, pos, neg, exclude_self=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[3:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="tiny", choices=["tiny", "small"])
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant (after warm-up)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="accelerator peak (H100 SXM bf16 dense: 989)")
    ap.add_argument("--backbones", nargs="+", default=["mdlm", "duo"])
    ap.add_argument(
        "--sync-debug",
        action="store_true",
        help="CUDA: count the host syncs of one more step of each variant "
        "(torch.cuda.set_sync_debug_mode('warn'); the count goes in the JSON)",
    )
    add_allocator_arg(ap)
    args = ap.parse_args()
    malloc = allocator(args)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for bb in args.backbones:
            init = make_init(Path(tmp) / bb, args.preset, args.length, bb)
            runs = {v: setup(init, v, args) for v in ("continuation", "tokendrift")}
            times = {v: [] for v in runs}
            for k in range(args.warmup + args.steps):  # interleaved: load changes hit both alike
                for v, (s, opt, noise) in runs.items():
                    if args.device == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    dt = step(s, opt, noise, k)
                    if k >= args.warmup:
                        times[v].append(dt)
            med = {v: statistics.median(t) for v, t in times.items()}
            s = runs["tokendrift"][0]
            d = s.queues["real"].dim
            drift = drift_time(d, args.device, 20, args.micro_batch)  # the step's own anchors
            n_params = sum(p.numel() for p in s.model.parameters())
            tokens = args.micro_batch * args.length
            cfg = s.model.config
            flops = 6 * n_params * tokens + 12 * cfg.n_blocks * cfg.hidden_size * args.length * tokens
            row = {
                "backbone": bb,
                "continuation_s": med["continuation"],
                "tokendrift_s": med["tokendrift"],
                "ratio": med["tokendrift"] / med["continuation"],
                "drift_field_s": drift,
                "drift_share": drift / med["tokendrift"],
                "feature_dim": d,
                "params": n_params,
                # the 170M DiT's 2d, 64 anchors (the paper's 4-GPU step gathers 8: an upper bound)
                "drift_field_1536_s": drift_time(1536, args.device, 20, 64),
                "continuation_tflops": flops / med["continuation"] / 1e12,
            }
            if args.device == "cuda" and args.sync_debug:
                for v, (sv, opt, noise) in runs.items():
                    row[f"{v}_host_syncs"] = host_syncs(lambda: step(sv, opt, noise, 0))
            if args.device == "cuda":
                row["continuation_mfu"] = row["continuation_tflops"] / args.peak_tflops
                for v, (sv, opt, noise) in runs.items():
                    torch.cuda.reset_peak_memory_stats()
                    step(sv, opt, noise, 0)
                    row[f"{v}_peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
            rows.append(row)
            del runs
    print(f"{'backbone':8} {'cont. s':>9} {'TD s':>9} {'ratio':>6} {'drift s':>9} {'share':>7}")
    for r in rows:
        print(
            f"{r['backbone']:8} {r['continuation_s']:9.4f} {r['tokendrift_s']:9.4f} {r['ratio']:6.2f} "
            f"{r['drift_field_s']:9.5f} {100 * r['drift_share']:6.2f}%"
            + (f"  MFU {100 * r['continuation_mfu']:.1f}%" if "continuation_mfu" in r else "")
        )
    write_results(
        f"step_overhead_{args.device}_{args.preset}",
        args,
        malloc,
        rows,
        {"ratio": 2.1, "drift_share": 0.02, "mfu": 0.40},
    )


if __name__ == "__main__":
    main()
