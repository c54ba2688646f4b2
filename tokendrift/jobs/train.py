"""The training job: continual training of an MDLM or DUO DiT, with TokenDrift or continuation.

Read ``micro_step`` for the training step (Algorithm 1 of the paper, one micro-batch) and
``train`` for the loop around it: gradient accumulation to the global batch, AdamW with
warm-up, clipping, EMA, rolling and permanent checkpoints, exact resume, and data parallel
training with torch.distributed (the features are all-gathered before the drift). What a step
changes is one ``TrainState``, which a checkpoint saves and a resume loads as a whole.

Output folder layout (``--out DIR``)::

    DIR/config.json                 the resolved job config (and its digest)
    DIR/metrics.jsonl               one line per logged step
    DIR/checkpoints/step_000500/    permanent checkpoints (config.checkpoint_steps + the last step)
    DIR/checkpoints/last/           rolling resume checkpoint (every config.save_every steps)

Each checkpoint folder is a model folder (``tokendrift.core.checkpoint.load_model_dir``) plus
``train_state.pt`` (optimizer, EMA counter, RNG states, feature queues, data position),
read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..core import config as configlib
from ..core.checkpoint import load_model_dir, write_model_files
from ..core.data import make_source
from ..core.diffusion import make_diffusion
from ..core.hub import provenance
from ..core.model import DiT, DiTConfig
from ..core.objective import (
    DriftOptions,
    FeatureQueue,
    apply_preset,
    drift_field,
    fixed_point_loss,
    hard_lift,
    mirror_kl_loss,
    mirror_l2_loss,
    mirror_teacher,
    pooled_features,
    soft_lift,
)
from ..core.records import RecordError, check, job_files, write_record
from ..core.utils import (
    TokenDriftError,
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    code_digest,
    config_digest,
    read_json,
)

# --------------------------------------------------------------------------- configuration


def resolve_config(raw: dict) -> dict:
    """Validate a train config (schema ``train``) and check what the schema cannot express
    (the drift options: ``DriftOptions``, in ``build``)."""
    cfg = configlib.validate("train", raw)
    cfg["objective"] = apply_preset(cfg["objective"], (raw or {}).get("objective"))
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
    drift: DriftOptions | None = None  # the drift field's options (TokenDrift only)
    queues: dict = field(default_factory=dict)  # the FIFO feature queues, "real" and "gen" (TokenDrift only)
    ema_init: tuple | None = None  # (EMA weights, update count) of init, for optim.ema_start = continue


def resolve_device(want: str, environ=None, cuda_count: int | None = None) -> torch.device:
    """This rank's training device for the config's ``device`` (auto, cuda, cpu).

    The GPU of a data-parallel rank: a rank that sees one GPU uses it, ``cuda:0`` (the submitit
    plugin narrows CUDA_VISIBLE_DEVICES to one GPU per task, as Slurm's per-task GPU binding
    does); a rank that sees several (torchrun leaves the mask whole) uses ``cuda:LOCAL_RANK``.
    ``environ`` and ``cuda_count`` (what torch.cuda.device_count() says) default to this process's.
    """
    environ = os.environ if environ is None else environ
    count = (torch.cuda.device_count() if torch.cuda.is_available() else 0) if cuda_count is None else cuda_count
    if want == "cuda" or (want == "auto" and count > 0):
        if count == 0:
            raise TokenDriftError("train config: device: cuda requested but no GPU is visible")
        local = int(environ.get("LOCAL_RANK", 0))
        if count == 1:
            return torch.device("cuda", 0)
        if local >= count:
            raise TokenDriftError(
                f"train config: device: local rank {local} but CUDA_VISIBLE_DEVICES="
                f"{environ.get('CUDA_VISIBLE_DEVICES', '(unset)')} shows {count} GPUs"
            )
        return torch.device("cuda", local)
    return torch.device("cpu")


def build(cfg: dict) -> Setup:
    """Load or create the generator, the frozen encoder phi, the process and the data source."""
    drift = DriftOptions.from_config(cfg["objective"]) if cfg["variant"] == "tokendrift" else None
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
        size = cfg["objective"]["queue_size"]
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
    cfg, obj, diffusion = s.cfg, s.cfg["objective"], s.diffusion
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
    if cfg["variant"] == "continuation" or obj["base_loss"]:
        base = diffusion.base_loss(log_p, x0, xt, t)
        stats["base_loss"] = base.detach()
        loss = loss + (obj["base_weight"] if cfg["variant"] == "tokendrift" else 1.0) * base
    if cfg["variant"] == "continuation":
        return loss

    # 3: encoder inputs: soft (or hard straight-through) lift on predicted positions M
    predicted = diffusion.predicted_positions(xt)
    lift = soft_lift if obj["lift"] == "soft" else hard_lift
    # 4: generated and real features (the lift's p E under the encoder's autocast: docs/choices.md)
    with autocast:
        e = lift(log_p.exp(), xt, predicted, s.encoder.embedding)
        h = encode(s.encoder, inputs_embeds=e)
    with torch.no_grad(), autocast:
        u = encode(s.encoder, x=x0)
    drift = drift_loss(s, h, u, log_p, predicted, stats)
    return loss + obj["drift_weight"] * drift


def drift_loss(
    s: Setup, h: torch.Tensor, u: torch.Tensor, log_p: torch.Tensor, predicted: torch.Tensor, stats: dict
) -> torch.Tensor:
    """Steps 5-11 of Algorithm 1 for this rank's anchors ``h`` (with graph) and real features ``u``."""
    obj = s.cfg["objective"]
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
    if obj["loss"] == "feature_l2":
        drift = fixed_point_loss(h, V, obj["alpha"])
    else:
        l_star = mirror_teacher(log_p, h, V, obj["eta"])  # log p: normalized logits l, h built from their exp
        drift = (mirror_kl_loss if obj["loss"] == "logit_kl" else mirror_l2_loss)(log_p, l_star, predicted)
    stats["drift_loss"] = drift.detach()
    stats.update(drift_stats)
    # 11: push the detached current features, evicting the oldest
    s.queues["real"].push(u_all)
    s.queues["gen"].push(h_all)
    return drift


