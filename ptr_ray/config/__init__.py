"""Configuration: pydantic models for every stage, loaded from YAML with dotted CLI overrides.

Every stage takes one config object; ``from ptr_ray.config import X`` reaches all of them.
The package is split so each stage's knobs are read in one short file:

- ``base``: strict models, YAML + ``key.sub=value`` overrides, one-line errors, dump;
- ``common``: sections several stages share (engine, sampling, prompt, Ray);
- ``smoke``, ``datagen`` (build and build-check), ``train``, ``serve``, ``eval``, ``pipeline``.

Importing it loads pydantic and PyYAML only (no Ray, vLLM or FastAPI), so the CLI can report a
config error in well under a second.
"""

from __future__ import annotations

from ptr_ray.config.base import (
    ConfigError,
    StrictModel,
    apply_overrides,
    dump_config,
    load_config,
    one_line_error,
    parse_override,
    read_yaml,
)
from ptr_ray.config.common import (
    EngineConfig,
    MlflowConfig,
    PromptConfig,
    RayConfig,
    SamplingConfig,
    TrackingConfig,
    WandbConfig,
)
from ptr_ray.config.datagen import (
    DEFAULT_STRONG_MODEL,
    BuildCheckConfig,
    BuildConfig,
    CleanConfig,
    ConsistencyConfig,
    DecontaminateConfig,
    DedupeConfig,
    OutputConfig,
    PoolConfig,
    QuerySourceConfig,
    SftMixConfig,
    StrongConfig,
    WeakConfig,
)
from ptr_ray.config.eval import (
    EvalConfig,
    EvalMethodConfig,
    EvalTaskConfig,
    SandboxConfig,
    SandboxLimitsConfig,
    SandboxScheduleConfig,
)
from ptr_ray.config.experiment import ExperimentConfig, HypothesisConfig
from ptr_ray.config.pipeline import PipelineConfig
from ptr_ray.config.serve import DeploymentConfig, ServeConfig
from ptr_ray.config.smoke import SmokeConfig
from ptr_ray.config.train import (
    DeepSpeedConfig,
    LoraConfig,
    LossConfig,
    OptimConfig,
    TrainConfig,
    TrainScalingConfig,
    TrainTrackingConfig,
)

__all__ = [
    "DEFAULT_STRONG_MODEL",
    "BuildCheckConfig",
    "BuildConfig",
    "CleanConfig",
    "ConfigError",
    "ConsistencyConfig",
    "DecontaminateConfig",
    "DedupeConfig",
    "DeepSpeedConfig",
    "DeploymentConfig",
    "EngineConfig",
    "EvalConfig",
    "EvalMethodConfig",
    "EvalTaskConfig",
    "ExperimentConfig",
    "HypothesisConfig",
    "LoraConfig",
    "LossConfig",
    "MlflowConfig",
    "OptimConfig",
    "OutputConfig",
    "PipelineConfig",
    "PoolConfig",
    "PromptConfig",
    "QuerySourceConfig",
    "RayConfig",
    "SamplingConfig",
    "SandboxConfig",
    "SandboxLimitsConfig",
    "SandboxScheduleConfig",
    "ServeConfig",
    "SftMixConfig",
    "SmokeConfig",
    "StrictModel",
    "StrongConfig",
    "TrackingConfig",
    "TrainConfig",
    "TrainScalingConfig",
    "TrainTrackingConfig",
    "WandbConfig",
    "WeakConfig",
    "apply_overrides",
    "dump_config",
    "load_config",
    "one_line_error",
    "parse_override",
    "read_yaml",
]
