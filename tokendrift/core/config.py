"""Job configurations: YAML/JSON data validated by the JSON schemas in ``tokendrift/schemas``.

The schema files are the one place where options and their defaults are documented; this
module only loads them, fills the defaults in and turns a violation into a
``TokenDriftError`` that names the offending key.
"""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .utils import TokenDriftError

SCHEMA_DIR = Path(__file__).parents[1] / "schemas"


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
    return validate_schema(inline_job_schemas(sch), instance, what)


def inline_job_schemas(node: Any) -> Any:
    """Replace each ``{$ref: "tokendrift:NAME", ...}`` of a schema by the job schema NAME, with the
    ``properties`` written beside the reference added to its own (a workflow config's section of
    a job's options: the job's defaults and checks, and what only the workflow reads)."""
    if isinstance(node, list):
        return [inline_job_schemas(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: inline_job_schemas(v) for k, v in node.items()}
    ref = node.get("$ref", "")
    if not ref.startswith("tokendrift:"):
        return node
    job = {k: v for k, v in schema(ref.removeprefix("tokendrift:")).items() if k not in ("$schema", "title")}
    extra = {k: v for k, v in node.items() if k != "$ref"}
    return {**job, **extra, "properties": {**job["properties"], **extra.get("properties", {})}}


def defaults(name: str) -> dict:
    """The defaults of job schema ``name``: what that job's flags and functions default to."""
    return fill_defaults(schema(name), {})


def add_options(parser, name: str, prefix: str = "") -> None:
    """One flag per property of job schema ``name`` (``--prefix-key-name``), with its type or
    choices, default and description taken from the schema."""
    for key, sub in schema(name)["properties"].items():
        kw = {"default": sub.get("default"), "help": sub.get("description")}
        if "enum" in sub:
            kw["choices"] = sub["enum"]
        else:
            kw["type"] = {"integer": int, "number": float, "string": str}[sub["type"]]
        parser.add_argument(option_flag(prefix + key), dest=prefix + key, **kw)


def option_flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def option_args(name: str, values: dict, prefix: str = "") -> list[str]:
    """The flags of job schema ``name`` set to ``values`` (a validated workflow config section),
    as an argument list."""
    return [a for key in schema(name)["properties"] for a in (option_flag(prefix + key), str(values[key]))]


# JSON Schema's "integer" is any number with a zero fractional part, so 4.0 passes it (and YAML
# reads `4.0` as a float): a count written as 4.0 would reach the code as a float and fail late
# ("Unknown format code 'd'"). Here an integer is an int, and 4.0 is refused at the check.
Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, x: isinstance(x, int) and not isinstance(x, bool)
    ),
)


def validate_schema(sch: dict, instance: Any, what: str, prefix: str = "") -> dict:
    if instance is None:
        instance = {}
    if not isinstance(instance, dict):
        raise TokenDriftError(f"{what}: {prefix or '(top level)'} must be a mapping, got {type(instance).__name__}")
    bad_text = _unprintable(instance, [prefix] if prefix else [])
    if bad_text:  # first: a key or value that is not text cannot be named or shown safely otherwise
        where, value = bad_text
        raise TokenDriftError(
            f"{what}: {where}: must hold no control or unprintable character (a newline, tab, escape, ...), "
            f"got {value!r}"
        )
    filled = fill_defaults(sch, instance)
    errors = sorted(Validator(sch).iter_errors(filled), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = _path(e, prefix)
        msg = "unknown key" if where.endswith("unknown key") else e.message
        if e.validator == "type" and isinstance(e.instance, float) and "integer" in str(e.validator_value):
            msg = f"must be an integer, got the float {e.instance!r}"
        raise TokenDriftError(f"{what}: {where.removesuffix(': unknown key')}: {msg}")
    bad = _non_finite(filled, [prefix] if prefix else [])
    if bad:
        where, value = bad
        raise TokenDriftError(f"{what}: {where}: must be a finite number, got {value}")
    return filled


def _unprintable(node: Any, path: list[str]) -> tuple[str, str] | None:
    """The first key or string of a config with a character that is not printable (str.isprintable:
    control characters such as newline, tab and escape, and unassigned or separator code points
    other than the space). Every path and name of a config ends up in a file name, a shell line
    or a log line, where such a character hides what the value is or splits a line in two."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        where = [*path, str(key)]
        if isinstance(key, str) and not key.isprintable():
            return ".".join([*path, repr(key)]), key
        if isinstance(value, str) and not value.isprintable():
            return ".".join(where), value
        found = _unprintable(value, where)
        if found:
            return found
    return None


def _non_finite(node: Any, path: list[str]) -> tuple[str, float] | None:
    """The first NaN or infinity of a config: YAML writes them (.nan, .inf) and a schema's
    bounds let them through (NaN compares false with every bound)."""
    if isinstance(node, float) and not math.isfinite(node):
        return ".".join(path), node
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        found = _non_finite(value, [*path, str(key)])
        if found:
            return found
    return None


def load_file(path: str | Path) -> dict:
    """Read a YAML or JSON config file (JSON is YAML), naming the file on any error."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise TokenDriftError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:  # a folder, no permission, not text
        raise TokenDriftError(f"config file {path} cannot be read: {e}") from None
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