# --------------------------------------------------------------------------- EMA, schedule, checkpoints


class EMA:
    """Exponential moving average of the generator's weights, with MDLM's warm-up of the decay
    (decay_n = min(decay, (1 + n) / (10 + n)) at update n, models/ema.py of kuleshov-group/mdlm)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.num_updates = decay, 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates)) if self.decay > 0 else 0.0
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)


def released_ema(init: str, init_meta: dict, device) -> tuple[dict, int]:
    """The EMA weights of ``init`` and their update count, for ``optim.ema_start: continue``.

    The count is ``ema_num_updates`` in init's meta.json: written by every training checkpoint
    and by ``tokendrift checkpoint import`` from a Lightning .ckpt's ``ema.num_updates``. A
    folder without it (an import of HF safetensors, which hold no EMA state) is refused: with
    count 0 "continue" would silently be "restart"."""
    from safetensors.torch import load_file

    count = init_meta.get("ema_num_updates")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise TokenDriftError(
            f"train config: optim.ema_start: continue needs the EMA update count of init, but {init}/meta.json has "
            f"no ema_num_updates (HF safetensors releases carry no EMA state: import the Lightning .ckpt, or use "
            f"ema_start: restart)"
        )
    f = Path(init) / "ema.safetensors"
    if not f.exists():
        raise TokenDriftError(f"train config: optim.ema_start: continue needs init's EMA weights; {f} is missing")
    return load_file(f, device=str(device)), count


def lr_at(step: int, cfg: dict) -> float:
    """Linear warm-up to the peak learning rate, then constant (the MDLM/DUO schedule)."""
    w = cfg["optim"]["warmup_steps"]
    return cfg["optim"]["lr"] * (min(1.0, (step + 1) / w) if w > 0 else 1.0)


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def latest_checkpoint(out: Path) -> Path | None:
    """The complete checkpoint folder with the highest step under ``out/checkpoints``."""
    best, best_step = None, -1
    for d in sorted((out / "checkpoints").glob("*")):
        f = d / "meta.json"
        if d.name.startswith(".") or not f.exists() or not (d / "train_state.pt").exists():
            continue
        step = json.loads(f.read_text())["step"]
        if step > best_step:
            best, best_step = d, step
    return best


def _trim_metrics(path: Path, upto: int) -> None:
    """Keep the metric lines of steps <= ``upto`` (a resumed run rewrites what came after)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= upto:
                keep.append(line)
        except (json.JSONDecodeError, KeyError):
            break  # a line cut by a kill: everything after it is redone
    atomic_write_text(path, "".join(x + "\n" for x in keep))


# --------------------------------------------------------------------------- the training state


