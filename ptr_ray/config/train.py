"""``ptr-ray train``'s config: the PTR loss, the optimizer, DeepSpeed, Ray Train scaling, LoRA.

Training is the one stage that runs inside Ray Train workers, so everything a worker needs to
rebuild the run (and to resume it from a checkpoint) must be in this one serializable object.
That is also why a resume compares it key by key with the saved one (ptr_ray/train/resume.py).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ptr_ray.config.base import StrictModel
from ptr_ray.config.common import (
    PromptConfig,
    RayConfig,
    TrackingConfig,
    check_custom_resources,
)

__all__ = [
    "DeepSpeedConfig",
    "LoraConfig",
    "LossConfig",
    "OptimConfig",
    "TrainConfig",
    "TrainScalingConfig",
    "TrainTrackingConfig",
]


class LossConfig(StrictModel):
    """The PTR loss weights (docs/design.md, "The PTR loss"); ignored in ``ift`` mode (plain CE)."""

    lambdas: tuple[float, float, float] = Field(
        (0.8, 0.1, 0.1), description="(λ1 answer CE, λ2 consistency, λ3 confidence); sum to 1"
    )
    schedule: Literal["constant", "warmup"] = Field(
        "constant", description="warmup: λ2, λ3 rise linearly from 0 while λ1 takes the rest"
    )
    warmup_steps: int = Field(0, ge=0, description="optimizer steps of the λ warm-up")
    confidence: Literal["all_turns", "final"] = Field(
        "all_turns",
        description="λ3's term: all_turns = Σ_t β_t (1 − p̄_t) over every assistant turn (the "
        "paper's Eq. 4); final = 1 − p̄_n, the final answer's confidence only",
    )

    @model_validator(mode="after")
    def _check(self) -> LossConfig:
        if any(x < 0 for x in self.lambdas) or abs(sum(self.lambdas) - 1.0) > 1e-6:
            raise ValueError(f"lambdas must be >= 0 and sum to 1, got {list(self.lambdas)}")
        if self.schedule == "warmup" and self.warmup_steps == 0:
            raise ValueError("schedule=warmup needs warmup_steps > 0")
        return self


class OptimConfig(StrictModel):
    """AdamW with linear warm-up then cosine (or constant) learning rate."""

    optimizer: Literal["torch", "deepspeed"] = Field(
        "torch",
        description="torch: torch.optim.AdamW (no JIT build); deepspeed: DS AdamW "
        "(FusedAdam on GPU, CPUAdam with offload; compiled on first use)",
    )
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "constant", "linear"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr / peak lr (cosine, linear)")


class DeepSpeedConfig(StrictModel):
    """The DeepSpeed knobs; ``config_file`` (a DeepSpeed JSON) is used as is when given."""

    zero_stage: Literal[0, 1, 2, 3] = 2
    bf16: bool = False
    offload_optimizer: bool = False
    offload_param: bool = Field(False, description="ZeRO-3 only")
    micro_batch_size: int = Field(1, ge=1, description="packed sequences per worker per micro-step")
    gradient_accumulation_steps: int = Field(1, ge=1)
    gradient_clipping: float = Field(1.0, ge=0, description="0 = off")
    config_file: str | None = Field(
        None, description="DeepSpeed JSON; 'auto' values are filled from this config"
    )


class TrainScalingConfig(StrictModel):
    """Ray Train's ScalingConfig."""

    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0, description="used when use_gpu")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources per worker, e.g. {pool_train: 1}: workers run only "
        "on nodes that advertise them",
    )
    _resources = field_validator("resources")(check_custom_resources)


class LoraConfig(StrictModel):
    """LoRA adapters through peft: only the adapters train; ``model/`` is exported merged."""

    enabled: bool = False
    r: int = Field(16, ge=1, description="adapter rank")
    alpha: int = Field(32, ge=1, description="scaling = alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names (q_proj, v_proj, ...) or all-linear (not lm_head)"
    )

    @model_validator(mode="after")
    def _check_targets(self) -> LoraConfig:
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("lora.target_modules must name at least one module (or all-linear)")
        return self


class TrainTrackingConfig(TrackingConfig):
    """Training's tracking: the shared backends, plus Ray metrics from rank 0."""

    ray_metrics: bool = Field(
        True,
        description="export loss terms, λ, lr and tokens/s as Ray metrics gauges (Ray's "
        "Prometheus endpoint, tag run=<run_name>); one local call per value and step",
    )


class TrainConfig(StrictModel):
    """``ptr-ray train``: weighted thought-mask fine-tuning on Ray Train + DeepSpeed."""

    model: str = Field("builtin:smollm2-135m", description="HF id, local folder or builtin:NAME")
    dataset: str = Field(..., description="dataset folder of records (ptr_ray/records.py)")
    output_dir: str = Field(..., description="checkpoints, metrics.jsonl, model/; reused = resume")
    run_name: str = Field(
        "train",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        max_length=100,
        description="Ray Train run name (the dashboard's Train view, the metrics' run tag, "
        "the MLflow/W&B run) and its checkpoint folder in the storage path; another name on "
        "an existing output_dir is another run",
    )
    mode: Literal["ptr", "ift"] = Field(
        "ptr", description="ptr: thoughts + answer, PTR loss; ift: query -> answer, plain CE"
    )
    include_sft: bool = Field(True, description="train on kind=sft rows (query -> answer)")
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    max_length: int = Field(1024, ge=8, description="tokens per packed sequence")
    pack: bool = Field(True, description="pack several episodes per sequence (else pad)")
    thought_dropout: float = Field(0.0, ge=0, lt=1, description="drop each thought w.p. p")
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    seed: int = 0
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    scaling: TrainScalingConfig = Field(default_factory=TrainScalingConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    gradient_checkpointing: bool = False
    checkpoint_every: int = Field(50, ge=1, description="optimizer steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(1, ge=0, description="worker-group restarts from the last checkpoint")
    log_every: int = Field(1, ge=1)
    export: bool = Field(True, description="write model/ (bf16 safetensors) when training ends")
    export_steps: list[int] = Field(
        default_factory=list,
        description="also write models/step-<N>/ (vLLM-loadable) when training passes step N: "
        "the checkpoints an emergence curve evaluates",
    )
    progress: bool = True
    tracking: TrainTrackingConfig = Field(
        default_factory=TrainTrackingConfig,
        description="TensorBoard / MLflow / W&B logging and Ray metrics (ptr_ray/tracking.py)",
    )
    ray: RayConfig = Field(default_factory=lambda: RayConfig(num_cpus=None))
    storage_path: str | None = Field(
        None, description="Ray Train storage (shared FS or s3://); default output_dir/ray"
    )
    on_config_change: Literal["refuse", "move_aside"] = Field(
        "refuse",
        description="a rerun on an output_dir whose run had another config or dataset: refuse "
        "(one-line error naming the changed keys) or move_aside (rename the old run to "
        "<output_dir>.old-<time>, start afresh); the keys that may change on resume are "
        "ptr_ray/train/resume.py's RESUMABLE_KEYS",
    )

    @field_validator("export_steps")
    @classmethod
    def _steps(cls, v: list[int]) -> list[int]:
        if any(n < 1 for n in v):
            raise ValueError(f"export_steps must be optimizer steps >= 1, got {v}")
        return sorted(set(v))

    def inert_keys(self) -> tuple[str, ...]:
        """Top-level keys that cannot change this run's model. IFT is plain answer
        cross-entropy, so the PTR loss section is inert there: a finished IFT run is reused
        when only the loss changed (a one-factor ablation of the loss retrains PTR only)."""
        return ("loss",) if self.mode == "ift" else ()
