"""``ptr-ray run``'s config: the whole experiment (build, train PTR and IFT, evaluate) as one file.

It nests the stages' own configs rather than repeating their knobs, and only adds what links
them, so a stage run alone and the same stage inside the pipeline behave the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from ptr_ray.config.base import StrictModel, one_line_error
from ptr_ray.config.common import RayConfig
from ptr_ray.config.datagen import BuildConfig
from ptr_ray.config.eval import EvalConfig
from ptr_ray.config.train import TrainConfig

__all__ = ["PipelineConfig"]

TrainMode = Literal["ptr", "ift"]


def _both_modes() -> list[TrainMode]:
    return ["ptr", "ift"]


class PipelineConfig(StrictModel):
    """``ptr-ray run``: build a dataset, train PTR and IFT models, evaluate base / IFT / PTR.

    Stage sections are the stages' own configs; the pipeline fills in what links them (the
    dataset folder, each training run's output folder, the evaluated model sources), so a
    stage run alone and the same stage inside the pipeline behave the same.
    """

    output_dir: str = Field("runs/pipeline", description="reused: finished stages are skipped")
    base_model: str = Field(
        "builtin:smollm2-135m", description="model fine-tuned and the Prompt baseline"
    )
    modes: list[TrainMode] = Field(default_factory=_both_modes, min_length=1)
    build: BuildConfig = Field(default_factory=BuildConfig)
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="TrainConfig keys shared by the PTR and IFT runs (model/dataset/output_dir/mode are set by the pipeline)",
    )
    eval: EvalConfig = Field(
        default_factory=EvalConfig, description="methods are set by the pipeline"
    )
    ray: RayConfig = Field(default_factory=lambda: RayConfig(num_cpus=8))

    @model_validator(mode="after")
    def _check_train(self) -> PipelineConfig:
        for key in ("model", "dataset", "output_dir", "mode"):
            if key in self.train:
                raise ValueError(f"train.{key} is set by the pipeline; remove it")
        self.train_config("ptr")  # validate now, before any stage starts
        return self

    def train_config(self, mode: str) -> TrainConfig:
        """The TrainConfig of the ``mode`` run: the shared keys plus the pipeline's links."""
        root = Path(self.output_dir)
        try:
            return TrainConfig.model_validate(
                {
                    **self.train,
                    "model": self.base_model,
                    "mode": mode,
                    "dataset": str(root / "dataset"),
                    "output_dir": str(root / f"train-{mode}"),
                }
            )
        except ValidationError as e:
            raise ValueError(one_line_error(e, prefix="train.")) from None