@dataclass
class TrainState:
    """Everything a step changes, saved and restored together: the generator (DDP-wrapped when
    data parallel), AdamW, the EMA, the corruption-noise generator, the feature queues (the
    Setup's own: ``micro_step`` pushes into them) and the number of steps taken. A checkpoint
    also holds the global CPU (and CUDA) RNG state, which draws the dropout masks."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    ema: EMA
    noise: torch.Generator
    queues: dict
    step: int = 0

    @property
    def device(self) -> torch.device:
        return self.noise.device  # created on the training device

    def save(self, path: Path, meta: dict) -> None:
        """Write one checkpoint folder atomically: a model folder (``meta`` plus the step, the model
        config and the EMA count in its meta.json) and train_state.pt."""
        model = _unwrap(self.model)
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "ema_num_updates": self.ema.num_updates,
            "rng_cpu": torch.get_rng_state(),
            "rng_noise": self.noise.get_state(),
            "queues": {k: q.state_dict() for k, q in self.queues.items()},
        }
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        meta = dict(meta, step=self.step, model=model.config.to_dict(), ema_num_updates=self.ema.num_updates)
        with atomic_dir(path) as tmp:
            torch.save(state, tmp / "train_state.pt")
            write_model_files(tmp, model.state_dict(), self.ema.shadow, meta)  # its meta.json records both

    def load(self, path: Path, meta: dict) -> None:
        """Restore everything ``save`` wrote to ``path``; refuses a checkpoint of another config
        than the one ``meta`` (this job's) records."""
        from safetensors.torch import load_file

        saved = json.loads((path / "meta.json").read_text())
        if saved.get("config_digest") != meta["config_digest"]:
            raise TokenDriftError(
                f"{path}: written by a run with another config (digest {saved.get('config_digest')} "
                f"!= {meta['config_digest']}); use a new --out folder or delete the old one"
            )
        device = self.device
        _unwrap(self.model).load_state_dict(load_file(path / "model.safetensors", device=str(device)))
        self.ema.shadow = load_file(path / "ema.safetensors", device=str(device))
        state = read_train_state(path, device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema.num_updates = state["ema_num_updates"]
        torch.set_rng_state(state["rng_cpu"])
        self.noise.set_state(state["rng_noise"])
        if "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        for k, q in self.queues.items():
            q.load_state_dict(state["queues"][k])
        self.step = int(state["step"])


def read_train_state(path: Path, device: torch.device) -> dict:
    """``path/train_state.pt`` as a resume on ``device`` hands it on. Read onto the CPU
    (map_location="cpu"): ``Generator.set_state`` and ``torch.cuda.set_rng_state`` take CPU byte
    tensors, for CUDA generators too, and AdamW's ``step`` counts stay on the CPU, where a fresh
    AdamW keeps them (neither capturable nor fused: on the GPU a CUDA ``step`` would cost AdamW a
    host sync per parameter). ``Optimizer.load_state_dict`` moves the moment estimates to their
    parameters' device, the feature queues move their buffers to theirs. The CUDA RNG state is
    kept for a CUDA job only."""
    state = torch.load(path / "train_state.pt", weights_only=True, map_location="cpu")
    if torch.device(device).type != "cuda":
        state.pop("rng_cuda", None)
    return state


def make_state(s: Setup) -> TrainState:
    """The state at step 0: the generator in training mode (DDP-wrapped on several ranks), AdamW,
    the EMA (restarted, or init's for optim.ema_start: continue), the corruption-noise generator,
    and the global RNG seeded for dropout. Seeded alike on every rank."""
    cfg, opt = s.cfg, s.cfg["optim"]
    model = s.model
    if s.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[s.device.index] if s.device.type == "cuda" else None
        )
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=opt["lr"], betas=tuple(opt["betas"]), eps=opt["eps"], weight_decay=opt["weight_decay"]
    )
    ema = EMA(_unwrap(model), opt["ema"])
    if s.ema_init is not None:  # optim.ema_start: continue (a resume overrides both)
        shadow, ema.num_updates = s.ema_init
        if shadow.keys() != ema.shadow.keys():
            raise TokenDriftError(
                f"train config: optim.ema_start: continue: {cfg['init']}/ema.safetensors does not "
                f"hold the model's tensors"
            )
        ema.shadow = {k: v.to(ema.shadow[k].dtype) for k, v in shadow.items()}
    noise = torch.Generator(device=s.device)
    noise.manual_seed(cfg["seed"] * 1_000_003 + 17)
    torch.manual_seed(cfg["seed"] + 1)
    return TrainState(model=model, optimizer=optimizer, ema=ema, noise=noise, queues=s.queues)


def _same_run(record: dict, s: Setup) -> bool:
    """Whether a checkpoint's meta or a done.json was written under this job's config and code."""
    return (record.get("config_digest"), record.get("code_digest")) == (s.meta["config_digest"], s.meta["code_digest"])


