"""Checkpoint IO: released MDLM/DUO checkpoints in, our model folders in and out.

Released checkpoints (docs/method.md): Lightning ``.ckpt`` (weights in ``state_dict``
with ``backbone.`` prefixes; EMA weights in ``ema.shadow_params``, a list in
``backbone.parameters()`` order) and HF ``.safetensors`` with ``backbone.*`` keys. No pickled
code is ever run: ``.ckpt`` files are read with ``torch.load(weights_only=True)``, and where
they hold other objects (OmegaConf configs, Lightning loop state) with an unpickler that
resolves only torch's tensor-rebuild functions and replaces every other class by an inert
placeholder without importing it.

Our model folder: ``model.safetensors`` (raw weights), ``ema.safetensors`` (EMA weights; what
sampling and scoring use), ``meta.json`` (``model``: the DiTConfig, ``diffusion``, ``source``,
and what the writer adds).
"""

from __future__ import annotations

import json
import pickle
import types
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .data import make_source
from .diffusion import make_diffusion
from .hub import provenance, resolve_hf
from .model import DiT, DiTConfig
from .records import DIGEST, RecordError, check, job_files, record_text
from .utils import TokenDriftError, atomic_dir, file_digest, read_json


class CheckpointError(TokenDriftError):
    """A checkpoint that is missing, truncated, corrupt or does not fit the model."""


# --------------------------------------------------------------------------- safe unpickling


class _Inert:
    """Stands in for any class a checkpoint names; absorbs state, runs nothing."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):  # dict-like reduce paths
        self.__dict__.setdefault("items", {})[key] = value

    def append(self, value):
        self.__dict__.setdefault("list", []).append(value)

    def extend(self, values):
        self.__dict__.setdefault("list", []).extend(values)


_ALLOWED = {
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch.nn.parameter", "Parameter"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return getattr(__import__(module, fromlist=[name]), name)
        if module == "torch" and (name.endswith("Storage") or name in {"float32", "bfloat16", "float16", "int64"}):
            return getattr(torch, name)
        if module == "torch._utils" and name.startswith("_rebuild"):
            return getattr(torch._utils, name)
        return type(name, (_Inert,), {"__module__": "tokendrift.inert." + module})


_safe_pickle = types.SimpleNamespace(
    Unpickler=_SafeUnpickler, load=lambda f, **kw: _SafeUnpickler(f, **kw).load(), __name__="tokendrift_safe_pickle"
)


def _torch_load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # holds non-tensor objects: read again with the inert unpickler
    except Exception as e:
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {e})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_safe_pickle)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {e})") from None


def _load_safetensors(path: Path, device="cpu") -> dict:
    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        return load_file(path, device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({e})") from None


def _strip(state: dict, prefix: str = "backbone.") -> dict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def read_external(path, *, ema: bool = True, model: DiT | None = None, info: dict | None = None) -> dict:
    """Backbone weights (keys without ``backbone.``) of a released checkpoint. When the EMA
    weights of a Lightning .ckpt are taken, ``info`` (if a dict) receives their update count
    and decay (``ema_num_updates``, ``ema_decay``) where the checkpoint holds them."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        state = _load_safetensors(path)
        return _strip(state) if any(k.startswith("backbone.") for k in state) else state
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
    state = _strip(ckpt["state_dict"])
    shadow = (ckpt.get("ema") or {}).get("shadow_params") if isinstance(ckpt.get("ema"), dict) else None
    if ema and shadow is not None:
        if model is None:
            raise CheckpointError(f"{path}: EMA weights are a list in parameter order; a model is needed to name them")
        names = [n for n, _ in model.named_parameters()]
        if len(shadow) < len(names):
            raise CheckpointError(
                f"{path}: ema.shadow_params has {len(shadow)} tensors, the model has {len(names)} parameters"
            )
        state = dict(state, **dict(zip(names, shadow)))
        if info is not None:
            count, decay = ckpt["ema"].get("num_updates"), ckpt["ema"].get("decay")
            if isinstance(count, int) and not isinstance(count, bool):
                info["ema_num_updates"] = count
            if isinstance(decay, float):
                info["ema_decay"] = decay
    return state


def load_into(model: DiT, state: dict, source: str = "checkpoint") -> DiT:
    """Load ``state`` strictly, listing every missing, unexpected and mis-shaped key."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or misshaped:
        parts = [
            f"{name} keys: {', '.join(keys)}"
            for name, keys in [("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)]
            if keys
        ]
        raise CheckpointError(f"{source} does not fit the model; " + "; ".join(parts))
    model.load_state_dict(state)
    return model


# --------------------------------------------------------------------------- our model folders


def write_model_files(folder, model_state: dict, ema_state: dict | None, meta: dict, config=None) -> None:
    """Write a model folder's files into ``folder`` (not atomic by itself: see ``save_model_dir``)."""
    folder = Path(folder)
    meta = dict(meta)
    if "model" not in meta:
        if config is None:
            raise CheckpointError("model: meta has no model config and none was given")
        meta["model"] = config.to_dict() if isinstance(config, DiTConfig) else dict(config)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()}, str(folder / "model.safetensors"))
    if ema_state is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in ema_state.items()}, str(folder / "ema.safetensors"))
    # last, with the size and SHA-256 of the weights and of what the caller wrote before (train_state.pt)
    (folder / "meta.json").write_text(record_text(meta, folder, job_files(folder, "meta.json")))


