"""The GPU-hours of a grid, before anything is submitted: `tokendrift grid CONFIG --cost RESULTS.json`.

RESULTS.json is what `python bench/gpu.py` writes (bench/results/gpu.json; the CPU dry mode's
bench/results/gpu_dry_cpu.json). Every figure is the grid's work at a measured speed, labelled
with the measurement it comes from; a CPU measurement is labelled "CPU measurement, not a GPU
estimate" and never turned into a GPU figure.

- train: per job, steps x (accumulation x micro-step + optimizer step) x GPUs per job, with
  accumulation = global_batch / (micro_batch x GPUs) as `tokendrift train` computes it (64 in the
  paper: 512 / (2 x 4)). The micro-step (forward and backward) and the optimizer step are the
  measured ones of the run's backbone and variant (every TokenDrift ablation at the TokenDrift
  step's speed), scaled linearly when the config's micro-batch differs from the measured one.
  Gradient all-reduce and the features' all-gather are not measured (one GPU) nor counted.
- start: pretraining a starting checkpoint (the embedded default) at the continuation step's
  speed; importing a released one costs no GPU time. evaluator: pretraining is not measured.
- sample: per checkpoint, every (temperature, NFE) cell's n_samples at the measured samples/s
  of its backbone at that NFE (a straight line in NFE through the measured ones when the NFE
  was not measured).
- score: per checkpoint, every cell's n_samples x L tokens at the scorer's measured tokens/s,
  plus the held-out NELBO's n_batches x batch_size x n_t forwards at the measured time per
  sequence and draw of t.
Job start-up, model and data loading, queueing and the probe are not counted.

GPUs per job come from the Slurm profile's `set-resources` (profiles/slurm/profile.yaml, the
`gpu` of rules train, pretrain_start, sample_run, sample_start, score_run, score_start): that is
what the jobs are given and what a cluster charges; a rule without one counts 1 GPU, and says so.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import yaml

from ..core import config as configlib
from ..core.utils import TokenDriftError, read_json

DEFAULT_PROFILE = "profiles/slurm/profile.yaml"
RULES = ("train", "pretrain_start", "sample_run", "sample_start", "score_run", "score_start")


def gpus_per_job(profile: str | Path) -> tuple[dict, str]:
    """Rule -> GPUs per job from a Snakemake profile's set-resources, and a label saying so."""
    path = Path(profile)
    try:
        prof = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise TokenDriftError(
            f"--profile-yaml: {path} not found (the Slurm profile whose set-resources give the GPUs per job)"
        ) from None
    except yaml.YAMLError as e:
        raise TokenDriftError(f"--profile-yaml: {path} is not valid YAML ({e})") from None
    res = prof.get("set-resources") or {}
    gpus, assumed = {}, []
    for rule in RULES:
        g = (res.get(rule) or {}).get("gpu")
        try:
            gpus[rule] = int(g) if g is not None else 1
        except (TypeError, ValueError):
            raise TokenDriftError(f"{path}: set-resources.{rule}.gpu: {g!r} is not a number") from None
        if g is None:
            assumed.append(rule)
    label = f"GPUs per job from {path} set-resources: " + ", ".join(f"{r} {gpus[r]}" for r in RULES)
    if assumed:
        label += f" (no gpu given for {', '.join(assumed)}: 1 counted)"
    return gpus, label


def load_measurement(path: str | Path) -> dict:
    m = read_json(path, "measurement file")
    if not isinstance(m, dict) or not isinstance(m.get("parts"), dict) or "settings" not in m:
        raise TokenDriftError(f"{path}: not a bench/gpu.py result (no parts/settings)")
    return m


def measurement_label(m: dict, path) -> str:
    s, env = m["settings"], m["parts"].get("environment", {})
    sizes = f"preset {s.get('preset')}, length {s.get('length')}, micro-batch {s.get('micro_batch')}"
    if m.get("measured_on") == "cuda":
        return f"GPU measurement: {env.get('gpu', 'GPU')} ({sizes}; {path}, {m.get('date')})"
    return (
        f"CPU measurement, not a GPU estimate: {env.get('cpu', 'CPU')} at the dry sizes ({sizes}; {path}, "
        f"{m.get('date')})"
    )


def _ok(m: dict, part: str) -> dict | None:
    p = m["parts"].get(part)
    return p if p and p.get("status") == "ok" else None


def _backbone_row(rows: dict, bb: str) -> tuple[dict | None, str]:
    """The measured row of backbone ``bb``, or another backbone's (said) when it was not measured."""
    if bb in rows:
        return rows[bb], bb
    for other, row in rows.items():
        return row, f"{other}'s (no {bb} measurement)"
    return None, ""


