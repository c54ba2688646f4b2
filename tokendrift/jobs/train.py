"""The training job: continual training of an MDLM or DUO DiT, with TokenDrift or continuation.

Read ``micro_step`` for the training step (Algorithm 1 of the paper, one micro-batch) and
``train`` for the loop around it: gradient accumulation to the global batch, AdamW with
warm-up, clipping, EMA, rolling and permanent checkpoints, exact resume, and data parallel
training with torch.distributed (the features are all-gathered before the drift). What a step
changes is one ``TrainState``, which a checkpoint saves and a resume loads as a whole
(tokendrift.jobs.train_state); the rank's device and process group are tokendrift.core.distributed's.

Output folder layout (``--out DIR``)::

    DIR/config.json                 the resolved job config (and its digest)
    DIR/metrics.jsonl               one line per logged step
    DIR/checkpoints/step_000500/    permanent checkpoints (config.checkpoint_steps + the last step)
    DIR/checkpoints/last/           rolling resume checkpoint (every config.save_every steps)

Each checkpoint folder is a model folder plus ``train_state.pt`` (tokendrift.jobs.train_state).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..core import config as configlib
from ..core.checkpoint import load_model_dir
from ..core.data import make_source
from ..core.diffusion import make_diffusion
from ..core.distributed import process_group, resolve_device
from ..core.hub import provenance
from ..core.model import DiT, DiTConfig
from ..core.objective import (
    DriftOptions,
    FeatureQueue,
    drift_field,
    fixed_point_loss,
    hard_lift,
    mirror_kl_loss,
    mirror_l2_loss,
    mirror_teacher,
    pooled_features,
    soft_lift,
)
from ..core.records import job_files, write_record
from ..core.utils import (
    TokenDriftError,
    atomic_write_json,
    code_digest,
    config_digest,
    read_json,
)
from .train_state import (
    TrainState,
    checkpoints_due,
    latest_checkpoint,
    log_and_save,
    make_state,
    released_ema,
    resume,
    same_run,
    trim_metrics,
    unwrap,
)

# --------------------------------------------------------------------------- configuration


def resolve_config(raw: dict) -> dict:
    """Validate a train config (schema ``train``) and check what the schema cannot express; its
    ``objective`` section is recorded as ``DriftOptions`` resolve it (the preset's options filled
    in, so the recorded config says what ran)."""
    cfg = configlib.validate("train", raw)
    cfg["objective"] = DriftOptions.of((raw or {}).get("objective")).section()
    if cfg["variant"] == "tokendrift":
        if cfg["init"] is None and cfg["encoder"] is None:
            raise TokenDriftError(
                "train config: init: TokenDrift refines a starting checkpoint; give `init` (or an `encoder`)"
            )
    if cfg["init"] is None:
        for key in ("diffusion", "model", "source"):
            if cfg[key] is None:
                raise TokenDriftError(f"train config: {key}: required when init is null (training from scratch)")
    if cfg["optim"]["ema_start"] == "continue" and cfg["init"] is None:
        raise TokenDriftError(
            "train config: optim.ema_start: continue needs an `init` whose EMA it continues "
            "(use restart when training from scratch)"
        )
    bad = [s for s in cfg["checkpoint_steps"] if s > cfg["steps"]]
    if bad:
        raise TokenDriftError(f"train config: checkpoint_steps: {bad} beyond steps={cfg['steps']}")
    return cfg


@dataclass
class Setup:
    """Everything a training job needs, resolved from its config before anything is written."""

    cfg: dict
    model: DiT
    encoder: DiT | None
    diffusion: object
    source: object
    meta: dict  # what goes into each checkpoint's meta.json
    device: torch.device
    rank: int = 0
    world: int = 1
    accum: int = 1
    amp_dtype: torch.dtype | None = None
    drift: DriftOptions = field(default_factory=DriftOptions)  # the objective section
    queues: dict = field(default_factory=dict)  # the FIFO feature queues, "real" and "gen" (TokenDrift only)
    ema_init: tuple | None = None  # (EMA weights, update count) of init, for optim.ema_start = continue


def build(cfg: dict) -> Setup:
    """Load or create the generator, the frozen encoder phi, the process and the data source."""
    drift = DriftOptions(**cfg["objective"])
    device = resolve_device(cfg["device"])
    if cfg["init"] is not None:
        model, init_meta = load_model_dir(cfg["init"], weights=cfg["init_weights"])
        diffusion_name = init_meta["diffusion"]
        if cfg["diffusion"] not in (None, diffusion_name):
            raise TokenDriftError(
                f"train config: diffusion: {cfg['diffusion']} but init {cfg['init']} is {diffusion_name}"
            )
        source_cfg = cfg["source"] or init_meta.get("source")
        if source_cfg is None:
            raise TokenDriftError(f"train config: source: not given and {cfg['init']}/meta.json names none")
    else:
        torch.manual_seed(cfg["seed"])
        diffusion_name, source_cfg = cfg["diffusion"], cfg["source"]
        init_meta = {}
    source = make_source(source_cfg)
    if cfg["init"] is None:
        mcfg = dict(cfg["model"])
        preset = mcfg.pop("preset", "tiny")
        mcfg.setdefault("vocab_size", source.vocab_size + 1)
        mcfg.setdefault("length", source.length)
        mcfg.setdefault("time_conditioning", diffusion_name == "duo")
        model = DiT(DiTConfig.preset(preset, **mcfg))
    vocab = model.config.vocab_size
    if vocab != source.vocab_size + 1:
        raise TokenDriftError(
            f"source: {source.name} has {source.vocab_size} token ids but the model's vocabulary "
            f"is {vocab} (expected data ids + 1 special id)"
        )
    if source.length > model.config.length:
        raise TokenDriftError(f"source: length {source.length} exceeds the model's length {model.config.length}")

    encoder = None
    if cfg["variant"] == "tokendrift":
        enc_path = cfg["encoder"] or cfg["init"]
        encoder, _ = load_model_dir(enc_path, weights=cfg["init_weights"])
        if encoder.config.vocab_size != vocab:
            raise TokenDriftError(
                f"encoder: {enc_path} has vocabulary {encoder.config.vocab_size}, the generator has {vocab}"
            )
        encoder.requires_grad_(False).eval().to(device)

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    per_step = cfg["micro_batch"] * world
    if cfg["global_batch"] % per_step:
        raise TokenDriftError(
            f"train config: global_batch: {cfg['global_batch']} is not a multiple of micro_batch x ranks = {per_step}"
        )
    amp = None
    if device.type == "cuda" and cfg["precision"] in ("auto", "bf16"):
        amp = torch.bfloat16
    elif cfg["precision"] == "bf16":
        amp = torch.bfloat16
    meta = {
        "diffusion": diffusion_name,
        "source": source.config,
        "init": cfg["init"],
        "origin": init_meta.get("origin"),
        "variant": cfg["variant"],
        "config_digest": config_digest(cfg),
        "code_digest": code_digest(reporting=False),
        "provenance": provenance(),
    }
    model.shard_dropout(rank, world)
    s = Setup(
        cfg=cfg,
        model=model.to(device),
        encoder=encoder,
        diffusion=make_diffusion(diffusion_name, vocab),
        source=source,
        meta=meta,
        device=device,
        rank=rank,
        world=world,
        accum=cfg["global_batch"] // per_step,
        amp_dtype=amp,
        drift=drift,
    )
    if cfg["optim"]["ema_start"] == "continue":
        s.ema_init = released_ema(cfg["init"], init_meta, device)
    if cfg["compile"]:  # in place: state_dict keys (checkpoints, EMA) stay those of the DiT
        s.model.compile()
        if encoder is not None:
            encoder.hidden_states = torch.compile(encoder.hidden_states)
    if cfg["variant"] == "tokendrift":
        m = 2 * encoder.config.hidden_size
        size = drift.queue_size
        s.queues = {"real": FeatureQueue(size, m, device=device), "gen": FeatureQueue(size, m, device=device)}
    return s


# --------------------------------------------------------------------------- the training step


def gather(x: torch.Tensor) -> torch.Tensor:
    """gather(.) of Algorithm 1: concatenate a detached tensor over data-parallel ranks (rank order)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