def discard_damaged(out: Path) -> None:
    """Delete every checkpoint under ``out`` whose files do not match its meta.json's record (cut
    short or altered: tokendrift.core.records) and every later one, so that the run resumes from the last
    intact one before it and writes the later ones again."""

    def step(d: Path) -> int | None:
        if d.name.startswith("step_") and d.name[5:].isdigit():
            return int(d.name[5:])
        try:
            return int(json.loads((d / "meta.json").read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    folders = sorted(d for d in (out / "checkpoints").glob("*") if d.is_dir() and not d.name.startswith("."))
    damaged = []
    for d in folders:
        try:
            check(d / "meta.json", "the checkpoint's record")
        except RecordError as e:
            print(f"damaged checkpoint: {e}", flush=True)
            damaged.append(d)
    first = min((st for st in map(step, damaged) if st is not None), default=None)
    for d in folders:
        st = step(d)
        if d in damaged or (first is not None and (st is None or st >= first)):
            print(f"discarding checkpoint {d} (damaged, or later than a damaged one)", flush=True)
            shutil.rmtree(d)


def resume(out: Path, s: Setup, state: TrainState, discard_stale: bool) -> None:
    """Load the latest checkpoint under ``out`` into ``state``, if there is one. ``discard_stale``:
    first delete the checkpoints (and metrics, done.json) of another config or code version.
    Damaged checkpoints are discarded first (``discard_damaged``)."""
    if out.exists() and s.rank == 0:
        discard_damaged(out)
    ckpt = latest_checkpoint(out) if out.exists() else None
    if ckpt is not None and discard_stale and s.rank == 0:
        if not _same_run(json.loads((ckpt / "meta.json").read_text()), s):
            print(f"discarding stale checkpoints in {out} (config or code changed)", flush=True)
            for stale in ("checkpoints", "metrics.jsonl", "done.json"):
                p = out / stale
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
            ckpt = None
    if s.world > 1:
        dist.barrier()
        ckpt = latest_checkpoint(out) if out.exists() else None
    if ckpt is not None:
        state.load(ckpt, s.meta)


# --------------------------------------------------------------------------- the loop


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


def checkpoints_due(cfg: dict, step: int) -> list[str]:
    """The checkpoint folders written after ``step``: a permanent one at ``checkpoint_steps`` and
    the last step, the rolling one (``last``) every ``save_every`` steps."""
    due = []
    if step in cfg["checkpoint_steps"] or step == cfg["steps"]:
        due.append(f"step_{step:06d}")
    if cfg["save_every"] and step % cfg["save_every"] == 0 and step != cfg["steps"]:
        due.append("last")
    return due


def log_and_save(out: Path, s: Setup, state: TrainState, line: dict | None) -> None:
    """Rank 0 after a step: the metrics line (given every ``log_every`` steps and the last) and
    the checkpoints due (``checkpoints_due``)."""
    if s.rank != 0:
        return
    if line is not None:
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
    for name in checkpoints_due(s.cfg, state.step):
        state.save(out / "checkpoints" / name, s.meta)


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
    if done and _same_run(done, s):
        return done.get("last", {})  # finished under this config and code: a rerun writes nothing
    state = make_state(s)
    resume(out, s, state, discard_stale)
    if s.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "config.json", {"config": cfg, "config_digest": s.meta["config_digest"]})
        _trim_metrics(out / "metrics.jsonl", state.step)

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
        state.ema.update(_unwrap(state.model))
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


def load_job_config(args) -> dict:
    if args.config and args.config_json:
        raise TokenDriftError("give --config or --config-json, not both")
    try:
        raw = (
            json.loads(args.config_json)
            if args.config_json
            else configlib.load_file(args.config)
            if args.config
            else {}
        )
    except json.JSONDecodeError as e:
        raise TokenDriftError(f"--config-json is not valid JSON: {e}") from None
    return configlib.apply_overrides(raw, args.set)


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML/JSON job config (tokendrift/schemas/train.schema.yaml)")
    p.add_argument("--config-json", help="the job config as a JSON string (what the Snakemake rules pass)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted path, YAML value); repeatable",
    )
    p.add_argument("--out", required=True, help="output folder (resumed when it holds a checkpoint of the same config)")
    p.add_argument(
        "--discard-stale",
        action="store_true",
        help="when --out holds checkpoints of another config or code version, delete them and start "
        "over (the pipeline's rule for stale results) instead of refusing",
    )


def init_distributed(want: str = "auto") -> torch.device:
    """Join the process group when launched with several ranks (torchrun, or the submitit
    plugin's variables): this rank's device (``resolve_device``) is set first, then the backend
    follows from it, NCCL for a GPU and gloo for the CPU. Returns the device."""
    device = resolve_device(want)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


@contextlib.contextmanager
def process_group(raw: dict):
    """The job's process group (``init_distributed`` for the config's device) for the duration of
    the block, left at its end; nothing for a single-rank job."""
    init_distributed(configlib.validate("train", raw)["device"])
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


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
