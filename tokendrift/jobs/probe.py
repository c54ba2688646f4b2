"""Position-wise information-decay probe (docs/evaluation.md; "On the role of discretization
in diffusion LLMs"): a validation prompt followed by a span of fully corrupted positions, ONE
forward pass, and per position of the span the model's p_theta(x0 | x_t): top-3 tokens and
probabilities, top-1 probability, predictive entropy, the probability mass on the corpus's
most frequent tokens, and the EOS probability (when the source has an EOS).

The discretization paper probes an instruction-tuned masked model with a prompt and 128
masks (its generation length). MDLM and DUO are trained on blocks of fixed length (1024 in the
paper's setting) and never see a shorter sequence, so by default the input is a full block:
the prompt, then corrupted positions up to the source's length, and the statistics are read
over the first ``span`` of them (``input_length="span"``: prompt + span only, out of the
models' training distribution).

MDLM: the corrupted positions are masked (its only corruption) and the model has no time
input. DUO has no mask state: the corrupted positions hold uniform noise ids, and the model is
told one time for the whole sequence. At t = 1 it is told that every position, the prompt
included, is noise (alpha_1 = 0: the posterior ignores the input), which makes its panel a
plot of unconditional marginals. By default (``duo_time="matched"``) it is told the time
whose clean share alpha_t equals the prompt's share of the input, prompt_len / input length:
the number of clean tokens it then expects is the number the prompt gives. Even so DUO's
forward process scatters clean tokens uniformly, never a clean prefix before pure noise, so
its panel is weaker evidence than MDLM's; probe.json and top3.md say so.

    tokendrift probe --checkpoint start=DIR --checkpoint tokendrift=DIR --out OUT
writes OUT/probe.json (every number), OUT/probe.png and .pdf (three panels against distance
from the prompt, one line per checkpoint, mean with a 10-90 percentile band), OUT/top3.md, and
OUT/done.json, their completion record (sizes and SHA-256: tokendrift.core.records).
"""

from __future__ import annotations

import json
import math

import torch

from ..core import config as configlib
from ..core.checkpoint import open_checkpoint
from ..core.records import record_text
from ..core.utils import TokenDriftError, atomic_dir, figure_bytes, resolve_device

OPTIONS = configlib.defaults("probe")  # tokendrift/schemas/probe.schema.yaml

DUO_NOTE = (
    "DUO: corrupted positions = uniform noise ids (no mask state), one time t for the whole input; "
    "its forward process never makes a clean prefix before pure noise, so this panel is weaker evidence "
    "than MDLM's"
)
DUO_T1_NOTE = (
    "; at t = 1 the model is told the prompt is noise too (alpha_1 = 0): the panel shows its unconditional marginals"
)


def probe_time(diffusion, prompt_len: int, input_len: int, duo_time="matched") -> float:
    """The time the model is told: MDLM ignores it (no time conditioning; 1.0); DUO "matched" =
    the t with alpha_t = prompt_len / input_len, or the number given (0 < t <= 1)."""
    if diffusion.name != "duo":
        return 1.0
    if duo_time == "matched":
        return min(1.0, (1 - prompt_len / input_len) / (1 - diffusion.eps))
    try:
        t = float(duo_time)
    except (TypeError, ValueError):
        t = float("nan")
    if not 0 < t <= 1:
        raise TokenDriftError(f"duo_time: 'matched' or a time in (0, 1], got {duo_time!r}")
    return t


def frequent_ids(source, k: int, n_batches: int = 16, batch_size: int = 64) -> list[int]:
    """The k most frequent token ids of the training data (a sample of n_batches batches)."""
    counts = torch.zeros(source.vocab_size, dtype=torch.long)
    for i in range(n_batches):
        counts += torch.bincount(source.batch("train", i, batch_size).flatten(), minlength=source.vocab_size)
    return counts.topk(min(k, source.vocab_size)).indices.tolist()