def encode(encoder: DiT, *, x=None, inputs_embeds=None) -> torch.Tensor:
    """phi(.): pooled, L2-normalized [mean H^(L-1), mean H^(L)] of the frozen encoder (sigma = 0)."""
    return pooled_features(*encoder.hidden_states(x, inputs_embeds=inputs_embeds)).float()


def micro_step(s: Setup, model, x0_all: torch.Tensor, noise: torch.Generator, stats: dict) -> torch.Tensor:
    """One micro-batch of Algorithm 1; returns the loss to backpropagate and fills ``stats`` with
    detached tensors (read on the host only when a metrics line is written: no sync here).

    ``x0_all`` is the micro-batch of every rank; this rank trains on its own rows. Every rank
    draws the corruption of all rows (and the model its dropout masks, DiT.shard_dropout), so
    data parallel training is one process on the concatenated batch, up to float rounding.
    """
    cfg, obj, diffusion = s.cfg, s.drift, s.diffusion
    autocast = torch.autocast(s.device.type, dtype=s.amp_dtype) if s.amp_dtype else contextlib.nullcontext()
    # 1: corrupt x0 with the backbone's own forward process
    t = diffusion.sample_t(x0_all.shape[0], generator=noise, device=s.device)
    xt = diffusion.corrupt(x0_all, t, generator=noise)
    x0 = x0_all
    if s.world > 1:
        mine = slice(s.rank * cfg["micro_batch"], (s.rank + 1) * cfg["micro_batch"])
        x0, t, xt = x0_all[mine], t[mine], xt[mine]
    # 2: logits and distributions of the generator
    with autocast:
        logits = model(xt, diffusion.sigma(t))
    log_p = diffusion.log_probs(logits.float(), xt)
    loss = torch.zeros((), device=s.device)
    if cfg["variant"] == "continuation" or obj.base_loss:
        base = diffusion.base_loss(log_p, x0, xt, t)
        stats["base_loss"] = base.detach()
        loss = loss + (obj.base_weight if cfg["variant"] == "tokendrift" else 1.0) * base
    if cfg["variant"] == "continuation":
        return loss

    # 3: encoder inputs: soft (or hard straight-through) lift on predicted positions M
    predicted = diffusion.predicted_positions(xt)
    lift = soft_lift if obj.lift == "soft" else hard_lift
    # 4: generated and real features (the lift's p E under the encoder's autocast: docs/choices.md)
    with autocast:
        e = lift(log_p.exp(), xt, predicted, s.encoder.embedding)
        h = encode(s.encoder, inputs_embeds=e)
    with torch.no_grad(), autocast:
        u = encode(s.encoder, x=x0)
    drift = drift_loss(s, h, u, log_p, predicted, stats)
    return loss + obj.drift_weight * drift