def save_model_dir(path, model_state: dict, ema_state: dict | None, meta: dict, config=None) -> None:
    """Write a model folder atomically."""
    with atomic_dir(path) as tmp:
        write_model_files(tmp, model_state, ema_state, meta, config)


def load_model_dir(path, *, weights: str = "ema", device="cpu") -> tuple[DiT, dict]:
    """Rebuild the DiT of a model folder with its EMA (or raw) weights, in eval mode."""
    path = Path(path)
    meta_file = path / "meta.json"
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {path}")
    meta = read_json(meta_file, "model folder metadata", CheckpointError)
    if DIGEST in meta:  # our own folders: their weights checked against the record before use
        try:
            check(meta_file, "the model folder's record")
        except RecordError as e:
            raise CheckpointError(str(e)) from None
    if "model" not in meta or "diffusion" not in meta:
        raise CheckpointError(f"{meta_file}: lacks the 'model' or 'diffusion' entry")
    f = path / "ema.safetensors"
    if weights == "raw" or not f.exists():
        f = path / "model.safetensors"
    model = DiT(DiTConfig.from_dict(meta["model"]))
    load_into(model, _load_safetensors(f), source=str(f))
    return model.to(device).eval(), meta


class OpenCheckpoint(NamedTuple):
    """A model folder opened for sampling, scoring or probing."""

    model: DiT  # in eval mode, on the device asked for
    meta: dict  # its meta.json
    diffusion: object  # the backbone's process (tokendrift.core.diffusion)
    source: object  # the data source it was trained on (tokendrift.core.data)


def open_checkpoint(path, *, weights: str = "ema", device: str = "cpu") -> OpenCheckpoint:
    """The DiT of a model folder on ``device`` (resolved by the caller, which also draws its noise
    there: tokendrift.core.utils.resolve_device), with its diffusion process and data source."""
    model, meta = load_model_dir(path, weights=weights, device=device)
    return OpenCheckpoint(
        model, meta, make_diffusion(meta["diffusion"], model.config.vocab_size), make_source(meta["source"])
    )


# --------------------------------------------------------------------------- command line


RELEASED_PRESET = "small"  # the DiT of the released 170M MDLM and DUO checkpoints, when no config.json says
# The released config.json's key names and our DiTConfig's fields. kuleshov-group/mdlm-owt ships
# MDLMConfig (model_type "mdlm": vocab_size, model_length, hidden_dim, cond_dim, n_blocks, n_heads,
# dropout, time_conditioning; kuleshov-group/mdlm's models/hf/configuration_mdlm.py, copied in
# public repositories such as denaxen/discrete-diffusion-guidance). DUO's Hub release ships its own
# DUOConfig as remote code (model_type "duo": vocab_size, model_length, causal, hidden_dim, cond_dim,
# n_blocks, n_heads, dropout, var_min; no time_conditioning key, and s-sahoo/duo's
# configs/algo/duo.yaml trains with time_conditioning: True). Both classes default cond_dim to 129,
# the training configs (configs/model/small.yaml) use 128: only the file says what was trained,
# so every size key is required.
RELEASE_KEYS = {
    "vocab_size": "vocab_size",
    "model_length": "length",
    "hidden_dim": "hidden_size",
    "cond_dim": "cond_dim",
    "n_blocks": "n_blocks",
    "n_heads": "n_heads",
    "dropout": "dropout",
}
TIME_CONDITIONING = {"mdlm": False, "duo": True}  # where config.json has no time_conditioning key


def release_config_file(src: Path) -> Path | None:
    """The ``config.json`` of a released Hugging Face folder (or beside its ``.safetensors``)."""
    folder = src if src.is_dir() else src.parent if src.suffix == ".safetensors" else None
    return folder / "config.json" if folder is not None and (folder / "config.json").is_file() else None


def release_config(path: Path, diffusion: str) -> dict:
    """DiTConfig fields from a released ``config.json`` (its own key names)."""
    cfg = read_json(path, "released model config", CheckpointError)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    if cfg.get("model_type") != diffusion:
        raise CheckpointError(
            f"{path}: model_type {cfg.get('model_type')!r} is not the backbone's diffusion {diffusion!r}"
        )
    missing = sorted(k for k in RELEASE_KEYS if k not in cfg)
    if missing:
        raise CheckpointError(f"{path}: lacks {missing} (the released config's size keys)")
    if cfg.get("causal"):
        raise CheckpointError(f"{path}: causal: true (a causal DiT); the DiT here attends both ways")
    out = {ours: cfg[theirs] for theirs, ours in RELEASE_KEYS.items()}
    out["time_conditioning"] = bool(cfg.get("time_conditioning", TIME_CONDITIONING[diffusion]))
    return out


