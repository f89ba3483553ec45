"""``ptr-ray smoke``'s config: the one-query check that the models and the engine run here."""

from __future__ import annotations

from pydantic import Field

from ptr_ray.config.base import StrictModel
from ptr_ray.config.common import EngineConfig, SamplingConfig

__all__ = ["SmokeConfig"]


class SmokeConfig(StrictModel):
    """``ptr-ray smoke``: answer one query with each model, through the configured engine."""

    models: list[str] = Field(
        default_factory=lambda: ["builtin:smollm2-135m", "builtin:qwen2.5-coder-0.5b"]
    )
    query: str = "In one sentence: why does the sky look blue?"
    engine: EngineConfig = Field(default_factory=EngineConfig)
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(max_tokens=48))
