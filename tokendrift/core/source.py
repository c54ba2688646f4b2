"""The data source's config: validated, reduced to its kind's keys, and the folder the data stage
prepares for it (``tokendrift.jobs.prepare`` writes it, ``tokendrift.core.data`` reads it)."""

from __future__ import annotations

import json
from pathlib import Path

from . import config as configlib
from .utils import TokenDriftError, config_digest

# the schema's keys that each kind uses (a source config keeps only these)
KIND_KEYS = {
    "synthetic": {
        "kind",
        "seed",
        "length",
        "vocab_size",
        "n_states",
        "tokens_per_state",
        "n_successors",
        "stickiness",
        "smoothing",
        "mc_samples",
    },
    "openwebtext": {
        "kind",
        "seed",
        "length",
        "name",
        "layout",
        "revision",
        "data_files",
        "n_docs",
        "path",
        "tokenizer",
        "n_valid_docs",
        "cache_dir",
        "num_proc",
    },
    "textdir": {"kind", "seed", "length", "path", "tokenizer_vocab_size", "n_valid_docs", "cache_dir", "num_proc"},
}


def normalize(cfg: dict) -> dict:
    """Validate a source config (tokendrift/schemas/source.schema.yaml) and keep its kind's keys."""
    given = set(cfg or {})
    cfg = configlib.validate("source", cfg, prefix="source")
    unused = sorted(given - KIND_KEYS[cfg["kind"]])
    if unused:
        raise TokenDriftError(f"source: key(s) {unused} do not apply to kind {cfg['kind']!r}")
    cfg = {k: v for k, v in cfg.items() if k in KIND_KEYS[cfg["kind"]]}
    if cfg["length"] is None:
        cfg["length"] = 64 if cfg["kind"] == "synthetic" else 1024
    return cfg


def needs_preparation(cfg: dict) -> bool:
    return normalize(cfg)["kind"] != "synthetic"


def prepared_dir(cfg: dict) -> Path:
    """The prepared folder of a text source (a function of its whole normalized config)."""
    cfg = normalize(cfg)
    return Path(cfg["cache_dir"]) / f"{cfg['kind']}-{config_digest(cfg)}"


def source_json(text: str) -> dict:
    """The ``--source-json`` of the data-stage commands."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TokenDriftError(f"--source-json is not valid JSON: {e}") from None


def add_source_args(p) -> None:
    """The source config of a data-stage command, as every job takes its options: one flag per
    option of tokendrift/schemas/source.schema.yaml (``--kind openwebtext --tokenizer gpt2 ...``)."""
    configlib.add_options(p, "source")


def source_of(args) -> dict:
    """The source config the flags give (``normalize`` checks it and fills the schema's defaults)."""
    return configlib.given_options(args, "source")