def drift_loss(
    s: Setup, h: torch.Tensor, u: torch.Tensor, log_p: torch.Tensor, predicted: torch.Tensor, stats: dict
) -> torch.Tensor:
    """Steps 5-11 of Algorithm 1 for this rank's anchors ``h`` (with graph) and real features ``u``."""
    obj = s.drift
    # 5-6: current features of all ranks, plus the FIFO queues
    h_all, u_all = gather(h), gather(u)
    pos = torch.cat([u_all, s.queues["real"].tensor()])
    neg = torch.cat([h_all, s.queues["gen"].tensor()])
    # 7: the drift for every gathered anchor (identical on all ranks), then this rank's rows
    drift_stats: dict = {}
    V_all = drift_field(h_all, pos, neg, s.drift, exclude_self=True, stats=drift_stats)
    B = h.shape[0]
    V = V_all[s.rank * B : (s.rank + 1) * B]
    # 8-9: the fixed-point loss (or a mirror-teacher loss)
    if obj.loss == "feature_l2":
        drift = fixed_point_loss(h, V, obj.alpha)
    else:
        l_star = mirror_teacher(log_p, h, V, obj.eta)  # log p: normalized logits l, h built from their exp
        drift = (mirror_kl_loss if obj.loss == "logit_kl" else mirror_l2_loss)(log_p, l_star, predicted)
    stats["drift_loss"] = drift.detach()
    stats.update(drift_stats)
    # 11: push the detached current features, evicting the oldest
    s.queues["real"].push(u_all)
    s.queues["gen"].push(h_all)
    return drift


