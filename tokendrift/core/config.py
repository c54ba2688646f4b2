"""Job configurations: YAML/JSON data validated by the JSON schemas in ``tokendrift/schemas``.

The schema files are the one place where options and their defaults are documented; this
module only loads them, fills the defaults in and turns a violation into a
``TokenDriftError`` that names the offending key.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
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


def options(sch: dict, path: tuple[str, ...] = ()):
    """(key path, schema) of each option of a job schema: a property, or each property of an
    option group (an object with properties of its own: a train job's ``optim``, ``objective``)."""
    for key, sub in sch.get("properties", {}).items():
        if sub.get("type") == "object" and "properties" in sub:
            yield from options(sub, (*path, key))
        else:
            yield (*path, key), sub


def option_flag(path: tuple[str, ...], prefix: str = "") -> str:
    """``--prefix-key-name``, a group's option as ``--group.key-name`` (``--objective.queue-size``)."""
    return "--" + ".".join((prefix + k if i == 0 else k).replace("_", "-") for i, k in enumerate(path))


def _option_value(sub: dict):
    """How a flag's text becomes the option's value: text for a string option, JSON for any
    other (a number, ``true``, ``null``, a list ``[10, 20]``, a mapping ``{...}``); the schema
    checks the value afterwards."""
    types = sub.get("type", [])
    types = [types] if isinstance(types, str) else types
    text_only = types == ["string"] or ("enum" in sub and all(isinstance(e, str) for e in sub["enum"]))

    def parse(text: str):
        if text_only or ("string" in types and text != "null"):
            return text
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            if "enum" in sub and text in sub["enum"]:
                return text
            raise argparse.ArgumentTypeError(f"{text!r} is not JSON (a number, true, null, [...], {{...}})") from None
        if types == ["number"] and type(value) is int:
            return float(value)  # a number option is a float: `--mauve-scaling 5` records 5.0
        return value

    return parse


def add_options(parser, name: str, prefix: str = "") -> None:
    """One flag per option of job schema ``name`` (``option_flag``), with its description and
    default from the schema. A flag that is not given is absent from the parsed arguments: the
    schema fills its default when ``read_options`` validates them."""
    for path, sub in options(schema(name)):
        flag = option_flag(path, prefix)
        shown = f" (default: {json.dumps(sub['default'])})" if "default" in sub else ""
        parser.add_argument(
            flag,
            dest=prefix + ".".join(path),
            default=argparse.SUPPRESS,
            type=_option_value(sub),
            metavar="{" + ",".join(map(json.dumps, sub["enum"])).replace('"', "") + "}" if "enum" in sub else None,
            help=((sub.get("description") or "").strip() + shown).replace("%", "%%"),
        )


def given_options(args, name: str, prefix: str = "") -> dict:
    """The options of job schema ``name`` given as flags (``add_options``), nested as the schema nests them."""
    out: dict = {}
    for path, _ in options(schema(name)):
        dest = prefix + ".".join(path)
        if hasattr(args, dest):
            node = out
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = getattr(args, dest)
    return out


def read_options(args, name: str, prefix: str = "") -> dict:
    """A job's options: the flags given, validated by its schema, which fills in every default."""
    return validate(name, given_options(args, name, prefix), prefix=prefix.rstrip("_"))


def option_args(name: str, values: dict, prefix: str = "") -> list[str]:
    """The flags of job schema ``name`` set to ``values`` (a workflow config section or a job config),
    as an argument list: one for each option ``values`` holds, in the schema's order."""
    out = []
    for path, _ in options(schema(name)):
        node = values
        for key in path:
            if not isinstance(node, dict) or key not in node:
                break
            node = node[key]
        else:
            out += [option_flag(path, prefix), node if isinstance(node, str) else json.dumps(node)]
    return out


def deep_merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` on top: a mapping merged key by key, any other value replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


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
    """Read a YAML or JSON config file (``.json``: read as JSON, whose ``1e-08`` PyYAML would
    read as text), naming the file on any error."""
    path = Path(path)
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise TokenDriftError(f"config file {path} is not valid JSON: {e}") from None
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
