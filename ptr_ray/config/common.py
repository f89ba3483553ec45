"""Config sections several stages share: the engine, sampling, the prompt format and Ray.

Build, eval, serve and smoke all run the same generation engine and the same conversation
format; keeping one definition of each means a knob means the same thing in every stage.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ptr_ray.config.base import StrictModel
from ptr_ray.prompts import DEFAULT_REFINE_INSTRUCTION

__all__ = ["EngineConfig", "PromptConfig", "RayConfig", "SamplingConfig"]


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
