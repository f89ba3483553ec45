"""``ptr-ray experiment``'s config: the paper's comparison with its protocol fixed up front.

Base model + refine instruction (the *Prompt* baseline, method ``base``), IFT and PTR, each
evaluated over N refinement rounds, on benchmarks and on a held-out split of the built dataset
that training never sees. The hypotheses, their tests, alpha and the multiplicity correction
are part of the config, so they are written down (``config.yaml``) before any number exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ptr_ray.config.base import StrictModel, one_line_error
from ptr_ray.config.common import RayConfig
from ptr_ray.config.datagen import BuildConfig
from ptr_ray.config.eval import EvalConfig
from ptr_ray.config.train import TrainConfig
from ptr_ray.prompts import DEFAULT_REFINE_INSTRUCTION

__all__ = [
    "ArmConfig",
    "EmergenceConfig",
    "ExperimentConfig",
    "HeldoutConfig",
    "HypothesisConfig",
    "default_hypotheses",
]

Method = Literal["base", "ptr", "ift"]
Mode = Literal["ptr", "ift"]
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class ArmConfig(StrictModel):
    """One side of a comparison: a method's answers in one refinement round."""

    method: Method
    round: int = Field(..., ge=1)


class HypothesisConfig(StrictModel):
    """A claim tested on paired items: A ``relation`` B (see ptr_ray/experiment/analysis.py).

    ``greater``: one-sided test of A > B, *supported* if significant. ``at_most`` (A <= B):
    one-sided test of A > B, *refuted* if significant, else *not refuted*. ``at_least``
    (A >= B): one-sided test of B > A, *refuted* if significant, else *not refuted*.
    """

    id: str = Field(..., pattern=_NAME)
    statement: str = Field(..., min_length=1)
    a: ArmConfig
    b: ArmConfig
    relation: Literal["greater", "at_most", "at_least"]
    task: str | list[str] = Field("all", description="task name, list of names, or all")
    metric: str | None = Field(None, description="None = each task's headline metric")

    @model_validator(mode="after")
    def _check(self) -> HypothesisConfig:
        if self.a == self.b:
            raise ValueError(f"hypothesis {self.id}: a and b are the same arm")
        if isinstance(self.task, list) and not self.task:
            raise ValueError(f"hypothesis {self.id}: task list is empty (use all)")
        return self


def default_hypotheses() -> list[HypothesisConfig]:
    """The paper's claims (Table 1 / Figure 3) as tests on round 3 vs round 1."""

    def h(
        id_: str, text: str, a: tuple[str, int], b: tuple[str, int], rel: str
    ) -> HypothesisConfig:
        return HypothesisConfig.model_validate(
            {
                "id": id_,
                "statement": text,
                "relation": rel,
                "a": {"method": a[0], "round": a[1]},
                "b": {"method": b[0], "round": b[1]},
            }
        )

    return [
        h(
            "H1",
            "PTR improves with refinement: round 3 beats round 1",
            ("ptr", 3),
            ("ptr", 1),
            "greater",
        ),
        h(
            "H2",
            "The base model does not improve from the refine instruction alone",
            ("base", 3),
            ("base", 1),
            "at_most",
        ),
        h(
            "H3",
            "Plain answer fine-tuning (IFT) does not improve with refinement",
            ("ift", 3),
            ("ift", 1),
            "at_most",
        ),
        h(
            "H4",
            "After refinement PTR is at least as good as IFT",
            ("ptr", 3),
            ("ift", 3),
            "at_least",
        ),
    ]


class HeldoutConfig(StrictModel):
    """Items of the built dataset kept away from training and evaluated like a task.

    The held-out task asks each item's query; its reference is the strong model's answer and
    the score is the similarity of the model's answer to it (continuous), round by round.
    """

    enabled: bool = True
    fraction: float | None = Field(0.2, gt=0, lt=1, description="share of records held out")
    n: int | None = Field(None, ge=1, description="hold out exactly n records (wins over fraction)")
    seed: int = 0
    task: str = Field("heldout", pattern=_NAME, description="task name in the report")


