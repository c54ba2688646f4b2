"""What a training job carries from step to step and across a kill: the EMA of the generator's
weights, ``TrainState`` (everything a step changes: model, AdamW, EMA, noise generator, feature
queues, step) with its checkpoint folders, and the resume of a job from its latest intact
checkpoint (tokendrift.jobs.train runs the loop; this module saves and restores it).

Each checkpoint folder is a model folder (``tokendrift.core.checkpoint.load_model_dir``) plus
``train_state.pt`` (optimizer, EMA counter, RNG states, feature queues, data position),
read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from ..core.checkpoint import write_model_files
from ..core.records import RecordError, check
from ..core.utils import TokenDriftError, atomic_dir, atomic_write_text

if TYPE_CHECKING:
    from .train import Setup


def unwrap(model):
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


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


def trim_metrics(path: Path, upto: int) -> None:
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
        model = unwrap(self.model)
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
        unwrap(self.model).load_state_dict(load_file(path / "model.safetensors", device=str(device)))
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
    ema = EMA(unwrap(model), opt["ema"])
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


def same_run(record: dict, s: Setup) -> bool:
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
        if not same_run(json.loads((ckpt / "meta.json").read_text()), s):
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
