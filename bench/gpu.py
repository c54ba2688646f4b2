"""The GPU figures in one short run, at the paper's sizes with random weights (no downloads).

    python bench/gpu.py            # one GPU, <= 6 minutes: bench/results/gpu.json
    python bench/gpu.py --dry      # the same script at tiny sizes on the CPU, < 1 minute:
                                   # bench/results/gpu_dry_cpu.json (CUDA-only parts skipped, saying so)

Then `tokendrift grid workflow/config/paper.yaml --cost bench/results/gpu.json` prints the
paper grid's GPU-hours from these figures (tokendrift/report/cost.py).

Parts, in order; each has its own cap in seconds (--cap PART=S) inside a total budget
(--budget). A part that runs past its cap is recorded "timeout" with what it measured so far,
one that runs out of GPU memory "oom"; the script then goes on to the next part. The JSON is
rewritten after every part, so a killed run keeps what it measured.

- environment: device, driver, torch, CUDA, cuDNN and transformers versions, the SDPA and TF32
  flags, the device's bf16 dense peak (PEAK_TFLOPS, by device name, or --peak-tflops).
- steps: continuation and TokenDrift training steps of the 170M DiT ("small" preset, vocabulary
  50258, length 1024), micro-batch 2, bf16 autocast, AdamW (bench/step_overhead.py's setup and
  step), interleaved, medians after warm-up; TokenDrift with full queues (1024 each). Each step
  split into the micro-step with its backward and the optimizer step (training accumulates 64
  micro-steps per optimizer step), their ratio, peak memory, and the continuation step's model
  FLOPs utilization (MFU). Inputs are random token ids (drawing the synthetic source at vocabulary
  50257 costs seconds per batch on the CPU; the step's work does not depend on the ids).
- drift: the drift field (tokendrift.core.objective.drift_field, 3 temperatures, features 2d = 1536)
  with the paper's gathered anchors and full queues, and its share of the TokenDrift micro-step.
  Reading of the paper ("Drifting Objectives for Refining Discrete Diffusion Language Models",
  App. F, "Drift reference sets"): per-device batch 2 on 4 GPUs, so each micro-step all-gathers
  8 fresh anchors and their 8 real features; the global batch 512 is reached by accumulating 64
  such micro-steps, and L_drift is computed at every micro-step. So one drift call has 8 anchors
  against 1024 + 8 positives and 1024 + 8 negatives; also timed with 2 anchors (one GPU alone).
- max_micro_batch (CUDA only): the largest micro-batch of each step that fits, doubling from
  the measured one up to --max-batch-cap, with its peak memory and tokens/s.
- sampler: samples/s of each backbone's ancestral sampler (float64 draws, bf16 autocast on the
  GPU as `tokendrift sample` runs) at NFE 4, 8, 16 with batch 32, beside the same number of bare
  forwards, and the sampler's own work (a model returning one stored output):
  bench/sample_score_overhead.py's time_sampler. Also the held-out NELBO's fp32 forward (per
  sequence and draw of t), which the scoring job runs beside Gen.-PPL.
- scorer: tokens/s of score.gen_ppl (fp32, batch 16, length 1024, as the scoring job) with a
  GPT-2 Large-sized evaluator built from its config with random weights (36 layers, width 1280,
  20 heads, vocabulary 50257), beside bare forwards. The retokenization is left out (a stand-in
  tokenizer returns stored ids): it is CPU work, measured by bench/sample_score_overhead.py.
- attention: which kernel F.scaled_dot_product_attention runs in the DiT's forward (the aten op
  and kernel names the profiler records), and which SDPA backends accept the DiT's shapes.
- compile: the train option `compile: true` (torch.compile of the DiT) timed against eager:
  compile time (the first step), then the step medians. Off by default in training until
  measured. Skipped in --dry (inductor on the CPU takes minutes; --compile forces it).

FLOPs of a training micro-step (PaLM's model-FLOPs convention, the forward counted once and the
backward twice): 6 N T + 12 n_blocks d L T for T tokens of length L, where N counts the
parameters that multiply every token (the blocks' attention and MLP matrices and the output
projection to the vocabulary; not the input embedding table, a lookup, nor the per-sequence
adaLN and sigma maps) and the second term is attention's QK^T and AV. MFU = FLOPs / time / peak.
The TokenDrift step does more than this work (the frozen encoder's two forwards and the
backward through one), so its MFU is not reported; the ratio is.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/gpu.py` from the repository root

from bench.sample_score_overhead import time_sampler, timed
from bench.step_overhead import drift_time, machine, make_init, setup, step
from tokendrift.core.utils import atomic_write_json

RESULTS = Path(__file__).parent / "results"

# bf16 dense tensor-core peak (TFLOPS, no sparsity) by device name; the first match wins, so the
# more specific names come first. Vendor data sheets.
PEAK_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100", 989.0),  # H100 SXM
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
]

PAPER_GPUS = 4  # training GPUs per job (App. F)
PAPER_MICRO_BATCH = 2  # sequences per GPU per micro-step (App. F)

SIZES = {  # what --dry changes
    "gpu": dict(
        device="cuda",
        preset="small",
        length=1024,
        vocab=50258,
        precision="bf16",
        steps=10,
        warmup=3,
        sample_reps=3,
        sample_batch=32,
        score_n=32,
        score_batch=16,
        scorer=dict(n_layer=36, n_embd=1280, n_head=20),
        budget=330.0,
    ),
    "dry": dict(
        device="cpu",
        preset="tiny",
        length=64,
        vocab=257,
        precision="fp32",
        steps=2,
        warmup=1,
        sample_reps=1,
        sample_batch=8,
        score_n=16,
        score_batch=8,
        scorer=dict(n_layer=2, n_embd=64, n_head=2),
        budget=150.0,
    ),
}
CAPS = {
    "environment": 15,
    "steps": 60,
    "drift": 10,
    "max_micro_batch": 60,
    "sampler": 60,
    "scorer": 40,
    "attention": 15,
    "compile": 150,
}


class PartTimeout(BaseException):
    """A part's cap ran out. Not an Exception: torch.compile's handlers must not wrap or swallow it."""


class Skip(Exception):
    pass


def _alarm(signum, frame):
    raise PartTimeout()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def peak_gb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_tflops(name: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    for key, v in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return v, f"table: {key}"
    return None, f"unknown device {name!r}: give --peak-tflops"


def matmul_params(model) -> int:
    """N of the FLOPs count: the blocks' attention and MLP matrices and the output projection."""
    n = sum(p.numel() for b in model.blocks for m in (b.attn_qkv, b.attn_out, b.mlp) for p in m.parameters())
    return n + sum(p.numel() for p in model.output_layer.linear.parameters())