class EmergenceConfig(StrictModel):
    """Evaluate the PTR run's models at these training steps round by round (the paper's
    Figure 2: when does refinement appear?). The run exports ``models/step-<N>/`` for each
    step (``TrainConfig.export_steps``); the base model is step 0."""

    enabled: bool = False
    steps: list[int] = Field(default_factory=list, description="optimizer steps to evaluate")
    mode: Mode = Field("ptr", description="which training run's steps to evaluate")
    tasks: list[str] | None = Field(None, description="tasks to evaluate (None = every task)")
    limit: int | None = Field(None, ge=1, description="items per task (None = eval.limit)")

    @field_validator("steps")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(s < 1 for s in v):
            raise ValueError("steps must be >= 1")
        return sorted(set(v))

    @model_validator(mode="after")
    def _steps_when_enabled(self) -> EmergenceConfig:
        if self.enabled and not self.steps:
            raise ValueError("emergence.enabled needs emergence.steps (training steps to export)")
        return self


def _default_modes() -> list[Mode]:
    return ["ptr", "ift"]


class ExperimentConfig(StrictModel):
    """``ptr-ray experiment``: build (or reuse) data, train PTR and IFT, evaluate base / IFT /
    PTR with each refine instruction, test the hypotheses, write the report."""

    output_dir: str = Field("runs/experiment", description="reused: finished stages are skipped")
    base_model: str = Field(
        "builtin:smollm2-135m", description="model fine-tuned and the Prompt baseline"
    )
    build: BuildConfig = Field(default_factory=BuildConfig)
    dataset: str | None = Field(None, description="an existing built dataset folder (skips build)")
    heldout: HeldoutConfig = Field(default_factory=HeldoutConfig)
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="TrainConfig keys shared by the PTR and IFT runs "
        "(model/dataset/output_dir/mode are set by the experiment)",
    )
    modes: list[Mode] = Field(default_factory=_default_modes, min_length=1)
    eval: EvalConfig = Field(
        default_factory=EvalConfig,
        description="methods and refine instruction are set by the experiment",
    )
    refine_instructions: list[str] = Field(
        default_factory=lambda: [DEFAULT_REFINE_INSTRUCTION],
        min_length=1,
        description="the first is the primary one (training, verdicts); others: robustness",
    )
    robustness_tasks: list[str] | None = Field(
        None,
        description="tasks evaluated with the extra refine instructions (None = every task); "
        "the prompt-robustness table is descriptive, so it may use fewer tasks",
    )
    robustness_limit: int | None = Field(
        None, ge=1, description="items per task for the extra instructions (None = eval.limit)"
    )
    hypotheses: list[HypothesisConfig] = Field(default_factory=default_hypotheses)
    alpha: float = Field(0.05, gt=0, lt=1)
    correction: Literal["holm", "none"] = "holm"
    n_boot: int = Field(10000, ge=100, description="bootstrap resamples / permutation draws")
    continuous_test: Literal["bootstrap", "sign_flip"] = Field(
        "bootstrap",
        description="p-value of continuous scores: paired bootstrap or sign-flip permutation",
    )
    synthetic_tasks: list[str] = Field(
        default_factory=list,
        description="tasks labelled synthetic in every table (the held-out task always is)",
    )
    seed: int = 0
    emergence: EmergenceConfig = Field(default_factory=EmergenceConfig)
    ray: RayConfig = Field(default_factory=lambda: RayConfig(num_cpus=8))

    @property
    def methods(self) -> list[str]:
        """The evaluated methods: the Prompt baseline, then each trained mode."""
        return ["base", *self.modes]

    @property
    def task_names(self) -> list[str]:
        names = list(self.eval.tasks) + [
            t.name for t in self.eval.custom_tasks if t.name not in self.eval.tasks
        ]
        return names + ([self.heldout.task] if self.heldout.enabled else [])

    @property
    def synthetic(self) -> set[str]:
        """Tasks whose items or references are synthetic (the held-out task always is)."""
        held = {self.heldout.task} if self.heldout.enabled else set()
        return set(self.synthetic_tasks) | held

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        for key in ("model", "dataset", "output_dir", "mode"):
            if key in self.train:
                raise ValueError(f"train.{key} is set by the experiment; remove it")
        # Keys the experiment sets: refused unless left at their defaults (which is also what
        # a saved config.yaml holds, so a saved config loads again).
        default = EvalConfig()
        if self.eval.methods != default.methods:
            raise ValueError("eval.methods is set by the experiment (base + modes); remove it")
        if self.eval.prompt.refine_instruction != default.prompt.refine_instruction:
            raise ValueError("eval.prompt.refine_instruction: use refine_instructions instead")
        prompt = self.train.get("prompt")
        given = prompt.get("refine_instruction") if isinstance(prompt, dict) else None
        if given is not None and given != self.refine_instructions[0]:
            raise ValueError(
                "train.prompt.refine_instruction: training uses the first of "
                "refine_instructions; set it there"
            )
        if any(not s.strip() for s in self.refine_instructions):
            raise ValueError("refine_instructions must not hold an empty instruction")
        if len(set(self.refine_instructions)) != len(self.refine_instructions):
            raise ValueError("refine_instructions lists an instruction twice")
        if len(set(self.modes)) != len(self.modes):
            raise ValueError(f"modes lists a mode twice: {self.modes}")
        if self.heldout.enabled and self.heldout.task in (
            list(self.eval.tasks) + [t.name for t in self.eval.custom_tasks]
        ):
            raise ValueError(f"heldout.task {self.heldout.task!r} clashes with an eval task")
        self._check_hypotheses()
        if self.emergence.enabled and self.emergence.mode not in self.modes:
            raise ValueError(f"emergence.mode {self.emergence.mode!r} is not among modes")
        unknown_em = [t for t in self.emergence.tasks or [] if t not in self.task_names]
        if unknown_em:
            raise ValueError(f"emergence.tasks names unknown task(s) {unknown_em}")
        unknown_rob = [t for t in self.robustness_tasks or [] if t not in self.task_names]
        if unknown_rob:
            raise ValueError(f"robustness_tasks names unknown task(s) {unknown_rob}")
        unknown = [t for t in self.synthetic_tasks if t not in self.task_names]
        if unknown:
            raise ValueError(f"synthetic_tasks names unknown task(s) {unknown}")
        self.train_config("ptr")  # validate now, before any stage starts
        return self

    def _check_hypotheses(self) -> None:
        ids = [h.id for h in self.hypotheses]
        if len(set(ids)) != len(ids):
            raise ValueError(f"hypothesis ids must be unique: {ids}")
        tasks = self.task_names
        for h in self.hypotheses:
            for arm in (h.a, h.b):
                if arm.method not in self.methods:
                    raise ValueError(
                        f"hypothesis {h.id}: method {arm.method!r} is not evaluated "
                        f"(methods: {', '.join(self.methods)}; see modes)"
                    )
                if arm.round > self.eval.rounds:
                    raise ValueError(
                        f"hypothesis {h.id}: round {arm.round} > eval.rounds {self.eval.rounds}"
                    )
            named = [] if h.task == "all" else [h.task] if isinstance(h.task, str) else h.task
            unknown = [t for t in named if t not in tasks]
            if unknown:
                raise ValueError(
                    f"hypothesis {h.id}: unknown task(s) {unknown}; tasks: {', '.join(tasks)}"
                )

    def train_config(self, mode: str) -> TrainConfig:
        """The TrainConfig of one run: shared keys + the experiment's links. Both runs read the
        training split (never the held-out items) and use the primary refine instruction."""
        root = Path(self.output_dir)
        prompt = {
            **dict(self.train.get("prompt") or {}),
            "refine_instruction": self.refine_instructions[0],
        }
        try:
            return TrainConfig.model_validate(
                {
                    **self.train,
                    "model": self.base_model,
                    "mode": mode,
                    "prompt": prompt,
                    "dataset": str(root / "dataset-train"),
                    "output_dir": str(root / f"train-{mode}"),
                }
            )
        except ValidationError as e:
            raise ValueError(one_line_error(e, prefix="train.")) from None
