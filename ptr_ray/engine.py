"""One generation interface over vLLM, with a transformers fallback for fast unit tests.

Every stage that generates (dataset construction, evaluation, serving, the prompt baseline)
speaks to an :class:`Engine`: chat conversations in, ``n`` completions per conversation out,
with token counts, finish reasons and how many prompt tokens the prefix cache served.
Conversations are rendered by :mod:`ptr_ray.prompts` and handed to the engine as token ids,
so the engine never applies a chat template of its own (no train/serve skew).
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ptr_ray import prompts
from ptr_ray.config import EngineConfig, SamplingConfig
from ptr_ray.models import resolve_model

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


class Engine(Protocol):
    tokenizer: Any
    model_path: str

    def generate(
        self, conversations: Sequence[Sequence[prompts.Message]], sampling: SamplingConfig
    ) -> list[Generation]: ...

    def close(self) -> None: ...


def cpu_only() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch always present in practice
        return True


def configure_vllm_env(cfg: EngineConfig) -> None:
    """Environment vLLM needs before import: no telemetry everywhere; KV cache + loopback on CPU.

    Values a user already exported win (setdefault), so a cluster can override them.
    """
    for key, val in {
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "TOKENIZERS_PARALLELISM": "false",
        # vLLM's per-engine INFO lines drown the stages' own progress; export INFO to see them.
        "VLLM_LOGGING_LEVEL": "WARNING",
    }.items():
        os.environ.setdefault(key, val)
    if cpu_only():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(cfg.kv_cache_gib))))
        os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def clamp_context(model_path: str, wanted: int) -> int:
    """A config's context length, capped at what the model was trained for (vLLM refuses more)."""
    from transformers import AutoConfig

    limit = getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None)
    if limit and wanted > limit:
        log.warning("max_model_len %d > the model's %d positions; using %d", wanted, limit, limit)
        return int(limit)
    return wanted


def vllm_engine_kwargs(cfg: EngineConfig, model_path: str, **more: Any) -> dict[str, Any]:
    """vLLM engine arguments from an EngineConfig: one mapping for the offline and async engines."""
    kwargs: dict[str, Any] = dict(
        model=model_path,
        dtype=cfg.dtype,
        enable_prefix_caching=cfg.enable_prefix_caching,
        enforce_eager=cfg.enforce_eager,
        tensor_parallel_size=cfg.tensor_parallel_size,
        seed=cfg.seed,
        max_num_seqs=cfg.max_num_seqs,
        **more,
    )
    if cfg.max_model_len:
        kwargs["max_model_len"] = clamp_context(model_path, cfg.max_model_len)
    if not cpu_only():
        kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    kwargs.update(cfg.extra)
    return kwargs


def encode_conversation(tokenizer: Any, conversation: Sequence[prompts.Message]) -> list[int]:
    return prompts.encode(tokenizer, conversation, add_generation_prompt=True)


class PromptTooLongError(ValueError):
    """A conversation that does not fit the model's context (a client error, not a crash)."""

    def __init__(self, prompt_tokens: int, max_model_len: int) -> None:
        super().__init__(
            f"prompt has {prompt_tokens} tokens, the model's context is {max_model_len}"
        )
        self.prompt_tokens = prompt_tokens
        self.max_model_len = max_model_len

    def __reduce__(self):  # keep the fields when Ray pickles the error across processes
        return (PromptTooLongError, (self.prompt_tokens, self.max_model_len))


def checked_prompt_ids(tokenizer: Any, conversation: Sequence[prompts.Message],
                       max_model_len: int) -> list[int]:
    """Token ids of a round prompt; PromptTooLongError when no token could be generated."""
    ids = encode_conversation(tokenizer, conversation)
    if len(ids) >= max_model_len:
        raise PromptTooLongError(len(ids), max_model_len)
    return ids