# --------------------------------------------------------------------------- the loop


def lr_at(step: int, cfg: dict) -> float:
    """Linear warm-up to the peak learning rate, then constant (the MDLM/DUO schedule)."""
    w = cfg["optim"]["warmup_steps"]
    return cfg["optim"]["lr"] * (min(1.0, (step + 1) / w) if w > 0 else 1.0)


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU batch on the training device; to a GPU from pinned memory, asynchronously (a copy
    from pageable memory waits for the GPU: a host sync per micro-batch)."""
    if device.type != "cuda":
        return batch.to(device)
    return batch.pin_memory().to(device, non_blocking=True)


def accumulate(s: Setup, state: TrainState) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Forward and backward of one global batch, ``s.accum`` micro-batches (DDP synchronizes the
    gradients on the last). Returns, as tensors on the device, without a host sync: the mean loss
    and the mean of each logged term (float64, summed in micro-batch order) and each micro-batch's
    loss (``stop_if_non_finite`` reads them, after the backward of every micro-batch, so that all
    ranks run the same collectives before any of them stops)."""
    cfg = s.cfg
    total, terms, losses = 0.0, {}, []
    for a in range(s.accum):
        k = state.step * s.accum + a  # global micro-batch index: the data position
        x0_all = to_device(s.source.batch("train", k, cfg["micro_batch"] * s.world, seed=cfg["seed"]), s.device)
        stats: dict[str, torch.Tensor] = {}
        sync = state.model.no_sync() if (s.world > 1 and a < s.accum - 1) else contextlib.nullcontext()
        with sync:
            loss = micro_step(s, state.model, x0_all, state.noise, stats)
            (loss / s.accum).backward()
        losses.append(loss.detach())
        total = total + loss.detach().double() / s.accum
        for key, v in stats.items():
            terms[key] = terms.get(key, 0.0) + v.double() / s.accum
    return total, terms, torch.stack(losses)


def stop_if_non_finite(s: Setup, state: TrainState, losses: torch.Tensor, terms: dict, out: Path) -> None:
    """Stop on a non-finite loss of any micro-batch on any rank, on every rank together: the ranks
    all-reduce one flag per (rank, micro-batch) before any of them raises, so none is left waiting
    in a collective. Runs before the optimizer step (the weights stay finite); its read of the
    flags is the one host sync of a training step."""
    bad = torch.zeros(s.world, losses.shape[0], dtype=torch.int32, device=losses.device)
    bad[s.rank] = (~torch.isfinite(losses)).to(torch.int32)
    if s.world > 1:
        dist.all_reduce(bad)
    flags = bad.view(-1).tolist()  # the step's host sync
    first = next((i for i, f in enumerate(flags) if f), None)
    if first is None:
        return
    rank, a = divmod(first, losses.shape[0])
    mine = f"loss {float(losses[a])}, terms {_floats(terms)}" if rank == s.rank else f"reported by rank {rank}"
    last_ckpt = latest_checkpoint(out) if out.exists() else None
    raise TokenDriftError(
        f"non-finite loss at step {state.step + 1}, micro-batch {a} of rank {rank} ({mine}): stopping "
        f"on all {s.world} rank(s). The last good checkpoint is {last_ckpt or 'none (nothing was saved yet)'}"
    )


