"""What every engine is: the protocol, its result types, the prompt check, the factory.

Every stage that generates (dataset construction, evaluation, serving, the prompt baseline)
speaks to an :class:`Engine`: chat conversations in, ``n`` completions per conversation out,
with token counts, finish reasons and how many prompt tokens the prefix cache served.
Conversations are rendered by :mod:`ptr_ray.prompts` and handed to the engine as token ids,
so the engine never applies a chat template of its own (no train/serve skew).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from ptr_ray import prompts
from ptr_ray.config import EngineConfig, SamplingConfig
from ptr_ray.errors import PtrRayValueError

log = logging.getLogger(__name__)


@dataclass
class Completion:
    text: str
    tokens: int
    finish_reason: str  # "stop" | "length"


@dataclass
class Generation:
    """The completions of one conversation."""

    completions: list[Completion]
    prompt_tokens: int
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    latency_s: float = 0.0

    @property
    def text(self) -> str:
        return self.completions[0].text


@dataclass(frozen=True)
class TokenPrompt:
    """A prompt its caller already rendered and tokenized (and length-checked), so the engine
    takes the ids as they are instead of tokenizing the conversation a second time."""

    ids: list[int]


Prompt = Sequence[prompts.Message] | TokenPrompt
"""What an engine continues: a chat conversation, or its token ids."""


class Engine(Protocol):
    tokenizer: Any
    model_path: str

    def generate(
        self, conversations: Sequence[Prompt], sampling: SamplingConfig
    ) -> list[Generation]: ...

    def close(self) -> None: ...


class PromptTooLongError(PtrRayValueError):
    """A conversation that does not fit the model's context (a client error, not a crash)."""

    def __init__(self, prompt_tokens: int, max_model_len: int) -> None:
        super().__init__(
            f"prompt has {prompt_tokens} tokens, the model's context is {max_model_len}"
        )
        self.prompt_tokens = prompt_tokens
        self.max_model_len = max_model_len

    def __reduce__(self):  # keep the fields when Ray pickles the error across processes
        return (PromptTooLongError, (self.prompt_tokens, self.max_model_len))


def checked_prompt_ids(tokenizer: Any, conversation: Prompt, max_model_len: int) -> list[int]:
    """Token ids of a round prompt; PromptTooLongError when no token could be generated.

    A :class:`TokenPrompt` is taken as it is (its caller tokenized it): only its length is
    checked."""
    if isinstance(conversation, TokenPrompt):
        ids = list(conversation.ids)
    else:
        ids = prompts.encode(tokenizer, conversation, add_generation_prompt=True)
    if len(ids) >= max_model_len:
        raise PromptTooLongError(len(ids), max_model_len)
    return ids


class PromptEncoder:
    """:func:`checked_prompt_ids` for an async server, run off its event loop.

    Rendering the chat template and tokenizing a long conversation takes milliseconds of CPU per
    round; on the event loop of a serving replica that stalls every other request's token
    stream (and vLLM's own output handling, which shares the loop). One worker thread keeps
    the loop free and calls the tokenizer from one thread only: Hugging Face fast tokenizers
    raise "Already borrowed" when one instance is used from several threads at once.
    """

    def __init__(self, tokenizer: Any, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptr-encode")

    async def encode(self, conversation: Prompt) -> list[int]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, checked_prompt_ids, self.tokenizer, conversation, self.max_model_len
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def clamp_context(model_path: str, wanted: int) -> int:
    """A config's context length, capped at what the model was trained for (vLLM refuses more)."""
    from transformers import AutoConfig

    limit = getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None)
    if limit and wanted > limit:
        log.warning("max_model_len %d > the model's %d positions; using %d", wanted, limit, limit)
        return int(limit)
    return wanted


def make_engine(cfg: EngineConfig, role: str = "engine") -> Engine:
    """The engine the config asks for (the backend's heavy imports happen only now).

    ``role`` (``weak``, ``strong``, ``judge``, ...) labels a vLLM engine's metrics."""
    if cfg.backend == "vllm":
        from ptr_ray.engine.vllm import VLLMEngine

        return VLLMEngine(cfg, role=role)
    from ptr_ray.engine.hf import HFEngine

    return HFEngine(cfg)