class VLLMEngine:
    """vLLM's offline ``LLM`` with prefix caching; fed token ids rendered by prompts.py."""

    def __init__(self, cfg: EngineConfig) -> None:
        configure_vllm_env(cfg)
        t0 = time.time()
        import vllm  # noqa: WPS433 - heavy import deferred until an engine is really wanted

        self.cfg = cfg
        self.model_path = resolve_model(cfg.model)
        self.llm = vllm.LLM(**vllm_engine_kwargs(cfg, self.model_path))
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        log.info("vLLM engine for %s ready in %.1fs", cfg.model, time.time() - t0)

    def generate(
        self, conversations: Sequence[Sequence[prompts.Message]], sampling: SamplingConfig
    ) -> list[Generation]:
        import vllm

        params = vllm.SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else -1,
            max_tokens=sampling.max_tokens,
            stop=list(sampling.stop) or None,
            seed=sampling.seed,
        )
        token_prompts = []
        for conv in conversations:
            ids = checked_prompt_ids(self.tokenizer, conv, self.max_model_len)
            token_prompts.append({"prompt_token_ids": ids})
        t0 = time.time()
        outs = self.llm.generate(token_prompts, sampling_params=params, use_tqdm=False)
        dt = time.time() - t0
        return [
            Generation(
                completions=[
                    Completion(c.text, len(c.token_ids), _finish(c.finish_reason)) for c in o.outputs
                ],
                prompt_tokens=len(o.prompt_token_ids or []),
                cached_tokens=int(getattr(o, "num_cached_tokens", 0) or 0),
                latency_s=dt,
            )
            for o in outs
        ]

    def close(self) -> None:
        """Stop the engine-core process and free its memory (several engines in one job)."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # pragma: no cover - best effort on teardown
            log.debug("engine shutdown raised", exc_info=True)
        self.llm = None
        gc.collect()


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


class HFEngine:
    """transformers ``generate``: same interface, no vLLM; for unit tests and the benchmark."""

    def __init__(self, cfg: EngineConfig) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        self.model_path = resolve_model(cfg.model)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        dtype = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16,
                 "float32": torch.float32}[cfg.dtype]
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype)
        self.model.eval()
        self.max_model_len = clamp_context(self.model_path, cfg.max_model_len or 10**9)

    def generate(
        self, conversations: Sequence[Sequence[prompts.Message]], sampling: SamplingConfig
    ) -> list[Generation]:
        import torch

        results = []
        eos = self._eos_ids()
        for conv in conversations:
            ids = checked_prompt_ids(self.tokenizer, conv, self.max_model_len)
            t0 = time.time()
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            inp = torch.tensor([ids])
            kwargs: dict[str, Any] = dict(
                max_new_tokens=min(sampling.max_tokens, self.max_model_len - len(ids)),
                num_return_sequences=sampling.n,
                eos_token_id=eos,
                pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos[0],
            )
            if sampling.temperature > 0:
                kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                              top_k=sampling.top_k or None)
            else:
                kwargs.update(do_sample=False)
            with torch.no_grad():
                out = self.model.generate(inp, attention_mask=torch.ones_like(inp), **kwargs)
            comps = []
            for row in out[:, len(ids):].tolist():
                n_tok, reason = len(row), "length"
                for i, t in enumerate(row):
                    if t in eos:
                        n_tok, reason = i + 1, "stop"
                        break
                text = self.tokenizer.decode(row[: n_tok if reason == "length" else n_tok - 1],
                                             skip_special_tokens=True)
                text, hit = _apply_stop(text, sampling.stop)
                comps.append(Completion(text, n_tok, "stop" if hit else reason))
            results.append(Generation(comps, prompt_tokens=len(ids), latency_s=time.time() - t0))
        return results

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        if ids is None:
            ids = self.tokenizer.eos_token_id
        return list(ids) if isinstance(ids, (list, tuple)) else [ids]

    def close(self) -> None:
        self.model = None
        gc.collect()


def _apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def make_engine(cfg: EngineConfig) -> Engine:
    """The engine the config asks for."""
    return VLLMEngine(cfg) if cfg.backend == "vllm" else HFEngine(cfg)


# --------------------------------------------------------------------------------------------
# Async engine for serving (appended by the serve stage)
# --------------------------------------------------------------------------------------------


class AsyncVLLMEngine:
    """vLLM's ``AsyncLLM`` with prefix caching, for a server that streams and cancels.

    Many requests share one engine and are batched by vLLM's scheduler. Prompts are token ids
    rendered by :mod:`ptr_ray.prompts` (the same format as training and evaluation), output
    arrives as token deltas, and a request whose consumer goes away is aborted in the engine,
    so a disconnected client stops costing compute at once.
    """

    def __init__(self, cfg: EngineConfig) -> None:
        configure_vllm_env(cfg)
        t0 = time.time()
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.cfg = cfg
        self.model_path = resolve_model(cfg.model)
        kwargs = vllm_engine_kwargs(cfg, self.model_path, disable_log_stats=True)
        self.llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = int(self.llm.model_config.max_model_len)
        log.info("async vLLM engine for %s ready in %.1fs", cfg.model, time.time() - t0)

    def prompt_ids(self, conversation: Sequence[prompts.Message]) -> list[int]:
        """Token ids of a round prompt; PromptTooLongError when no token could be generated."""
        return checked_prompt_ids(self.tokenizer, conversation, self.max_model_len)

    async def stream(
        self,
        conversation: Sequence[prompts.Message],
        sampling: SamplingConfig,
        request_id: str | None = None,
    ) -> Any:
        """Async iterator: text deltas (``str``) as tokens arrive, then one :class:`Generation`.

        ``max_tokens`` is clipped to the room left in the context. Closing the iterator early
        (client gone, task cancelled) aborts the request inside vLLM.
        """
        import uuid

        import vllm
        from vllm.sampling_params import RequestOutputKind

        ids = self.prompt_ids(conversation)
        params = vllm.SamplingParams(
            n=1,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else -1,
            max_tokens=max(1, min(sampling.max_tokens, self.max_model_len - len(ids))),
            stop=list(sampling.stop) or None,
            seed=sampling.seed,
            output_kind=RequestOutputKind.DELTA,
        )
        rid = request_id or uuid.uuid4().hex
        t0 = time.time()
        n_tokens, reason, cached, parts = 0, None, 0, []
        outputs = self.llm.generate({"prompt_token_ids": ids}, params, rid)
        try:
            async for out in outputs:
                cached = max(cached, int(out.num_cached_tokens or 0))
                comp = out.outputs[0]
                n_tokens += len(comp.token_ids)
                if comp.finish_reason is not None:
                    reason = comp.finish_reason
                if comp.text:
                    parts.append(comp.text)
                    yield comp.text
        finally:
            # Closing vLLM's generator aborts the request in the engine right now, instead of
            # whenever the garbage collector finalizes it.
            await outputs.aclose()
        yield Generation(
            completions=[Completion("".join(parts), n_tokens, _finish(reason))],
            prompt_tokens=len(ids),
            cached_tokens=cached,
            latency_s=time.time() - t0,
        )

    async def generate(
        self,
        conversation: Sequence[prompts.Message],
        sampling: SamplingConfig,
        request_id: str | None = None,
    ) -> Generation:
        """One completion, awaited whole (what :func:`ptr_ray.refine.arefine` calls per round)."""
        result: Generation | None = None
        async for item in self.stream(conversation, sampling, request_id):
            if isinstance(item, Generation):
                result = item
        assert result is not None
        return result

    async def abort(self, request_id: str) -> None:
        await self.llm.abort(request_id)

    async def check_health(self) -> None:
        """Raises when the engine-core process is dead (Serve then replaces the replica)."""
        await self.llm.check_health()

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        try:
            llm.shutdown()
        except Exception:  # pragma: no cover - best effort on teardown
            log.debug("async engine shutdown raised", exc_info=True)
        self.llm = None
        gc.collect()
