"""Load a run config: TOML file + `--set a.b=value` overrides -> validated `Config`.

Errors are `ConfigError` with one line per problem, naming the dotted key and
what it accepts, so a bad run is refused before any process starts.
"""

from __future__ import annotations

import json
import os
import tomllib
from typing import Any

from pydantic import ValidationError

from asyncor.configs.schema import Config

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "tiny.toml")


class ConfigError(ValueError):
    """A run config that cannot be used; the message names every bad key."""


def parse_value(text: str) -> Any:
    """A `--set` value: TOML syntax (`3`, `1e-3`, `true`, `"x"`, `["+", "*"]`), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(tree: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set buffer.max_staleness=0")
    key, _, raw = assignment.partition("=")
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = parse_value(raw.strip())


def flatten(tree: dict, prefix: str = "") -> dict:
    """A config tree as dotted keys: {"a": {"b": 1}} -> {"a.b": 1} (lists are values)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _format_error(err: dict) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "(config)"
    kind = err["type"]
    if kind == "extra_forbidden":
        section = Config
        for part in err["loc"][:-1]:
            field = section.model_fields.get(str(part))
            section = field.annotation if field is not None else None
            if section is None or not hasattr(section, "model_fields"):
                break
        known = ", ".join(sorted(section.model_fields)) if section is not None and hasattr(section, "model_fields") else ""
        return f"{key}: unknown key" + (f" (known keys here: {known})" if known else "")
    given = err.get("input")
    msg = err["msg"]
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
        return msg if "." in msg.split(" ")[0] else f"{key}: {msg}"
    return f"{key}: {msg} (got {given!r})"


def validate(tree: dict, check_files: bool = True) -> Config:
    """`check_files = False`: data paths need not exist here (planning a cluster run from another machine)."""
    try:
        return Config.model_validate(tree, context={"check_files": check_files})
    except ValidationError as exc:
        lines = [_format_error(e) for e in exc.errors()]
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None


def load_config(path: str | None = None, overrides: list[str] = (), check_files: bool = True) -> Config:
    path = path or DEFAULT_CONFIG
    if not os.path.exists(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, "rb") as f:
            tree = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for assignment in overrides:
        apply_override(tree, assignment)
    return validate(tree, check_files)


def load_resolved(path: str) -> Config:
    """Read the fully resolved `config.json` the launcher wrote for the roles."""
    with open(path) as f:
        return validate(json.load(f))


def dump_resolved(config: Config, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(config.model_dump(mode="json"), f, indent=2)