def _floats(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Scalar tensors of one device as Python floats, in one host sync."""
    if not values:
        return {}
    return dict(zip(values, torch.stack([v.double() for v in values.values()]).tolist(), strict=True))


def train(
    raw_cfg: dict,
    out: str | os.PathLike,
    *,
    stop_after: int | None = None,
    progress: bool | None = None,
    discard_stale: bool = False,
) -> dict:
    """Run (or resume) a training job; returns the last metrics line.

    ``stop_after`` ends the job right after that step without a final save: it simulates a
    kill for the resume tests. ``discard_stale`` deletes checkpoints written under another
    config or code digest instead of refusing them. A finished run writes ``done.json`` last.
    """
    cfg = resolve_config(raw_cfg)
    s = build(cfg)  # everything that can fail on bad input fails here, before anything is written
    out = Path(out)
    done = read_json(out / "done.json", "done file") if (out / "done.json").exists() else None
    if done and same_run(done, s):
        return done.get("last", {})  # finished under this config and code: a rerun writes nothing
    state = make_state(s)
    resume(out, s, state, discard_stale)
    if s.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "config.json", {"config": cfg, "config_digest": s.meta["config_digest"]})
        trim_metrics(out / "metrics.jsonl", state.step)

    clip = cfg["optim"]["grad_clip"] if cfg["optim"]["grad_clip"] > 0 else math.inf
    last: dict = {}
    bar = tqdm(
        total=cfg["steps"],
        initial=state.step,
        desc=f"train {cfg['variant']}",
        disable=(s.rank != 0) or progress is False,
        mininterval=2.0,
        dynamic_ncols=True,
    )
    busy: list[float] = []  # seconds of each step since the last metrics line
    while state.step < cfg["steps"]:
        t0 = time.perf_counter()
        lr = lr_at(state.step, cfg)
        for g in state.optimizer.param_groups:
            g["lr"] = lr
        loss, terms, losses = accumulate(s, state)
        stop_if_non_finite(s, state, losses, terms, out)
        grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), clip)
        state.optimizer.step()
        state.optimizer.zero_grad(set_to_none=True)
        state.ema.update(unwrap(state.model))
        state.step += 1
        busy.append(time.perf_counter() - t0)
        line = None
        if state.step % cfg["log_every"] == 0 or state.step == cfg["steps"]:  # the tensors read here
            dt = sum(busy) / len(busy)
            values = _floats({"loss": loss, **terms, "grad_norm": grad_norm})
            line = last = {
                "step": state.step,
                **values,
                "lr": lr,
                "step_time_s": dt,
                "tokens_per_s": cfg["global_batch"] * s.source.length / dt,
            }
            busy = []
            bar.set_postfix(loss=f"{values['loss']:.4f}", refresh=False)
        log_and_save(out, s, state, line)
        if s.world > 1 and checkpoints_due(cfg, state.step):
            dist.barrier()  # the checkpoint is on disk before any rank goes on
        bar.update(1)
        if stop_after is not None and state.step >= stop_after:
            break
    bar.close()
    if state.step >= cfg["steps"] and s.rank == 0:
        write_record(  # last, with the size and SHA-256 of every file of the run (tokendrift.core.records)
            out / "done.json",
            {
                "step": state.step,
                "last": last,
                "config_digest": s.meta["config_digest"],
                "code_digest": s.meta["code_digest"],
                "provenance": s.meta["provenance"],
                "checkpoint": str(out / "checkpoints" / f"step_{state.step:06d}"),
            },
            job_files(out),
        )
    return last


# --------------------------------------------------------------------------- command line


def load_job_config(args, name: str = "train") -> dict:
    """The job config as given: the ``--config`` file, if any, with the option flags on top (the
    job validates it: ``resolve_config``)."""
    raw = configlib.load_file(args.config) if args.config else {}
    return configlib.deep_merge(raw, configlib.given_options(args, name))


def add_config_args(p: argparse.ArgumentParser, name: str = "train") -> None:
    """A training job's options, as every job takes them: one flag per option of its schema
    (``--steps 40 --objective.loss logit_l2 --optim.lr 1e-4``; tokendrift/schemas/NAME.schema.yaml),
    optionally on top of a YAML/JSON job config file."""
    p.add_argument(
        "--config", help=f"YAML/JSON job config (tokendrift/schemas/{name}.schema.yaml); the flags override its keys"
    )
    configlib.add_options(p, name)
    p.add_argument("--out", required=True, help="output folder (resumed when it holds a checkpoint of the same config)")
    p.add_argument(
        "--discard-stale",
        action="store_true",
        help="when --out holds checkpoints of another config or code version, delete them and start "
        "over (the pipeline's rule for stale results) instead of refusing",
    )


def run(args) -> int:
    raw = load_job_config(args)
    with process_group(raw):
        train(raw, args.out, discard_stale=args.discard_stale)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="continual training (TokenDrift or continuation) from a checkpoint",
        description=__doc__.splitlines()[0],
    )
    add_config_args(p)
    p.set_defaults(func=run)
