"""Job configurations: YAML/JSON data validated by the JSON schemas in ``tokendrift/schemas``.

The schema files are the one place where options and their defaults are documented; this
module only loads them, fills the defaults in and turns a violation into a
``TokenDriftError`` that names the offending key.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .utils import TokenDriftError

SCHEMA_DIR = Path(__file__).parent / "schemas"


@functools.cache
def schema(name: str) -> dict:
    return yaml.safe_load((SCHEMA_DIR / f"{name}.schema.yaml").read_text())


def fill_defaults(sch: dict, instance: Any) -> Any:
    """Return ``instance`` with the schema's defaults filled in for absent keys (recursively)."""
    if not isinstance(instance, dict) or sch.get("type") not in ("object", None):
        return instance
    out = dict(instance)
    for key, sub in sch.get("properties", {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out and isinstance(out[key], dict) and "properties" in sub:
            out[key] = fill_defaults(sub, out[key])
    return out


def _path(error: jsonschema.ValidationError, prefix: str) -> str:
    parts = [prefix] if prefix else []
    parts += [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        parts.append(",".join(extra))
        return ".".join(parts) + ": unknown key"
    return ".".join(parts) or "(top level)"


def validate(name: str, instance: Any, prefix: str = "") -> dict:
    """Validate ``instance`` against schema ``name`` and return it with defaults filled in."""
    return validate_schema(schema(name), instance, f"{name} config", prefix)


def validate_with(path: Path, instance: Any, what: str) -> dict:
    """Validate against the schema file ``path`` (e.g. workflow/schemas/config.schema.yaml)."""
    try:
        sch = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise TokenDriftError(f"schema file not found: {path}") from None
    return validate_schema(sch, instance, what)


def validate_schema(sch: dict, instance: Any, what: str, prefix: str = "") -> dict:
    if instance is None:
        instance = {}
    if not isinstance(instance, dict):
        raise TokenDriftError(f"{what}: {prefix or '(top level)'} must be a mapping, got {type(instance).__name__}")
    filled = fill_defaults(sch, instance)
    errors = sorted(jsonschema.Draft202012Validator(sch).iter_errors(filled), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = _path(e, prefix)
        msg = "unknown key" if where.endswith("unknown key") else e.message
        raise TokenDriftError(f"{what}: {where.removesuffix(': unknown key')}: {msg}")
    return filled


def load_file(path: str | Path) -> dict:
    """Read a YAML or JSON config file (JSON is YAML), naming the file on any error."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise TokenDriftError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise TokenDriftError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TokenDriftError(f"config file {path} must hold a mapping")
    return data


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a copy of ``cfg``."""
    cfg = copy.deepcopy(cfg)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise TokenDriftError(f"--set {item!r}: expected key.path=value")
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise TokenDriftError(f"--set {item!r}: {p} is not a mapping")
        node[leaf] = yaml.safe_load(raw)
    return cfg
