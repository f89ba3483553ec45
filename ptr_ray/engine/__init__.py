"""One generation interface over vLLM, with a transformers fallback for fast unit tests.

- :mod:`ptr_ray.engine.base`: the :class:`Engine` protocol, :class:`Generation` /
  :class:`Completion`, the prompt-length check and :func:`make_engine`;
- :mod:`ptr_ray.engine.vllm`: the offline and async vLLM engines and their shared mappings of
  our configs to vLLM's engine arguments and sampling parameters;
- :mod:`ptr_ray.engine.hf`: the transformers engine.

Importing this package is cheap: vLLM and torch are imported when an engine is built.
"""

from ptr_ray.engine.base import (
    Completion,
    Engine,
    Generation,
    Prompt,
    PromptEncoder,
    PromptTooLongError,
    TokenPrompt,
    checked_prompt_ids,
    clamp_context,
    make_engine,
)
from ptr_ray.engine.hf import HFEngine
from ptr_ray.engine.vllm import (
    AsyncVLLMEngine,
    VLLMEngine,
    configure_vllm_env,
    cpu_only,
    sampling_params,
    vllm_engine_kwargs,
)

__all__ = [
    "AsyncVLLMEngine",
    "Completion",
    "Engine",
    "Generation",
    "HFEngine",
    "PromptEncoder",
    "Prompt",
    "PromptTooLongError",
    "TokenPrompt",
    "VLLMEngine",
    "checked_prompt_ids",
    "clamp_context",
    "configure_vllm_env",
    "cpu_only",
    "make_engine",
    "sampling_params",
    "vllm_engine_kwargs",
]