@torch.no_grad()
def position_stats(p: torch.Tensor, frequent: list[int], eos: int | None) -> dict:
    """Per-position statistics of predictive distributions p [N, span, V] (rows sum to 1)."""
    p = p.double()
    top = p.topk(3, dim=-1)
    ent = -(p * p.clamp_min(1e-300).log()).sum(-1)
    freq = p[..., frequent].sum(-1)
    per = {"top1": top.values[..., 0], "entropy": ent, "frequent_share": freq}
    if eos is not None:
        per["eos"] = p[..., eos]
    out = {}
    for name, v in per.items():
        q = torch.quantile(v, torch.tensor([0.1, 0.9], dtype=v.dtype), dim=0)
        out[name] = {"mean": v.mean(0).tolist(), "p10": q[0].tolist(), "p90": q[1].tolist()}
    out["top3_ids"] = top.indices.tolist()
    out["top3_probs"] = top.values.tolist()
    return out


@torch.no_grad()
def probe_checkpoint(
    checkpoint: str,
    *,
    n_prompts: int = OPTIONS["n_prompts"],
    prompt_len: int = OPTIONS["prompt_len"],
    span: int = OPTIONS["span"],
    batch_size: int = 64,
    seed: int = 0,
    top_frequent: int = 10,
    device: str = OPTIONS["device"],
    input_length: str = "block",
    duo_time="matched",
) -> dict:
    for name, v in (("n_prompts", n_prompts), ("prompt_len", prompt_len), ("span", span)):
        if v < 1:
            raise TokenDriftError(f"{name}: must be >= 1, got {v}")
    if input_length not in ("block", "span"):
        raise TokenDriftError(f"input_length: 'block' or 'span', got {input_length!r}")
    device = resolve_device(device)
    model, meta, diffusion, source = open_checkpoint(checkpoint, device=device)
    if prompt_len + span > source.length:
        raise TokenDriftError(
            f"prompt_len + span = {prompt_len + span} exceeds the source's sequence length "
            f"{source.length} ({checkpoint})"
        )
    L = source.length if input_length == "block" else prompt_len + span
    t = probe_time(diffusion, prompt_len, L, duo_time)
    gen = torch.Generator().manual_seed(seed)
    x = source.batch("valid", 0, n_prompts)[:, :L].clone()
    prompts = x[:, :prompt_len].clone()
    if meta["diffusion"] == "mdlm":
        x[:, prompt_len:] = diffusion.special_id
    else:
        x[:, prompt_len:] = diffusion.prior_sample(n_prompts, L - prompt_len, gen, "cpu")
    sigma = diffusion.sigma(torch.full((n_prompts,), t, dtype=torch.float64)).float()
    probs = []
    for a in range(0, n_prompts, batch_size):
        logits = model(x[a : a + batch_size].to(device), sigma[a : a + batch_size].to(device)).float()
        probs.append(diffusion.p_x0(logits[:, prompt_len : prompt_len + span], torch.float64, 1.0, 1.0).cpu())
    p = torch.cat(probs)
    frequent = frequent_ids(source, top_frequent)
    eos = getattr(source, "eos_id", None)
    stats = position_stats(p, frequent, eos)
    return {
        "checkpoint": str(checkpoint),
        "diffusion": meta["diffusion"],
        "step": meta.get("step"),
        "vocab_size": model.config.vocab_size,
        "n_prompts": n_prompts,
        "prompt_len": prompt_len,
        "span": span,
        "input_length": L,
        "time": None if meta["diffusion"] == "mdlm" else t,
        "alpha_t": None if meta["diffusion"] == "mdlm" else float(diffusion.alpha(t)),
        "corruption": "mask (no time input)"
        if meta["diffusion"] == "mdlm"
        else DUO_NOTE + (DUO_T1_NOTE if t >= 1 else ""),
        "frequent_ids": frequent,
        "frequent_tokens": source.decode(torch.tensor([frequent]))[0].split() if frequent else [],
        "eos_id": eos,
        "example_prompt": source.decode(prompts[:1])[0],
        "example_top3": [
            [(source.decode(torch.tensor([[i]]))[0], pr) for i, pr in zip(ids, prs)]
            for ids, prs in zip(stats.pop("top3_ids")[0], stats.pop("top3_probs")[0])
        ],
        **stats,
    }


def distances(span: int) -> list[int]:
    """1, 2, 4, 8, ... up to the span (and the span itself)."""
    d = [2**k for k in range(int(math.log2(span)) + 1)]
    return d + ([span] if d[-1] != span else [])


