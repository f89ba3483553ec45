"""The methods an evaluation compares, and checks that their model sources resolve.

The paper compares, round by round:

- **Prompt** (``base``): the untrained model; its rounds 2..N come from the refine
  instruction alone. This is the baseline that shows whether refining needs training at all.
- **IFT** (``ift``): the model fine-tuned on the same data as plain instruction following
  (the final answers only, no thoughts): training without learning *how to refine*.
- **PTR** (``ptr``): the model fine-tuned with progressive thought refinement.

All three run through the same loop (:func:`ptr_ray.refine.refine_batch`) with the same
prompts; they differ only in the model source, so each is one :class:`EvalMethodConfig`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ptr_ray import models
from ptr_ray.config import ConfigError, EngineConfig, EvalConfig, EvalMethodConfig
from ptr_ray.errors import PtrRayValueError


class ModelCheckError(PtrRayValueError):
    """A method's model source that does not resolve; one line, raised before any work."""


def standard_methods(
    base: str, ift: str | None = None, ptr: str | None = None
) -> list[EvalMethodConfig]:
    """The paper's comparison: base model + refine instruction, then IFT and PTR if given."""
    out = [EvalMethodConfig(name="base", model=base)]
    if ift:
        out.append(EvalMethodConfig(name="ift", model=ift))
    if ptr:
        out.append(EvalMethodConfig(name="ptr", model=ptr))
    return out


def method_engine_config(cfg: EvalConfig, method: EvalMethodConfig) -> EngineConfig:
    """The shared engine settings with the method's overrides and model applied."""
    data = cfg.engine.model_dump()
    data.update(method.engine)
    data["model"] = method.model
    try:
        return EngineConfig.model_validate(data)
    except Exception as e:  # pydantic ValidationError -> one line naming the key
        from pydantic import ValidationError

        if isinstance(e, ValidationError):
            first = e.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"method {method.name!r}: engine.{key}: {first['msg']}") from None
        raise


def check_model_source(source: str) -> None:
    """Fail fast (no weights loaded, no conversion) if ``source`` cannot be a model.

    builtin:NAME must be known and its package installed; a folder must hold config.json; a
    hub id must be in the local Hugging Face cache or, when the hub may be used, exist there.
    """
    try:
        if source.startswith(models.BUILTIN_PREFIX):
            name = source[len(models.BUILTIN_PREFIX) :]
            if name not in models.BUILTINS:
                raise models.ModelSourceError(
                    f"unknown builtin model {name!r}; known: {', '.join(sorted(models.BUILTINS))}"
                )
            if not models.is_prepared(name):
                models.chunk_paths(models.BUILTINS[name])
            return
        resolved = models.resolve_model(source)
    except models.ModelSourceError as e:
        raise ModelCheckError(f"model source {source!r} does not resolve: {e}") from None
    if Path(resolved).is_dir():
        return
    _check_hub_id(source)


def _check_hub_id(repo: str) -> None:
    try:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(repo)
        cached = try_to_load_from_cache(repo, "config.json")
        if isinstance(cached, str):
            return
    except Exception as e:
        raise ModelCheckError(
            f"model source {repo!r} is not a builtin:NAME, an existing folder, nor a valid hub id"
            f" ({type(e).__name__})"
        ) from None
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ModelCheckError(
            f"model source {repo!r} is not a local folder, not a builtin, and not in the "
            "Hugging Face cache (HF_HUB_OFFLINE is set)"
        )
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(repo, timeout=10)
    except Exception as e:
        raise ModelCheckError(
            f"model source {repo!r} is not a builtin:NAME or an existing folder, and the "
            f"Hugging Face hub does not serve it from here ({type(e).__name__})"
        ) from None


def check_methods(cfg: EvalConfig) -> list[EngineConfig]:
    """Unique names, valid engine overrides, resolvable sources: one line on the first error."""
    names = [m.name for m in cfg.methods]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"method names must be unique; repeated: {', '.join(dup)}")
    engines = [method_engine_config(cfg, m) for m in cfg.methods]
    for m in cfg.methods:
        check_model_source(m.model)
    return engines


__all__ = [
    "ModelCheckError",
    "check_methods",
    "check_model_source",
    "method_engine_config",
    "standard_methods",
]
