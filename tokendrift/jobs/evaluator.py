"""The embedded default's stand-in for GPT-2 Large: a small causal LM with the transformers
GPT-2 architecture, trained on the same source (docs/embedded_default.md).

It sees exactly what the scorer feeds it: each sequence decoded to text by the source and
retokenized by the source's tokenizer (no BOS added, as GPT-2's tokenizer adds none). The
output folder loads with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer`` and is
what ``tokendrift score --evaluator`` takes. Training resumes from ``OUT/resume``.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..core.records import job_files, write_record
from ..core.utils import atomic_dir, config_digest


def _inputs(source, split: str, index: int, batch_size: int) -> torch.Tensor:
    tok = source.hf_tokenizer()
    texts = source.decode(source.batch(split, index, batch_size))
    return tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=source.length)["input_ids"]


def _nll(model, x: torch.Tensor) -> torch.Tensor:
    logits = model(x, use_cache=False).logits.float()
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:])


def train_evaluator(
    source,
    out_dir,
    *,
    steps: int = 1500,
    batch_size: int = 32,
    lr: float = 1e-3,
    warmup_steps: int = 100,
    seed: int = 0,
    n_layer: int = 4,
    n_head: int = 4,
    n_embd: int = 128,
    dropout: float = 0.1,
    ckpt_every: int = 250,
    device: str = "cpu",
    progress: bool = False,
    stop_after: int | None = None,
) -> dict:
    """Train (or resume) the evaluator; returns final train and held-out NLL per token."""
    from transformers import GPT2Config, GPT2LMHeadModel

    out = Path(out_dir)
    resume = out / "resume"
    digest = config_digest(
        {
            "source": source.config,
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "warmup_steps": warmup_steps,
            "seed": seed,
            "n_layer": n_layer,
            "n_head": n_head,
            "n_embd": n_embd,
            "dropout": dropout,
        }
    )
    done = out / "metrics.json"
    if done.exists() and (out / "model").exists():
        metrics = json.loads(done.read_text())
        if metrics.get("config_digest") == digest:
            return metrics  # finished already: a rerun does nothing
    tok = source.hf_tokenizer()
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=max(source.length, 8),
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=dropout,  # GPT-2's three dropouts (0.1 each in transformers' GPT2Config)
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = GPT2LMHeadModel(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    step = 0
    state = torch.load(resume / "state.pt", weights_only=True) if (resume / "state.pt").exists() else None
    if state is not None and state.get("config_digest") != digest:
        print(f"{resume}: written by a run with another config; starting from step 0", file=sys.stderr)
        state = None
    if state is not None:
        model = GPT2LMHeadModel.from_pretrained(resume / "model").to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        step = int(state["step"])

    def lr_at(i):  # linear warm-up, cosine decay to 10%
        if i < warmup_steps:
            return lr * (i + 1) / warmup_steps
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (i - warmup_steps) / max(1, steps - warmup_steps))))

    model.train()
    loss = torch.tensor(float("nan"))
    for i in tqdm(
        range(step, steps), initial=step, total=steps, desc="evaluator", disable=not progress, mininterval=2.0
    ):
        for g in opt.param_groups:
            g["lr"] = lr_at(i)
        loss = _nll(model, _inputs(source, "train", i, batch_size).to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step = i + 1
        if step % ckpt_every == 0 and step < steps:
            with atomic_dir(resume) as tmp:
                model.save_pretrained(tmp / "model", safe_serialization=True)
                torch.save(
                    {
                        "optimizer": opt.state_dict(),
                        "rng": torch.get_rng_state(),
                        "step": step,
                        "config_digest": digest,
                    },
                    tmp / "state.pt",
                )
        if stop_after is not None and step >= stop_after:
            return {"step": step}
    model.eval()
    with torch.no_grad():
        valid = sum(float(_nll(model, _inputs(source, "valid", j, batch_size).to(device))) for j in range(4)) / 4
    metrics = {
        "step": step,
        "train_nll": float(loss.detach()),
        "valid_nll": valid,
        "uniform_nll": math.log(source.vocab_size),
        "config_digest": digest,
    }
    out.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out / "model") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    write_record(out / "metrics.json", metrics, job_files(out / "model"))
    shutil.rmtree(resume, ignore_errors=True)
    return metrics