def plot(results: dict[str, dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("top1", "top-1 probability"),
        ("entropy", "predictive entropy (nats)"),
        ("frequent_share", "mass on the most frequent tokens"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for label, r in results.items():
        d = list(range(1, r["span"] + 1))
        for ax, (key, name) in zip(axes, panels):
            ax.plot(d, r[key]["mean"], label=label)
            ax.fill_between(d, r[key]["p10"], r[key]["p90"], alpha=0.2)
            ax.set_xlabel("distance from the prompt (positions)")
            ax.set_ylabel(name)
    axes[0].legend()
    first = next(iter(results.values()))
    title = (
        f"Information decay over a {first['span']}-position span after a {first['prompt_len']}-token prompt "
        f"({first['n_prompts']} prompts; mean, 10-90% band)"
    )
    if first["diffusion"] == "duo":
        title += (
            f"\nDUO: uniform-noise positions, t = {first['time']:.3f} for the whole input (alpha_t = "
            f"{first['alpha_t']:.3f}); weaker evidence than MDLM's panel (probe.json, top3.md)"
        )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def top3_table(results: dict[str, dict]) -> str:
    first = next(iter(results.values()))
    when = "" if first.get("time") is None else f" at t = {first['time']:.4f} (alpha_t = {first['alpha_t']:.4f})"
    lines = [
        f"Example prompt (end): `... {' '.join(first['example_prompt'].split()[-12:])}`",
        "",
        f"Input: a {first['prompt_len']}-token prompt, then corrupted positions up to {first['input_length']} "
        f"tokens; the table reads the first {first['span']} of them.",
        "",
        f"Corruption: {first['corruption']}{when}",
        "",
        "| distance | " + " | ".join(results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for dist in distances(first["span"]):
        cells = [", ".join(f"{tok} {pr:.2f}" for tok, pr in r["example_top3"][dist - 1]) for r in results.values()]
        lines.append(f"| {dist} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_probe(checkpoints: dict[str, str], out: str, **kw) -> dict:
    if not checkpoints:
        raise TokenDriftError("--checkpoint: give at least one LABEL=PATH")
    results = {label: probe_checkpoint(path, **kw) for label, path in checkpoints.items()}
    kinds = {(r["diffusion"], r["vocab_size"]) for r in results.values()}
    if len(kinds) > 1:
        raise TokenDriftError(
            f"--checkpoint: the checkpoints differ in backbone or vocabulary {sorted(kinds)}; "
            "probe one backbone at a time"
        )
    fig = plot(results)
    import matplotlib.pyplot as plt

    with atomic_dir(out) as tmp:
        (tmp / "probe.json").write_text(json.dumps(results, indent=1) + "\n")
        for ext in ("png", "pdf"):
            (tmp / f"probe.{ext}").write_bytes(figure_bytes(fig, ext))
        (tmp / "top3.md").write_text(top3_table(results))
        files = [tmp / f for f in ("probe.json", "probe.png", "probe.pdf", "top3.md")]
        (tmp / "done.json").write_text(record_text({"checkpoints": checkpoints}, tmp, files))  # tokendrift.core.records
    plt.close(fig)
    return results


def run(args) -> int:
    ckpts = {}
    for item in args.checkpoint:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise TokenDriftError(f"--checkpoint {item!r}: expected LABEL=PATH")
        ckpts[label] = path
    write_probe(
        ckpts,
        args.out,
        seed=args.seed,
        input_length=args.input_length,
        duo_time=args.duo_time,
        **configlib.read_options(args, "probe"),
    )
    return 0


def register(sub) -> None:
    p = sub.add_parser("probe", help="position-wise information-decay probe of checkpoints (one forward pass)")
    p.add_argument("--checkpoint", action="append", required=True, metavar="LABEL=PATH")
    p.add_argument("--out", required=True, help="folder to write (probe.json, probe.png, probe.pdf, top3.md)")
    configlib.add_options(p, "probe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--input-length",
        choices=["block", "span"],
        default="block",
        help="block: prompt + corrupted positions up to the training length (default); span: prompt + span",
    )
    p.add_argument(
        "--duo-time",
        default="matched",
        help="DUO's time input: 'matched' (alpha_t = prompt share of the input; default) or a time in (0, 1]",
    )
    p.set_defaults(func=run)
