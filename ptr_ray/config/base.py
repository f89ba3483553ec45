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
    except (yaml.YAMLError, RecursionError):  # not YAML: the text itself is the value
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
    """A YAML file's top-level mapping; ConfigError (naming the file) if it cannot be used.

    The file is decoded as UTF-8 whatever the locale says, and a byte-order mark is fine
    (``utf-8-sig``): the same file must load on a laptop and in a container with ``LANG=C``.
    """
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file {p} is a folder; give a .yaml file")
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"config file {p} cannot be read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"config file {p} is not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line}); "
            "save it as UTF-8"
        ) from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {_first_line(e)}") from None
    except RecursionError:
        raise ConfigError(f"config file {p} is nested too deeply to read") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return data


def _first_line(err: BaseException) -> str:
    """PyYAML's messages span lines (problem, then a caret excerpt); the first, plus the mark."""
    mark = getattr(err, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    problem = getattr(err, "problem", None)
    text = str(problem) if problem else (str(err).splitlines() or [type(err).__name__])[0]
    return text + where


C = TypeVar("C", bound=BaseModel)


def load_config(
    cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None
) -> C:
    """Build ``cls`` from an optional YAML file plus dotted overrides; ConfigError on problems.

    A problem with a key the file set names the file too (``jobs/x.yaml: config key 'a.b':
    ...``); a problem with a key an override set does not, since the file is not at fault.
    """
    overrides = list(overrides or [])
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, overrides)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        msg = one_line_error(e)
        if path and not _from_override(e, overrides):
            msg = f"{path}: {msg}"
        raise ConfigError(msg) from None


def _from_override(err: ValidationError, overrides: list[str]) -> bool:
    """Whether the first problem's key is one a dotted override set (or lies inside one)."""
    loc = [str(p) for p in err.errors()[0]["loc"]]
    if not loc:
        return False
    for item in overrides:
        key = item.split("=", 1)[0].strip().split(".")
        n = min(len(key), len(loc))
        if key[:n] == loc[:n]:
            return True
    return False


def dump_config(cfg: BaseModel, path: str | Path) -> None:
    """Write the resolved config beside a stage's output, so every run says how it was made.
    Atomic: a resumed run compares against this file, and a torn one would read as a change."""
    from ptr_ray.fsutil import atomic_write

    atomic_write(Path(path), yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
