"""The sampling job: the unchanged MDLM/DUO ancestral sampler of a checkpoint at a fixed NFE.

Writes a sample folder atomically: ``ids.safetensors`` (tensor ``ids``, int64 [N, L]),
``text.jsonl`` (the samples decoded with the backbone tokenizer, one ``{"text": ...}`` a
line) and ``meta.json`` (checkpoint and its digest, NFE and the NFE rule, forward passes,
temperature, precision, seed, source).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..core import config as configlib
from ..core.checkpoint import OpenCheckpoint, open_checkpoint
from ..core.diffusion import make_diffusion
from ..core.hub import provenance
from ..core.records import record_text
from ..core.utils import TokenDriftError, atomic_dir, file_digest, resolve_device, temp_str

OPTIONS = configlib.defaults("sample")  # tokendrift/schemas/sample.schema.yaml


def checkpoint_digest(path: str | Path) -> str:
    """Digest of a model folder's sampled weights (ema.safetensors, else model.safetensors)."""
    path = Path(path)
    f = path / "ema.safetensors"
    return file_digest(f if f.exists() else path / "model.safetensors")[:16]


def sample_checkpoint(
    checkpoint: str,
    out: str,
    *,
    nfe: int | list[int],
    n_samples: int = OPTIONS["n_samples"],
    seed: int = 0,
    temperature: float | list[float] = 1.0,
    precision: str = OPTIONS["precision"],
    batch_size: int = OPTIONS["batch_size"],
    device: str = OPTIONS["device"],
    duo_pad_mass: str = OPTIONS["duo_pad_mass"],
    weights: str = "ema",
    progress: bool = False,
) -> list[dict]:
    """Sample a checkpoint at each NFE and temperature given, loading it once.

    ``out`` is a template holding ``{nfe}`` and ``{temperature}`` (formatted like ``1.0``,
    ``0.75``); with one NFE and one temperature it may also be the sample folder itself.
    Each folder is seeded by ``seed`` alone, so a cell's samples do not depend on the others.
    """
    nfes = [nfe] if isinstance(nfe, int) else list(nfe)
    temps = [temperature] if isinstance(temperature, (int, float)) else list(temperature)
    for n in nfes:
        if n < 1:
            raise TokenDriftError(f"nfe: must be >= 1, got {n}")
    for t in temps:
        if not t > 0:
            raise TokenDriftError(f"temperature: must be > 0, got {t}")
    if n_samples < 1:
        raise TokenDriftError(f"n_samples: must be >= 1, got {n_samples}")
    if len(nfes) * len(temps) > 1 and not ("{nfe}" in out and "{temperature}" in out):
        raise TokenDriftError(
            f"--out {out!r}: several NFEs/temperatures need a template with {{nfe}} and {{temperature}}"
        )
    device = resolve_device(device)
    ck = open_checkpoint(checkpoint, weights=weights, device=device)
    if ck.meta["diffusion"] == "duo":
        ck = ck._replace(diffusion=make_diffusion("duo", ck.model.config.vocab_size, duo_pad_mass))
    digest = checkpoint_digest(checkpoint)
    results = []
    for t in temps:
        for n in nfes:
            templated = "{nfe}" in out or "{temperature}" in out
            folder = out.format(nfe=n, temperature=temp_str(t)) if templated else out
            results.append(
                _sample_one(
                    ck,
                    folder,
                    checkpoint=checkpoint,
                    digest=digest,
                    nfe=n,
                    n_samples=n_samples,
                    seed=seed,
                    temperature=t,
                    precision=precision,
                    batch_size=batch_size,
                    device=device,
                    weights=weights,
                    progress=progress,
                )
            )
    return results


def _sample_one(
    ck: OpenCheckpoint,
    out,
    *,
    checkpoint,
    digest,
    nfe,
    n_samples,
    seed,
    temperature,
    precision,
    batch_size,
    device,
    weights,
    progress,
) -> dict:
    model, meta, diffusion, source = ck
    length = source.length
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if torch.device(device).type == "cuda" else None
    info: dict = {}
    with torch.no_grad(), autocast or torch.autocast("cpu", enabled=False):
        ids = diffusion.sample(
            model,
            n_samples,
            length,
            nfe,
            temperature=temperature,
            precision=precision,
            generator=gen,
            batch_size=batch_size,
            progress=progress,
            info=info,
        )
    ids = ids.cpu().long()
    if int(ids.max()) >= diffusion.n_drawn or int(ids.min()) < 0:
        raise TokenDriftError(
            f"{checkpoint}: the sampler produced ids outside the data vocabulary "
            f"[0, {source.vocab_size}) (special id {diffusion.special_id} leaked)"
        )
    pad_mass = getattr(diffusion, "pad_mass", None)
    if pad_mass == "model" and bool((ids == diffusion.special_id).any()):
        from .score import decode_samples

        texts = decode_samples(ids, source.hf_tokenizer(), pad_id=diffusion.special_id)
    else:
        texts = source.decode(ids)
    sample_meta = {
        "checkpoint": str(checkpoint),
        "checkpoint_digest": digest,
        "provenance": provenance(),
        "weights": weights,
        "diffusion": meta["diffusion"],
        "vocab_size": model.config.vocab_size,
        "source": meta["source"],
        "nfe": nfe,
        "nfe_rule": diffusion.nfe_rule,
        "forward_passes": info.get("forward_passes"),
        "temperature": temperature,
        "precision": precision,
        **({"duo_pad_mass": pad_mass} if pad_mass else {}),
        "seed": seed,
        "n_samples": n_samples,
        "length": length,
        "step": meta.get("step"),
        "variant": meta.get("variant"),
    }
    with atomic_dir(out) as tmp:
        save_file({"ids": ids.contiguous()}, str(tmp / "ids.safetensors"))
        (tmp / "text.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        files = [tmp / "ids.safetensors", tmp / "text.jsonl"]
        (tmp / "meta.json").write_text(record_text(sample_meta, tmp, files))  # written last, with their digests
    return sample_meta


def run(args) -> int:
    sample_checkpoint(
        args.checkpoint,
        args.out,
        nfe=args.nfe,
        seed=args.seed,
        temperature=args.temperature,
        weights=args.weights,
        progress=True,
        **configlib.read_options(args, "sample"),
    )
    return 0


def register(sub) -> None:
    p = sub.add_parser("sample", help="sample a checkpoint with its own ancestral sampler at a given NFE")
    p.add_argument("checkpoint", help="model folder (train/pretrain output or an imported released checkpoint)")
    p.add_argument(
        "--out",
        required=True,
        help="sample folder to write; with several NFEs/temperatures a template with {nfe} and {temperature}",
    )
    p.add_argument("--nfe", type=int, nargs="+", required=True, help="network function evaluations (denoising steps)")
    configlib.add_options(p, "sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--temperature", type=float, nargs="+", default=[1.0], help="sampling temperature(s) of p_x0 (default 1.0)"
    )
    p.add_argument("--weights", choices=["ema", "raw"], default="ema")
    p.set_defaults(func=run)