def seconds_per_sample(row: dict, nfe: int) -> tuple[float, str]:
    """Seconds per sample at ``nfe``: measured, or on a straight line through the measured NFEs."""
    pts = sorted((int(k), 1 / v["samples_per_s"]) for k, v in row.items() if k.isdigit())
    for n, s in pts:
        if n == nfe:
            return s, "measured"
    if len(pts) < 2:
        raise TokenDriftError(f"measurement: NFE {nfe} not measured and too few NFEs to fit a line")
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return max(my + b * (nfe - mx), 0.0), "fitted line in NFE"


def grid_cost(grid, m: dict, gpus: dict) -> tuple[list[dict], list[str]]:
    """Rows {stage, what, jobs, gpu_hours (None = not measured), basis} and notes."""
    c, s = grid.config, m["settings"]
    rows, notes = [], []
    length = configlib.validate("source", c["source"])["length"] or (64 if c["source"]["kind"] == "synthetic" else 1024)
    if s.get("length") != length:
        notes.append(
            f"measured at length {s.get('length')}; the grid's sequences have {length} tokens: the "
            f"measured speeds are used as they are, not scaled"
        )
    steps = _ok(m, "steps")
    step_rows = steps["rows"] if steps else {}

    def train_hours(cfg: dict, bb: str, g: int) -> tuple[float | None, str]:
        row, whose = _backbone_row(step_rows, bb)
        if row is None:
            return None, "not measured (no steps part in the measurement)"
        v = row[cfg["variant"]]
        per_step_gpus = cfg["micro_batch"] * g
        accum = -(-cfg["global_batch"] // per_step_gpus)
        scale = cfg["micro_batch"] / s["micro_batch"]
        sec = cfg["steps"] * (accum * v["micro_s"] * scale + v["optimizer_s"])
        basis = (
            f"{cfg['steps']} steps x ({accum} micro-steps x {v['micro_s'] * scale:.4g} s + optimizer "
            f"{v['optimizer_s']:.4g} s) x {g} GPUs; {whose} {cfg['variant']} step"
        )
        if scale != 1:
            basis += f", scaled from micro-batch {s['micro_batch']} to {cfg['micro_batch']}"
        return sec * g / 3600, basis

    # start: pretraining (embedded default) or import (no GPU)
    for bb in grid.backbones:
        if "pretrain" in c["start"][bb]:
            cfg = configlib.validate("train", grid.pretrain_config(bb))
            cfg["variant"] = "continuation"
            h, basis = train_hours(cfg, bb, gpus["pretrain_start"])
            rows.append({"stage": "start", "what": f"{bb} pretraining", "jobs": 1, "gpu_hours": h, "basis": basis})
        else:
            rows.append(
                {
                    "stage": "start",
                    "what": f"{bb} import",
                    "jobs": 1,
                    "gpu_hours": 0.0,
                    "basis": "import of a released checkpoint: no GPU",
                }
            )
    if "pretrain" in c["evaluator"]:
        rows.append(
            {
                "stage": "evaluator",
                "what": "evaluator pretraining",
                "jobs": 1,
                "gpu_hours": None,
                "basis": "not measured by bench/gpu.py",
            }
        )

    # train: one job per (backbone, run, seed), grouped by backbone and variant
    groups: dict = defaultdict(lambda: {"jobs": 0, "h": 0.0, "basis": set(), "none": False})
    for bb, rid in grid.runs:
        for seed in grid.seeds:
            cfg = configlib.validate("train", grid.train_config(bb, rid, seed))
            h, basis = train_hours(cfg, bb, gpus["train"])
            g = groups[(bb, cfg["variant"], cfg["steps"])]
            g["jobs"] += 1
            g["none"] |= h is None
            g["h"] += h or 0.0
            g["basis"].add(basis)
    for (bb, variant, n), g in sorted(groups.items()):
        rows.append(
            {
                "stage": "train",
                "what": f"{bb} {variant}, {n} steps",
                "jobs": g["jobs"],
                "gpu_hours": None if g["none"] else g["h"],
                "basis": "; ".join(sorted(g["basis"])),
            }
        )

    # sample and score: one job each per checkpoint (unit)
    sampler, scorer = _ok(m, "sampler"), _ok(m, "scorer")
    n_samples, sample_batch = c["sample"]["n_samples"], c["sample"]["batch_size"]
    if sampler and s.get("sample_batch") != sample_batch:
        notes.append(f"sampler measured at batch {s.get('sample_batch')}; the grid samples at batch {sample_batch}")
    nb = c["nelbo"]
    for bb in grid.backbones:
        units = [u for u in grid.units if u.backbone == bb]
        if not units:
            continue
        row, whose = _backbone_row(sampler["rows"], bb) if sampler else (None, "")
        if row is None:
            rows.append(
                {
                    "stage": "sample",
                    "what": bb,
                    "jobs": len(units),
                    "gpu_hours": None,
                    "basis": "not measured (no sampler part in the measurement)",
                }
            )
        else:
            sec, how = 0.0, set()
            for u in units:
                for _, nfe in grid.cells(u):
                    per, h = seconds_per_sample(row, nfe)
                    sec += n_samples * per
                    how.add(f"NFE {nfe} {1 / per:.4g} samples/s ({h})" if per else f"NFE {nfe} 0 s ({h})")
            cells = sum(len(grid.cells(u)) for u in units)
            g = gpus["sample_run"]
            rows.append(
                {
                    "stage": "sample",
                    "what": bb,
                    "jobs": len(units),
                    "gpu_hours": sec * g / 3600,
                    "basis": f"{cells} cells x {n_samples} samples at {whose}: {', '.join(sorted(how))}; {g} GPU",
                }
            )
        cells = sum(len(grid.cells(u)) for u in units)
        tokens = cells * n_samples * length
        nelbo_seqs = len(units) * nb["n_batches"] * nb["batch_size"] * nb["n_t"]
        if scorer is None:
            rows.append(
                {
                    "stage": "score",
                    "what": bb,
                    "jobs": len(units),
                    "gpu_hours": None,
                    "basis": "not measured (no scorer part in the measurement)",
                }
            )
            continue
        sec = tokens / scorer["tokens_per_s"]
        basis = f"{tokens:,} tokens at {scorer['tokens_per_s']:.4g} tokens/s"
        if row is not None and "nelbo_seq_s" in row:
            sec += nelbo_seqs * row["nelbo_seq_s"]
            basis += f" + NELBO {nelbo_seqs:,} sequence forwards at {row['nelbo_seq_s']:.4g} s"
        else:
            basis += " (NELBO not measured, not counted)"
        g = gpus["score_run"]
        rows.append(
            {
                "stage": "score",
                "what": bb,
                "jobs": len(units),
                "gpu_hours": sec * g / 3600,
                "basis": basis + f"; {g} GPU",
            }
        )
    return rows, notes


def format_cost(rows: list[dict], notes: list[str], header: list[str], unit: str = "GPU-hours") -> str:
    lines = list(header) + [f"note: {n}" for n in notes] + [""]
    lines.append(f"{'stage':<10} {'what':<40} {'jobs':>5} {unit:>12}  from")
    stages: dict = defaultdict(lambda: [0.0, 0, False])
    for r in rows:
        h = r["gpu_hours"]
        lines.append(f"{r['stage']:<10} {r['what']:<40} {r['jobs']:>5} {_h(h):>12}  {r['basis']}")
        st = stages[r["stage"]]
        st[0] += h or 0.0
        st[1] += r["jobs"]
        st[2] |= h is None
    lines.append("")
    for name, (h, jobs, missing) in stages.items():
        lines.append(
            f"{name:<10} {'(stage)':<40} {jobs:>5} {_h(h):>12}" + ("  + what is not measured" if missing else "")
        )
    total = sum(st[0] for st in stages.values())
    missing = any(st[2] for st in stages.values())
    lines.append(
        f"{'total':<10} {'':<40} {sum(st[1] for st in stages.values()):>5} {_h(total):>12}"
        + ("  + what is not measured" if missing else "")
    )
    return "\n".join(lines)


def _h(h: float | None) -> str:
    if h is None:
        return "not measured"
    return f"{h:,.1f}" if h >= 10 else f"{h:.3g}"


def describe_cost(grid, config_name: str, measurement: str, profile: str) -> str:
    m = load_measurement(measurement)
    gpus, gpu_label = gpus_per_job(profile)
    rows, notes = grid_cost(grid, m, gpus)
    label = measurement_label(m, measurement)
    header = [
        f"GPU-hours of the grid {config_name} (name: {grid.config['name']}), before anything is submitted",
        f"measurement: {label}",
        gpu_label,
    ]
    if m.get("measured_on") != "cuda":
        header.insert(
            1,
            "No GPU measurement yet: every figure below is the CPU measurement's time (CPU measurement, "
            "not a GPU estimate). On one GPU run `python bench/gpu.py`, then pass bench/results/gpu.json.",
        )
    return format_cost(rows, notes, header, "GPU-hours" if m.get("measured_on") == "cuda" else "hours (CPU)")
