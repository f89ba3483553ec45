"""Config sections several stages share: the engine, sampling, the prompt format and Ray.

Build, eval, serve and smoke all run the same generation engine and the same conversation
format; keeping one definition of each means a knob means the same thing in every stage.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import Field, field_validator

from ptr_ray.config.base import StrictModel
from ptr_ray.prompts import DEFAULT_REFINE_INSTRUCTION

__all__ = [
    "EngineConfig",
    "MlflowConfig",
    "PromptConfig",
    "RayConfig",
    "SamplingConfig",
    "TrackingConfig",
    "WandbConfig",
]

# Ray's own resources have their own knobs (num_cpus, num_gpus); Ray refuses them in a
# ``resources`` dict only when it schedules, so a config says so when it is loaded.
_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def check_custom_resources(value: dict[str, float]) -> dict[str, float]:
    """A ``resources`` mapping of custom Ray resources: no built-in name, no negative amount."""
    for name, amount in value.items():
        if name in _BUILTIN_RESOURCES:
            raise ValueError(
                f"{name!r} is a built-in Ray resource: set it with its own key "
                "(num_cpus, num_gpus), not in resources"
            )
        if amount < 0:
            raise ValueError(f"resource {name!r} must be >= 0, got {amount}")
    return value


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
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources per engine actor or replica, e.g. {pool_vllm: 1}: "
        "it runs only on nodes that advertise them (placement, never the results)",
    )
    _resources = field_validator("resources")(check_custom_resources)
    metrics: bool = Field(
        True,
        description="export vLLM's engine stats (requests running/waiting, KV and prefix-cache "
        "use, tokens) to Ray's metrics endpoint when the engine runs under Ray",
    )
    extra: dict[str, Any] = Field(default_factory=dict, description="extra vllm.LLM kwargs")


def most_of_each(engines: Iterable[EngineConfig]) -> dict[str, float]:
    """The custom resources a Ray task or actor running ``engines`` must ask for: the most of
    each any engine names (they mark node types, e.g. ``pool_vllm``; several engines in one
    process still need one such node)."""
    out: dict[str, float] = {}
    for engine in engines:
        for name, amount in engine.resources.items():
            out[name] = max(amount, out.get(name, 0))
    return out


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
    """How a stage connects to Ray. ``address='local'`` starts a private local instance.

    A local instance starts Ray's dashboard by default, bound to loopback only: the stages
    print its URL, and its Jobs / Actors / Serve views show the run under ptr-ray's names.
    The dashboard also accepts job submissions (code execution), so it never listens beyond
    loopback here; to watch a remote run, forward the port (``ray dashboard cluster.yaml``,
    ``ssh -L 8265:127.0.0.1:8265``) or use the cluster's own. ``include_dashboard: false``
    saves its start-up time (a few seconds) and memory (a few hundred MB of processes).
    """

    address: str | None = Field("local", description="'local', 'auto' or ray://host:port")
    num_cpus: int | None = Field(None, ge=1, description="logical CPUs for a local instance")
    temp_dir: str | None = None
    include_dashboard: bool = Field(
        True, description="start Ray's dashboard with a local instance (loopback only)"
    )
    dashboard_host: str = Field(
        "127.0.0.1", description="the dashboard's bind address: a loopback address only"
    )
    dashboard_port: int | None = Field(
        None, ge=1, le=65535, description="None: 8265, or the next free port after it"
    )

    @field_validator("dashboard_host")
    @classmethod
    def _loopback_only(cls, host: str) -> str:
        if host.strip().lower() == "localhost":
            return "127.0.0.1"
        try:
            loopback = ipaddress.ip_address(host.strip().strip("[]")).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(
                f"{host!r} is not a loopback address: the dashboard runs submitted jobs, so "
                "ptr-ray binds it to 127.0.0.1 or ::1 only; forward the port to watch it from "
                "another machine (ssh -L 8265:127.0.0.1:8265 HOST)"
            )
        return host.strip().strip("[]")


class MlflowConfig(StrictModel):
    """Where the ``mlflow`` tracking backend logs (ptr_ray/tracking.py)."""

    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; None = $MLFLOW_TRACKING_URI of the driver, else a "
        "local SQLite store, <output_dir>/mlflow.db",
    )
    experiment: str = Field("ptr-ray", min_length=1, description="MLflow experiment name")


class WandbConfig(StrictModel):
    """How the ``wandb`` tracking backend logs (ptr_ray/tracking.py). Offline unless asked."""

    project: str = Field("ptr-ray", min_length=1)
    entity: str | None = Field(None, description="W&B team or user; None = the account's default")
    mode: Literal["offline", "online", "disabled"] | None = Field(
        None,
        description="None = $WANDB_MODE of the driver, else offline (files in "
        "<output_dir>/wandb, upload later with `wandb sync`); online uploads as it runs",
    )


class TrackingConfig(StrictModel):
    """Experiment tracking beside metrics.jsonl (which is always written and stays the record).

    Off by default: a run writes no extra files and imports no tracking package unless a
    backend is named here."""

    backends: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list,
        description="tensorboard: event files beside metrics.jsonl (tensorboardX, comes with "
        "Ray Train); mlflow, wandb: need their package installed",
    )
    tensorboard_dir: str | None = Field(
        None, description="folder of the TensorBoard event files; None = the output folder"
    )
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)

    @field_validator("backends")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"backends lists a backend twice: {v}")
        return v