def step_flops(model, batch: int, length: int) -> float:
    c = model.config
    tokens = batch * length
    return 6 * matmul_params(model) * tokens + 12 * c.n_blocks * c.hidden_size * length * tokens


class Bench:
    def __init__(self, args, sizes: dict):
        self.args, self.z = args, sizes
        self.device = sizes["device"]
        self.tmp = tempfile.TemporaryDirectory()
        self.inits: dict[str, Path] = {}
        self.peak: float | None = None  # the device's bf16 peak (TFLOPS), from the environment part
        self.start = time.monotonic()
        self.result = {
            "kind": "dry_cpu" if args.dry else "gpu",
            "measured_on": self.device,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "settings": self.settings(),
            "parts": {},
        }
        self.step_args = SimpleNamespace(
            micro_batch=args.micro_batch, device=self.device, bf16=sizes["precision"] == "bf16"
        )

    def settings(self) -> dict:
        z, a = self.z, self.args
        return {
            "dry": a.dry,
            "device": z["device"],
            "preset": z["preset"],
            "length": z["length"],
            "vocab_size": z["vocab"],
            "precision": z["precision"],
            "micro_batch": a.micro_batch,
            "timed_steps": z["steps"],
            "warmup_steps": z["warmup"],
            "backbones": a.backbones,
            "queue_size": 1024,
            "drift_anchors": PAPER_MICRO_BATCH * PAPER_GPUS,
            "paper_gpus_per_job": PAPER_GPUS,
            "optimizer": "AdamW (lr 1e-5)",
            "nfe": a.nfe,
            "sample_batch": a.sample_batch,
            "sample_reps": z["sample_reps"],
            "sample_draws": "float64",
            "scorer": {
                **z["scorer"],
                "vocab_size": 50257,
                "n_positions": z["length"],
                "dtype": "float32",
                "batch_size": a.score_batch,
                "sequences": z["score_n"],
            },
            "max_batch_cap": a.max_batch_cap,
            "caps_s": self.caps(),
            "budget_s": self.budget(),
            "peak_tflops_arg": a.peak_tflops,
            "compile": (not a.dry) or a.compile,
        }

    def caps(self) -> dict:
        caps = dict(CAPS)
        for item in self.args.cap:
            k, _, v = item.partition("=")
            if k not in caps:
                raise SystemExit(f"--cap {item}: unknown part {k!r} (one of {sorted(caps)})")
            caps[k] = float(v)
        return caps

    def budget(self) -> float:
        return self.args.budget or self.z["budget"]

    def init(self, bb: str) -> Path:
        """A random-weight model folder of the measured size (bench/step_overhead.py's make_init)."""
        if bb not in self.inits:
            self.inits[bb] = make_init(Path(self.tmp.name) / bb, self.z["preset"], self.z["length"], bb)
        return self.inits[bb]

    def ids(self, batch: int, vocab: int) -> torch.Tensor:
        """Random data ids (the last id is the special one)."""
        return torch.randint(0, vocab - 1, (batch, self.z["length"]), device=self.device)

    def autocast(self):
        if self.z["precision"] == "bf16":
            return torch.autocast(self.device, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---------------------------------------------------------------- running the parts

    def write(self) -> None:
        self.result["total_s"] = time.monotonic() - self.start
        atomic_write_json(self.args.out, self.result)

    def part(self, name: str, fn) -> None:
        rec: dict = {}
        cap = min(self.caps()[name], self.budget() - (time.monotonic() - self.start))
        t0 = time.monotonic()
        if cap < 1:
            rec["status"] = "skipped: the run's total budget is spent"
        else:
            old = signal.signal(signal.SIGALRM, _alarm)
            signal.setitimer(signal.ITIMER_REAL, cap)
            try:
                fn(rec)
                rec["status"] = "ok"
            except PartTimeout:
                rec["status"] = f"timeout: stopped at its cap of {cap:.0f} s"
            except Skip as e:
                rec["status"] = f"skipped: {e}"
            except Exception as e:  # a part's failure is a result; the next part runs
                if is_oom(e):
                    rec["status"] = "oom"
                else:  # a bug: recorded, printed, and the run exits 1 after the other parts
                    rec["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                    traceback.print_exc()
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)
        rec["seconds"], rec["cap_s"] = round(time.monotonic() - t0, 2), round(max(cap, 0), 1)
        self.result["parts"][name] = rec
        print(f"[{name}] {rec['status']} ({rec['seconds']:.1f} s of {rec['cap_s']:.0f})", flush=True)
        free()
        self.write()

    # ---------------------------------------------------------------- the parts

    def environment(self, rec: dict) -> None:
        import transformers

        info = machine(self.device)
        info.update(torch_cuda=torch.version.cuda, transformers=transformers.__version__)
        if self.device == "cuda":
            p = torch.cuda.get_device_properties(0)
            info.update(
                gpu=p.name,
                capability=f"{p.major}.{p.minor}",
                gpu_memory_gb=p.total_memory / 2**30,
                cudnn=torch.backends.cudnn.version(),
                sdp_enabled={
                    k: getattr(torch.backends.cuda, f"{k}_sdp_enabled")()
                    for k in ("flash", "mem_efficient", "math", "cudnn")
                    if hasattr(torch.backends.cuda, f"{k}_sdp_enabled")
                },
                tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            )
            try:
                info["driver"] = subprocess.run(
                    ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout.strip()
            except (OSError, subprocess.SubprocessError) as e:
                info["driver"] = f"unknown ({type(e).__name__})"
            info["peak_tflops"], info["peak_tflops_from"] = peak_tflops(p.name, self.args.peak_tflops)
        else:
            info["peak_tflops"], info["peak_tflops_from"] = None, "not applicable: CPU (no MFU)"
            print("  CUDA-only settings (driver, cuDNN, SDPA flags, peak TFLOPS): skipped, no GPU")
        rec.update(info)
        self.peak = info["peak_tflops"]
        print(
            "  "
            + ", ".join(
                f"{k}={v}"
                for k, v in info.items()
                if k in ("gpu", "driver", "torch", "torch_cuda", "cudnn", "cpu", "peak_tflops")
            )
        )

    def steps(self, rec: dict) -> None:
        rows = rec["rows"] = {}
        for bb in self.args.backbones:
            runs = {v: setup(self.init(bb), v, self.step_args) for v in ("continuation", "tokendrift")}
            vocab = runs["continuation"][0].model.config.vocab_size
            x = self.ids(self.args.micro_batch, vocab)
            splits = {v: [] for v in runs}
            for k in range(self.z["warmup"] + self.z["steps"]):  # interleaved: load changes hit both alike
                for v, (s, opt, noise) in runs.items():
                    split: dict = {}
                    split["step_s"] = step(s, opt, noise, k, x0=x, split=split)
                    if k >= self.z["warmup"]:
                        splits[v].append(split)
            row = rows[bb] = {}
            for v, (s, opt, noise) in runs.items():
                row[v] = {
                    key: statistics.median(sp[key] for sp in splits[v]) for key in ("micro_s", "optimizer_s", "step_s")
                }
                reset_peak(self.device)
                step(s, opt, noise, 0, x0=x)
                row[v]["peak_mem_gb"] = peak_gb(self.device)
            c, t = row["continuation"], row["tokendrift"]
            row["ratio_step"] = t["step_s"] / c["step_s"]
            row["ratio_micro"] = t["micro_s"] / c["micro_s"]
            model = runs["continuation"][0].model
            flops = step_flops(model, self.args.micro_batch, self.z["length"])
            row["params"] = sum(p.numel() for p in model.parameters())
            row["flops_params"] = matmul_params(model)
            row["continuation_flops"] = flops
            row["continuation_tflops_micro"] = flops / c["micro_s"] / 1e12
            row["continuation_tflops_step"] = flops / c["step_s"] / 1e12
            if self.peak:
                row["continuation_mfu_micro"] = row["continuation_tflops_micro"] / self.peak
                row["continuation_mfu_step"] = row["continuation_tflops_step"] / self.peak
            row["feature_dim"] = runs["tokendrift"][0].queues["real"].dim
            print(
                f"  {bb}: continuation {1e3 * c['step_s']:.1f} ms (micro {1e3 * c['micro_s']:.1f}), TokenDrift "
                f"{1e3 * t['step_s']:.1f} ms (micro {1e3 * t['micro_s']:.1f}), ratio {row['ratio_step']:.2f}"
                + (
                    f", MFU {100 * row['continuation_mfu_micro']:.1f}%"
                    if "continuation_mfu_micro" in row
                    else " (MFU: skipped, no GPU peak)"
                )
                + (
                    f", peak memory {c['peak_mem_gb']:.1f} / {t['peak_mem_gb']:.1f} GiB"
                    if self.device == "cuda"
                    else ""
                )
            )
            del runs
            free()
        if self.device != "cuda":
            print("  peak memory and MFU: skipped, CUDA only")

    def drift(self, rec: dict) -> None:
        steps = self.result["parts"].get("steps", {}).get("rows", {})
        bb = next(iter(steps), None)
        d = steps[bb]["feature_dim"] if bb else 2 * (768 if self.z["preset"] == "small" else 128)
        rec["feature_dim"] = d
        for anchors in (PAPER_MICRO_BATCH * PAPER_GPUS, self.args.micro_batch):
            rec[f"drift_field_s_{anchors}_anchors"] = drift_time(d, self.device, 20, anchors)
        rec["anchors_paper"] = PAPER_MICRO_BATCH * PAPER_GPUS
        if bb:
            td = steps[bb]["tokendrift"]["micro_s"]
            rec["share_of_tokendrift_micro_step"] = rec[f"drift_field_s_{rec['anchors_paper']}_anchors"] / td
            rec["share_from"] = f"{bb} TokenDrift micro-step"
            print(
                f"  8 anchors: {1e3 * rec['drift_field_s_8_anchors']:.2f} ms, "
                f"{100 * rec['share_of_tokendrift_micro_step']:.2f}% of the TokenDrift micro-step"
            )

    def max_micro_batch(self, rec: dict) -> None:
        if self.device != "cuda":
            raise Skip("CUDA only (the search finds the GPU's memory limit)")
        bb = self.args.backbones[0]
        rec["backbone"] = bb
        for v in ("continuation", "tokendrift"):
            s, opt, noise = setup(self.init(bb), v, self.step_args)
            tries, best = {}, None
            rec[v] = {"tries": tries}
            mb = self.args.micro_batch
            while mb <= self.args.max_batch_cap:
                s.cfg["micro_batch"] = mb
                try:
                    x = self.ids(mb, s.model.config.vocab_size)
                    step(s, opt, noise, 0, x0=x)  # the first step at a size allocates; the second is timed
                    reset_peak(self.device)
                    dt = step(s, opt, noise, 1, x0=x)
                except Exception as e:
                    if not is_oom(e):
                        raise
                    tries[mb] = "oom"
                    opt.zero_grad(set_to_none=True)
                    break
                finally:
                    x = None
                    free()
                tries[mb] = {
                    "peak_mem_gb": peak_gb(self.device),
                    "step_s": dt,
                    "tokens_per_s": mb * self.z["length"] / dt,
                }
                best = mb
                mb *= 2
            rec[v]["largest"] = best
            rec[v]["capped"] = best is not None and best * 2 > self.args.max_batch_cap
            print(
                f"  {v}: largest micro-batch {best}"
                + (" (the cap)" if rec[v]["capped"] else "")
                + f"; tries {list(tries)}"
            )
            del s, opt, noise
            free()

    def sampler(self, rec: dict) -> None:
        from tokendrift.core.checkpoint import load_model_dir
        from tokendrift.core.diffusion import make_diffusion

        rows = rec["rows"] = {}
        n = self.args.sample_batch
        for bb in self.args.backbones:
            model, _ = load_model_dir(self.init(bb), device=self.device)
            diff = make_diffusion(bb, model.config.vocab_size)
            rows[bb] = {}
            with torch.no_grad():
                for nfe in self.args.nfe:
                    with self.autocast():
                        r = time_sampler(model, diff, n, self.z["length"], nfe, self.z["sample_reps"], self.device)
                    r["samples_per_s"] = n / r["sampler_s"]
                    rows[bb][str(nfe)] = r
                    print(
                        f"  {bb} NFE {nfe}: {r['samples_per_s']:.2f} samples/s, sampler overhead "
                        f"{100 * r['overhead']:.1f}%, own work {100 * r['own_work_share']:.1f}% of the forwards"
                    )
                # the held-out NELBO's forwards (fp32, as `tokendrift nelbo` runs them), batch 16
                x0 = self.ids(16, model.config.vocab_size)
                gen = torch.Generator(device=self.device).manual_seed(0)
                diff.nelbo(model, x0, generator=gen, n_t=1)

                def nelbo(m=model, d=diff, x=x0, g=gen):
                    return d.nelbo(m, x, generator=g, n_t=1)

                t = statistics.median(timed(nelbo, self.device) for _ in range(3))
                rows[bb]["nelbo_seq_s"] = t / 16
            del model
            free()

    def scorer(self, rec: dict) -> None:
        from transformers import GPT2Config, GPT2LMHeadModel

        from tokendrift.jobs.score import gen_ppl

        cfg = GPT2Config(vocab_size=50257, n_positions=self.z["length"], **self.z["scorer"])
        with torch.device(self.device):
            lm = GPT2LMHeadModel(cfg).eval()
        rec["params"] = sum(p.numel() for p in lm.parameters())
        n, L, bs = self.z["score_n"], self.z["length"], self.args.score_batch
        ids = torch.randint(0, 50256, (n, L))  # no EOS: every token counts
        tok = PreTokenized(ids, eos=50256)
        texts = [str(i) for i in range(n)]
        dev_ids = ids.to(self.device)

        def score():
            return gen_ppl(texts, (lm, tok), batch_size=bs, max_length=L, device=self.device)

        def bare():
            with torch.no_grad():
                return [lm(dev_ids[i : i + bs], use_cache=False).logits.float() for i in range(0, n, bs)]

        score()
        ts, tb = [], []
        for _ in range(3):
            ts.append(timed(score, self.device))
            tb.append(timed(bare, self.device))
        s, b = statistics.median(ts), statistics.median(tb)
        rec.update(
            score_s=s,
            bare_forwards_s=b,
            tokens=n * L,
            tokens_per_s=n * L / s,
            bare_tokens_per_s=n * L / b,
            overhead=s / b - 1,
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        )
        print(
            f"  GPT-2 Large-sized ({rec['params'] / 1e6:.0f}M), fp32: {rec['tokens_per_s']:.0f} tokens/s, "
            f"overhead {100 * rec['overhead']:.1f}% over bare forwards"
        )

    def attention(self, rec: dict) -> None:
        from torch.profiler import ProfilerActivity, profile

        from tokendrift.core.checkpoint import load_model_dir

        bb = self.args.backbones[0]
        model, _ = load_model_dir(self.init(bb), device=self.device)
        x = self.ids(self.args.micro_batch, model.config.vocab_size)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device == "cuda" else [])
        with torch.no_grad(), self.autocast():
            model(x)
            sync(self.device)
            with profile(activities=acts) as prof:
                model(x)
                sync(self.device)
        names = {e.key for e in prof.key_averages()}
        rec["aten_ops"] = sorted(
            n
            for n in names
            if n.startswith("aten::_scaled_dot_product")
            or n.startswith("aten::_flash")
            or n.startswith("aten::_efficient")
        )
        rec["kernels"] = sorted(
            n
            for n in names
            if not n.startswith("aten::")
            and any(k in n.lower() for k in ("flash", "fmha", "sdpa", "attention", "attn"))
        )[:20]
        print(f"  SDPA runs: {', '.join(rec['aten_ops']) or 'no fused op (the math path)'}")
        if rec["kernels"]:
            print(f"  kernels: {', '.join(rec['kernels'][:4])}")
        if self.device != "cuda":
            print("  GPU kernels and the backend check: skipped, CUDA only")
            return
        from torch.nn.attention import SDPBackend, sdpa_kernel

        c = model.config
        q = torch.randn(
            self.args.micro_batch,
            c.n_heads,
            self.z["length"],
            c.hidden_size // c.n_heads,
            device="cuda",
            dtype=torch.bfloat16,
        )
        rec["backends_accepting_dit_shapes"] = {}
        for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
            if not hasattr(SDPBackend, name):
                continue
            try:
                with sdpa_kernel(getattr(SDPBackend, name)):
                    torch.nn.functional.scaled_dot_product_attention(q, q, q)
                rec["backends_accepting_dit_shapes"][name] = True
            except RuntimeError as e:
                rec["backends_accepting_dit_shapes"][name] = str(e).splitlines()[0][:200]

    def compile(self, rec: dict) -> None:
        if self.args.dry and not self.args.compile:
            raise Skip("in --dry (inductor's compilation on the CPU takes minutes; --compile forces it)")
        bb = self.args.backbones[0]
        eager = self.result["parts"].get("steps", {}).get("rows", {}).get(bb, {})
        rec["backbone"] = bb
        for v in ("continuation", "tokendrift"):
            s, opt, noise = setup(self.init(bb), v, self.step_args, extra={"compile": True})
            x = self.ids(self.args.micro_batch, s.model.config.vocab_size)
            r = rec[v] = {}
            r["first_step_s"] = step(s, opt, noise, 0, x0=x)  # includes compiling forward and backward
            step(s, opt, noise, 1, x0=x)
            splits = []
            for k in range(self.z["steps"]):
                split: dict = {}
                split["step_s"] = step(s, opt, noise, k, x0=x, split=split)
                splits.append(split)
            for key in ("micro_s", "optimizer_s", "step_s"):
                r[key] = statistics.median(sp[key] for sp in splits)
            if v in eager:
                r["speedup_step"] = eager[v]["step_s"] / r["step_s"]
            print(
                f"  {v}: compiled in {r['first_step_s']:.1f} s, step {1e3 * r['step_s']:.1f} ms"
                + (f", {r['speedup_step']:.2f}x eager" if "speedup_step" in r else "")
            )
            del s, opt, noise
            free()


class PreTokenized:
    """Stands in for the evaluator's tokenizer: text i -> the stored ids of row i (all attended)."""

    def __init__(self, ids: torch.Tensor, eos: int):
        self.ids, self.eos_token_id = ids, eos

    def __call__(self, texts, **kw):
        ids = self.ids[[int(t) for t in texts]]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry", action="store_true", help="tiny sizes on the CPU; CUDA-only parts skipped")
    ap.add_argument("--out", type=Path, help="JSON file (default bench/results/gpu.json, --dry: gpu_dry_cpu.json)")
    ap.add_argument("--micro-batch", type=int, default=PAPER_MICRO_BATCH)
    ap.add_argument("--backbones", nargs="+", default=["mdlm", "duo"], choices=["mdlm", "duo"])
    ap.add_argument("--nfe", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument(
        "--sample-batch", type=int, help="samples per sampler batch (default the paper config's 32; --dry 8)"
    )
    ap.add_argument("--score-batch", type=int, help="evaluator batch (default the paper config's 16; --dry 8)")
    ap.add_argument("--max-batch-cap", type=int, default=256, help="largest micro-batch the doubling search tries")
    ap.add_argument("--peak-tflops", type=float, help="the device's bf16 dense peak, when not in the table")
    ap.add_argument(
        "--budget",
        type=float,
        help="seconds for the whole run (default 330; --dry 150: about 20 s of CPU time, more wall time on a loaded machine)",
    )
    ap.add_argument("--cap", action="append", default=[], metavar="PART=SECONDS", help="a part's cap; repeatable")
    ap.add_argument("--compile", action="store_true", help="run the compile part in --dry too")
    args = ap.parse_args(argv)
    sizes = SIZES["dry" if args.dry else "gpu"]
    args.sample_batch = args.sample_batch or sizes["sample_batch"]
    args.score_batch = args.score_batch or sizes["score_batch"]
    args.out = args.out or RESULTS / ("gpu_dry_cpu.json" if args.dry else "gpu.json")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = SIZES["dry" if args.dry else "gpu"]
    if not args.dry and not torch.cuda.is_available():
        print("error: no GPU visible; `python bench/gpu.py --dry` runs the CPU dry mode", file=sys.stderr)
        return 2
    if args.dry:
        torch.set_num_threads(1)  # the dry run shares CI's small machine: one thread never oversubscribes it
        print("dry mode: tiny sizes on the CPU; CUDA-only parts are skipped (each says so)")
    torch.manual_seed(0)
    b = Bench(args, sizes)
    print(f"settings: {json.dumps(b.result['settings'])}")
    try:
        for name in CAPS:
            b.part(name, getattr(b, name))
    finally:
        b.tmp.cleanup()
    b.write()
    print(f"wrote {args.out} ({b.result['total_s']:.0f} s; platform {platform.platform()})")
    errors = [k for k, v in b.result["parts"].items() if v["status"].startswith("error")]
    if errors:
        print(f"error: part(s) {', '.join(errors)} failed (their status in {args.out})", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
