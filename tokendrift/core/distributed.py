"""The device and process group of a training job's rank: which GPU (or the CPU) a rank trains
on, and joining (and leaving) the data-parallel process group that torchrun or the submitit
plugin's variables describe."""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist

from . import config as configlib
from .utils import TokenDriftError


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
