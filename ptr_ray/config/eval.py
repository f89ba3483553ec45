"""``ptr-ray eval``'s config: which methods (model sources) answer which tasks, over how many rounds.

The paper's comparison is methods x tasks x rounds; a method is only a named model source with
engine overrides, so base, IFT and PTR models (and a user's own) are configured the same way.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from ptr_ray.config.base import StrictModel
from ptr_ray.config.common import (
    EngineConfig,
    PromptConfig,
    RayConfig,
    SamplingConfig,
    TrackingConfig,
)

__all__ = [
    "EvalConfig",
    "EvalMethodConfig",
    "EvalTaskConfig",
    "SandboxConfig",
    "SandboxLimitsConfig",
    "SandboxScheduleConfig",
]


class EvalMethodConfig(StrictModel):
    """One column of the comparison: a name, a model source and its engine overrides.

    The paper's three methods are all just model sources: the base model (its refinement
    comes from the refine instruction alone: the *Prompt* baseline), an IFT model and a PTR
    model. ``engine`` keys override the shared ``EvalConfig.engine`` for this method only.
    """

    name: str = Field(
        ...,
        min_length=1,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="short label used in tables, plots and file names",
    )
    model: str = Field(..., min_length=1, description="HF id, local folder or builtin:NAME")
    engine: dict[str, Any] = Field(default_factory=dict, description="EngineConfig overrides")


class EvalTaskConfig(StrictModel):
    """A user's own task: a local JSONL file, its field names and the metric that scores it."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    path: str
    question_field: str = "question"
    answer_field: str = "answer"
    choices_field: str | None = Field(None, description="list of options (multiple choice)")
    id_field: str | None = None
    metric: Literal["multiple_choice", "math", "exact", "similarity"] = "exact"
    prompt_template: str | None = Field(
        None, description="format string with {question} (and {options}); None = task default"
    )
    max_tokens: int | None = Field(None, ge=1)


class SandboxLimitsConfig(StrictModel):
    """Resource limits set on each model-written program before it starts (RLIMITs)."""

    memory_mb: int = Field(1024, ge=128, le=1 << 20, description="address space (RLIMIT_AS)")
    cpu_s: int | None = Field(
        None, ge=1, le=3600, description="CPU seconds; None = the per-program timeout + 1"
    )
    file_size_mb: int = Field(16, ge=1, le=1 << 16, description="largest file it may write")
    processes: int = Field(32, ge=1, le=4096, description="processes and threads (RLIMIT_NPROC)")
    open_files: int = Field(64, ge=16, le=65536, description="open file descriptors")
    tmp_mb: int = Field(64, ge=1, le=1 << 16, description="size of its private tmpfs /tmp")


class SandboxScheduleConfig(StrictModel):
    """Where code evaluation runs: a CPU Ray task, away from the GPU engine's node, on clusters."""

    where: Literal["auto", "local", "ray"] = Field(
        "auto",
        description="auto: a Ray task when evaluation itself runs inside Ray (cluster jobs), "
        "else a subprocess of the evaluating process",
    )
    num_cpus: float = Field(1.0, gt=0, description="CPUs of the Ray task that runs a batch")
    resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources it needs, e.g. {code_eval: 1}"
    )
    label_selector: dict[str, str] = Field(
        default_factory=dict, description="Ray node labels it needs, e.g. {ray.io/node-group: cpu}"
    )
    avoid_engine_node: bool = Field(
        True,
        description="prefer any node but the evaluator's own (the GPU engine's); "
        "fall back to it when no other node fits",
    )


class SandboxConfig(StrictModel):
    """How model-written code is isolated (see ptr_ray.eval.sandbox for the threat model)."""

    isolation: Literal["required", "best_effort"] = Field(
        "best_effort",
        description="required: refuse to run code without namespace isolation; best_effort: "
        "warn loudly and use the strongest limits the machine allows",
    )
    limits: SandboxLimitsConfig = Field(default_factory=SandboxLimitsConfig)
    workers: int = Field(2, ge=1, le=256, description="programs run at once")
    hide_paths: list[str] = Field(
        default_factory=list,
        description="paths never visible to programs, on top of HOME, ~/.ray, the Ray temp "
        "folder and /mnt (shared storage)",
    )
    expose_paths: list[str] = Field(
        default_factory=list,
        description="extra read-only paths (system libraries and Python are always exposed)",
    )
    expose_site_packages: bool = Field(
        True, description="let programs import installed packages (read-only), as the harness does"
    )
    uid_base: int = Field(
        1_900_000_000,
        ge=1000,
        le=4_000_000_000,
        description="as root, worker slot k runs programs as uid/gid uid_base + k",
    )
    schedule: SandboxScheduleConfig = Field(default_factory=SandboxScheduleConfig)

    @field_validator("hide_paths", "expose_paths")
    @classmethod
    def _absolute(cls, v: list[str]) -> list[str]:
        bad = [p for p in v if not p.startswith("/")]
        if bad:
            raise ValueError(f"paths must be absolute, got {bad[0]!r}")
        return v


class EvalConfig(StrictModel):
    """``ptr-ray eval``: every method answers every task over N refinement rounds."""

    methods: list[EvalMethodConfig] = Field(
        default_factory=lambda: [EvalMethodConfig(name="base", model="builtin:smollm2-135m")],
        min_length=1,
    )
    tasks: list[str] = Field(
        default_factory=lambda: ["gsm8k", "arc_challenge"],
        description="packaged task names (see ptr_ray.data.benchmarks)",
    )
    custom_tasks: list[EvalTaskConfig] = Field(
        default_factory=list, description="local JSONL tasks, always evaluated"
    )
    limit: int | None = Field(50, ge=1, description="items per task; None = all")
    seed: int | None = Field(0, description="seed of the item sample; None = the first `limit`")
    rounds: int = Field(3, ge=1, le=10)
    engine: EngineConfig = Field(default_factory=lambda: EngineConfig(max_model_len=4096))
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(max_tokens=512))
    task_max_tokens: dict[str, int] = Field(
        default_factory=dict, description="per-task max_tokens overriding sampling.max_tokens"
    )
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    math_metric: Literal["exact", "flexible"] = Field(
        "exact", description="headline math metric; both are always computed"
    )
    similarity_threshold: float = Field(
        0.7, ge=-1, le=1, description="cosine at which a summary counts correct"
    )
    code_timeout_s: float = Field(10.0, gt=0, description="per-program limit for HumanEval")
    sandbox: SandboxConfig = Field(
        default_factory=SandboxConfig, description="isolation, limits and placement of code runs"
    )
    stop_when_stable: bool = Field(
        False,
        description="stop an item once its answer repeats; "
        "later rounds carry the stable answer forward",
    )
    output_dir: str = "runs/eval"
    resume: bool = Field(True, description="reuse (method, task) results already in output_dir")
    plot: bool = True
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig,
        description="also log each method's headline metric per task and round to "
        "TensorBoard / MLflow / W&B (ptr_ray/tracking.py)",
    )
    ray: RayConfig | None = Field(
        None, description="set to run evaluation inside a Ray task with the engine's resources"
    )
