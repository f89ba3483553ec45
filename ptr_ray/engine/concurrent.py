"""Engines awaited one prompt at a time, with many prompts in flight: the build stages' view.

A batch stage that calls a blocking ``generate`` once per round leaves the engine idle while
the batch's slowest row finishes, while the next batch is tokenized, and between batches.
Awaiting each row's prompts on its own lets vLLM's scheduler keep the engine full: a row
that finishes early starts its next round at once, and a second batch handed to the same
actor (Ray Data's ``max_concurrent_calls_per_actor``) fills the slots the first one frees.

- vLLM: :class:`~ptr_ray.engine.vllm.AsyncVLLMEngine` is already such an engine;
- transformers (tests, machines without vLLM): :class:`ThreadedEngine` runs the blocking
  engine on one worker thread, one prompt after another, so the event loop stays free.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from ptr_ray.config import EngineConfig, SamplingConfig
from ptr_ray.engine.base import Engine, Generation, Prompt, checked_prompt_ids


class ConcurrentEngine(Protocol):
    tokenizer: Any
    max_model_len: int

    @property
    def errored(self) -> bool:
        """The engine is dead for good (its process is gone): replace it."""
        ...

    async def encode(self, conversation: Prompt) -> list[int]: ...

    async def complete(self, prompt: Prompt, sampling: SamplingConfig) -> Generation: ...

    def close(self) -> None: ...


class ThreadedEngine:
    """A blocking :class:`~ptr_ray.engine.base.Engine` behind the :class:`ConcurrentEngine`
    interface. One worker thread does the engine's tokenizing and generating, in call order:
    a Hugging Face model and fast tokenizer are not safe to use from several threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.max_model_len = int(engine.max_model_len)  # type: ignore[attr-defined]
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptr-engine")

    @property
    def errored(self) -> bool:
        return False  # in-process: an exception fails its call, never the engine

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def encode(self, conversation: Prompt) -> list[int]:
        return await self._run(checked_prompt_ids, self.tokenizer, conversation, self.max_model_len)

    async def complete(self, prompt: Prompt, sampling: SamplingConfig) -> Generation:
        (gen,) = await self._run(self.engine.generate, [prompt], sampling)
        return gen

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.engine.close()


def make_concurrent_engine(cfg: EngineConfig, role: str = "engine") -> ConcurrentEngine:
    """The config's engine as a :class:`ConcurrentEngine` (``role`` labels vLLM's metrics)."""
    if cfg.backend == "vllm":
        from ptr_ray.engine.vllm import AsyncVLLMEngine

        return AsyncVLLMEngine(cfg, role=role)
    from ptr_ray.engine.hf import HFEngine

    return ThreadedEngine(HFEngine(cfg))
