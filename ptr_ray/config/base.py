"""The machinery every stage config shares: strict models, YAML + dotted overrides, one-line errors.

Users write YAML (``jobs/configs/*.yaml``) and tweak it from the command line with
``key.sub=value`` pairs, the way torchtune and Hydra users expect. Unknown keys and wrong types
are errors (``extra="forbid"``): a typo in a YAML file must not silently fall back to a default
on a 4-hour GPU job. The stage sections themselves live in the sibling modules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from ptr_ray.errors import PtrRayValueError

__all__ = [
    "ConfigError",
    "StrictModel",
    "apply_overrides",
    "dump_config",
    "load_config",
    "one_line_error",
    "parse_override",
    "read_yaml",
]

_MAX_GOT_CHARS = 120  # an offending value longer than this is cut, so the error stays readable


class ConfigError(PtrRayValueError):
    """A user-facing configuration problem; the message is one line naming the key."""


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are rejected, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def one_line_error(err: ValidationError, prefix: str = "", noun: str = "config key") -> str:
    """The first problem of a pydantic error as one line naming its dotted key.

    ``prefix`` is prepended to the key (``train.`` when the model is a nested section that was
    validated on its own); ``noun`` names what a key is (``config key``, ``field``). A model-level
    check (a ``ValueError`` raised by a model validator) keeps its own words.
    """
    errors = err.errors()
    first = errors[0]
    key = prefix + ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"unknown {noun} '{key}'"
    if not first["loc"] and first["type"] == "value_error":  # a model-level check: its own words
        return str(first.get("ctx", {}).get("error", first["msg"]))
    got = first.get("input")
    got_txt = ""
    if not isinstance(got, dict):
        shown = repr(got)
        if len(shown) > _MAX_GOT_CHARS:
            shown = shown[: _MAX_GOT_CHARS - 3] + "..."
        got_txt = f" (got {shown})"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{noun} '{key}': {first['msg']}{got_txt}{more}"


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=3`` -> (["a", "b"], 3). Values are parsed as YAML so lists/bools/null work."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.sub=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted key in a nested dict, creating intermediate dicts as needed.

    A numeric part indexes a list (``sources.0.limit=400``), as in Hydra and torchtune.
    """
    for item in overrides:
        path, value = parse_override(item)
        node: Any = data
        for i, part in enumerate(path):
            last = i == len(path) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(
                        f"override {item!r}: {part!r} is not an index of a {len(node)}-item list"
                    )
                key: Any = int(part)
            elif isinstance(node, dict):
                key = part
            else:
                raise ConfigError(f"override {item!r}: {path[i - 1]!r} is not a section")
            if last:
                node[key] = value
            else:
                if isinstance(node, dict) and node.get(key) is None:
                    node[key] = {}
                node = node[key]
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping; ConfigError if missing, malformed or not a mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return data


C = TypeVar("C", bound=BaseModel)


def load_config(
    cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None
) -> C:
    """Build ``cls`` from an optional YAML file plus dotted overrides; ConfigError on problems."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, list(overrides or []))
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(one_line_error(e)) from None


def dump_config(cfg: BaseModel, path: str | Path) -> None:
    """Write the resolved config beside a stage's output, so every run says how it was made."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
