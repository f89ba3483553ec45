"""Configuration: pydantic models for every stage, loaded from YAML with dotted CLI overrides.

Every stage takes one config object. Users write YAML (``jobs/configs/*.yaml``) and tweak it
from the command line with ``key.sub=value`` pairs, the way torchtune and Hydra users expect.
Unknown keys and wrong types are errors (``extra="forbid"``): a typo in a YAML file must not
silently fall back to a default on a 4-hour GPU job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ptr_ray.prompts import DEFAULT_REFINE_INSTRUCTION


class ConfigError(ValueError):
    """A user-facing configuration problem; the message is one line naming the key."""


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are rejected, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------


class EngineConfig(StrictModel):
    """How to run one generation engine (vLLM, or the transformers fallback for tests)."""

    model: str = Field("builtin:smollm2-135m", description="HF id, local folder or builtin:NAME")
    backend: Literal["vllm", "hf"] = "vllm"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "bfloat16"
    max_model_len: int | None = Field(2048, gt=0, description="context window; None = model's")
    kv_cache_gib: float = Field(1.0, gt=0, description="CPU KV-cache size (VLLM_CPU_KVCACHE_SPACE)")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    enable_prefix_caching: bool = True
    enforce_eager: bool = Field(True, description="skip torch.compile/CUDA graphs: faster start")
    max_num_seqs: int = Field(64, ge=1)
    seed: int = 0
    num_gpus: float = Field(0.0, ge=0, description="GPUs per engine actor (0 = CPU)")
    num_cpus: float = Field(1.0, gt=0, description="logical CPUs per engine actor")
    extra: dict[str, Any] = Field(default_factory=dict, description="extra vllm.LLM kwargs")


class SamplingConfig(StrictModel):
    """Sampling settings, mapped onto vLLM's SamplingParams and HF generate alike."""

    n: int = Field(1, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 = disabled")
    max_tokens: int = Field(256, ge=1)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None


class PromptConfig(StrictModel):
    """The conversation format's knobs (see ptr_ray/prompts.py)."""

    refine_instruction: str = DEFAULT_REFINE_INSTRUCTION
    system_prompt: str | None = None


class RayConfig(StrictModel):
    """How a stage connects to Ray. ``address='local'`` starts a private local instance."""

    address: str | None = Field("local", description="'local', 'auto' or ray://host:port")
    num_cpus: int | None = Field(None, ge=1, description="logical CPUs for a local instance")
    temp_dir: str | None = None
    include_dashboard: bool = False


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

C = TypeVar("C", bound=BaseModel)


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
    """Set each dotted key in a nested dict, creating intermediate dicts as needed."""
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{key}'"
    got = first.get("input")
    got_txt = "" if isinstance(got, dict) else f" (got {got!r})"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"config key '{key}': {first['msg']}{got_txt}{more}"


def read_yaml(path: str | Path) -> dict[str, Any]:
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


def load_config(
    cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None
) -> C:
    """Build ``cls`` from an optional YAML file plus dotted overrides; ConfigError on problems."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, list(overrides or []))
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e)) from None


def dump_config(cfg: BaseModel, path: str | Path) -> None:
    """Write the resolved config beside a stage's output, so every run says how it was made."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


# --------------------------------------------------------------------------------------------
# Stage configs. Each stage owns its section; keep them here so one file shows every knob.
# --------------------------------------------------------------------------------------------


class SmokeConfig(StrictModel):
    """``ptr-ray smoke``: answer one query with each model, through the configured engine."""

    models: list[str] = Field(
        default_factory=lambda: ["builtin:smollm2-135m", "builtin:qwen2.5-coder-0.5b"]
    )
    query: str = "In one sentence: why does the sky look blue?"
    engine: EngineConfig = Field(default_factory=EngineConfig)
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(max_tokens=48))


# --- build (dataset construction) -----------------------------------------------------------

# --- train ----------------------------------------------------------------------------------

# --- serve ----------------------------------------------------------------------------------

# --- eval -----------------------------------------------------------------------------------

# --- pipeline -------------------------------------------------------------------------------
