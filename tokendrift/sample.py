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

from .checkpoint import load_model_dir
from .data import make_source
from .diffusion import make_diffusion
from .utils import TokenDriftError, atomic_dir, file_digest


def checkpoint_digest(path: str | Path) -> str:
    """Digest of a model folder's sampled weights (ema.safetensors, else model.safetensors)."""
    path = Path(path)
    f = path / "ema.safetensors"
    return file_digest(f if f.exists() else path / "model.safetensors")[:16]


def sample_checkpoint(checkpoint: str, out: str, *, nfe: int, n_samples: int, seed: int = 0,
                      temperature: float = 1.0, precision: str = "float64", batch_size: int = 64,
                      device: str = "cpu", weights: str = "ema", progress: bool = False) -> dict:
    if nfe < 1:
        raise TokenDriftError(f"nfe: must be >= 1, got {nfe}")
    if n_samples < 1:
        raise TokenDriftError(f"n_samples: must be >= 1, got {n_samples}")
    model, meta = load_model_dir(checkpoint, weights=weights, device=device)
    diffusion = make_diffusion(meta["diffusion"], model.config.vocab_size)
    source = make_source(meta["source"])
    length = source.length
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if torch.device(device).type == "cuda" else None
    info: dict = {}
    with torch.no_grad(), (autocast or torch.autocast("cpu", enabled=False)):
        ids = diffusion.sample(model, n_samples, length, nfe, temperature=temperature, precision=precision,
                               generator=gen, batch_size=batch_size, progress=progress, info=info)
    ids = ids.cpu().long()
    if int(ids.max()) >= source.vocab_size or int(ids.min()) < 0:
        raise TokenDriftError(f"{checkpoint}: the sampler produced ids outside the data vocabulary "
                              f"[0, {source.vocab_size}) (special id {diffusion.special_id} leaked)")
    texts = source.decode(ids)
    sample_meta = {
        "checkpoint": str(checkpoint),
        "checkpoint_digest": checkpoint_digest(checkpoint),
        "weights": weights,
        "diffusion": meta["diffusion"],
        "vocab_size": model.config.vocab_size,
        "source": meta["source"],
        "nfe": nfe,
        "nfe_rule": diffusion.nfe_rule,
        "forward_passes": info.get("forward_passes"),
        "temperature": temperature,
        "precision": precision,
        "seed": seed,
        "n_samples": n_samples,
        "length": length,
        "step": meta.get("step"),
        "variant": meta.get("variant"),
    }
    with atomic_dir(out) as tmp:
        save_file({"ids": ids.contiguous()}, str(tmp / "ids.safetensors"))
        (tmp / "text.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        (tmp / "meta.json").write_text(json.dumps(sample_meta, indent=2, sort_keys=True) + "\n")
    return sample_meta


def run(args) -> int:
    sample_checkpoint(args.checkpoint, args.out, nfe=args.nfe, n_samples=args.n_samples, seed=args.seed,
                      temperature=args.temperature, precision=args.precision, batch_size=args.batch_size,
                      device=args.device, weights=args.weights, progress=True)
    return 0


def register(sub) -> None:
    p = sub.add_parser("sample", help="sample a checkpoint with its own ancestral sampler at a given NFE")
    p.add_argument("checkpoint", help="model folder (train/pretrain output or an imported released checkpoint)")
    p.add_argument("--out", required=True, help="sample folder to write")
    p.add_argument("--nfe", type=int, required=True, help="network function evaluations (denoising steps)")
    p.add_argument("--n-samples", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of p_x0 (default 1.0)")
    p.add_argument("--precision", choices=["float64", "float32"], default="float64",
                   help="precision of the categorical draws (float32 lowers entropy; DESIGN.md section 3)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--weights", choices=["ema", "raw"], default="ema")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.set_defaults(func=run)