def check_agreement(release: dict, path: Path, preset: str | None, named: dict) -> None:
    """A config that also names a preset or sizes must say what the released config.json says."""
    if preset is not None and preset not in DiTConfig.PRESETS:
        raise TokenDriftError(f"model.preset: {preset!r} is not one of {sorted(DiTConfig.PRESETS)}")
    unknown = sorted(set(named) - set(DiTConfig.__dataclass_fields__))
    if unknown:
        raise TokenDriftError(f"model: unknown key(s) {unknown}")
    stated = {k: (v, f"preset {preset!r}") for k, v in DiTConfig.PRESETS.get(preset, {}).items()}
    stated.update({k: (v, f"model.{k}") for k, v in named.items()})
    theirs = {ours: key for key, ours in RELEASE_KEYS.items()} | {"time_conditioning": "time_conditioning"}
    wrong = [
        f"{where} says {k} {v!r}, {path} says {theirs[k]} {release[k]!r}"
        for k, (v, where) in sorted(stated.items())
        if release[k] != v
    ]
    if wrong:
        raise CheckpointError("model: the config and the released config disagree: " + "; ".join(wrong))


def import_checkpoint(
    src: str,
    dst: str,
    diffusion: str,
    preset: str | None = None,
    ema: bool = True,
    source_cfg: dict | None = None,
    model_overrides: dict | None = None,
) -> dict:
    """Convert a released MDLM/DUO checkpoint into a model folder (``hf:REPO/FILE`` downloads
    one file of a Hugging Face repository and its config.json; no code from it is ever run).
    A released Hugging Face folder's ``config.json`` decides the DiT; a preset or sizes named as
    well must agree with it. Without one (a Lightning ``.ckpt``) the preset (default "small")
    and sizes decide."""
    if diffusion not in ("mdlm", "duo"):
        raise TokenDriftError(f"diffusion: {diffusion!r} is not one of ['mdlm', 'duo']")
    src = resolve_hf(src)
    named = dict(model_overrides or {})
    preset = named.pop("preset", preset)
    config_file = release_config_file(Path(src))
    if config_file is not None:
        release = release_config(config_file, diffusion)
        check_agreement(release, config_file, preset, named)
        config = DiTConfig(**release)
    else:
        config = DiTConfig.preset(preset or RELEASED_PRESET, **{"time_conditioning": diffusion == "duo", **named})
    model = DiT(config)
    ema_info: dict = {}
    load_into(model, read_external(src, ema=ema, model=model, info=ema_info), source=str(src))
    meta = {
        "model": model.config.to_dict(),
        "diffusion": diffusion,
        "step": 0,
        "variant": "released",
        "source": source_cfg or {"kind": "openwebtext"},
        "origin": str(src),
        "origin_sha256": file_digest(Path(src) / "model.safetensors" if Path(src).is_dir() else src),
        "origin_config": str(config_file) if config_file else None,
        "provenance": provenance(),
        **ema_info,
    }  # ema_num_updates: what train's optim.ema_start: continue reads
    state = model.state_dict()
    save_model_dir(dst, state, state, meta)
    return meta


def _run_import(args) -> int:
    source_cfg = None
    if args.source_json:
        try:
            text = args.source_json if args.source_json.lstrip().startswith("{") else Path(args.source_json).read_text()
            source_cfg = json.loads(text)
        except (OSError, json.JSONDecodeError) as e:
            raise TokenDriftError(f"--source-json {args.source_json}: {e}") from None
    try:
        overrides = json.loads(args.model_json) if args.model_json else None
    except json.JSONDecodeError as e:
        raise TokenDriftError(f"--model-json is not valid JSON: {e}") from None
    import_checkpoint(args.src, args.dst, args.diffusion, args.preset, not args.no_ema, source_cfg, overrides)
    return 0


def register(sub) -> None:
    p = sub.add_parser("checkpoint", help="checkpoint tools")
    csub = p.add_subparsers(dest="checkpoint_command", required=True)
    q = csub.add_parser(
        "import", help="convert a released MDLM/DUO checkpoint (.ckpt or .safetensors) to a model folder"
    )
    q.add_argument("src")
    q.add_argument("dst")
    q.add_argument("--diffusion", required=True, choices=["mdlm", "duo"])
    q.add_argument(
        "--preset",
        help="the DiT preset: must agree with a released folder's config.json, which decides; "
        f"without one (a .ckpt) default {RELEASED_PRESET!r}",
    )
    q.add_argument("--no-ema", action="store_true", help="take state_dict weights instead of the EMA weights")
    q.add_argument(
        "--model-json",
        help="the DiT's config as JSON ({preset, hidden_size, n_blocks, n_heads, ...}): must agree with a "
        "released folder's config.json; without one it decides (default: the small preset, the released 170M models)",
    )
    q.add_argument(
        "--source-json", help="data source config to record (a JSON file or a JSON string); default OpenWebText/GPT-2"
    )
    q.set_defaults(func=_run_import)
