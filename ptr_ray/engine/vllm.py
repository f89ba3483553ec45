"""The vLLM engines: offline ``LLM`` for batches, ``AsyncLLM`` for a server that streams.

Both take the same :class:`~ptr_ray.config.EngineConfig` (one mapping to vLLM's engine
arguments) and the same :class:`~ptr_ray.config.SamplingConfig` (one mapping to vLLM's
``SamplingParams``), with prefix caching on and prompts as token ids. ``vllm`` itself is
imported only when an engine is built (the import alone takes seconds).
"""

from __future__ import annotations

import gc
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from ptr_ray.config import EngineConfig, SamplingConfig
from ptr_ray.engine.base import (
    Completion,
    Generation,
    Prompt,
    PromptEncoder,
    checked_prompt_ids,
    clamp_context,
)
from ptr_ray.engine.vllm_metrics import (
    check_role,
    install_offline,
    ray_metrics_ready,
    release_gauges,
    role_stat_logger,
)
from ptr_ray.models import resolve_model
from ptr_ray.runtime_env import apply_env

log = logging.getLogger(__name__)


def cpu_only() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch always present in practice
        return True


def configure_vllm_env(cfg: EngineConfig) -> None:
    """Environment vLLM reads at import: ptr_ray.runtime_env's table, plus the KV cache on CPU."""
    cpu = cpu_only()
    kv = {"VLLM_CPU_KVCACHE_SPACE": str(max(1, round(cfg.kv_cache_gib)))} if cpu else None
    apply_env(kv, cpu=cpu)


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


def exports_metrics(cfg: EngineConfig) -> bool:
    """Does this engine record vLLM's stats as Ray metrics? ``cfg.metrics`` and inside Ray (a
    worker, a Serve replica, a driver after ``ray.init``); elsewhere there is no endpoint."""
    return cfg.metrics and ray_metrics_ready()


def metrics_kwargs(cfg: EngineConfig, export: bool) -> dict[str, Any]:
    """Engine arguments for stats: vLLM computes them only with ``disable_log_stats=False``
    (or custom loggers), and names the model in its series by ``served_model_name``, here the
    config's spelling (``builtin:smollm2-135m``) rather than a resolved cache path."""
    return {"disable_log_stats": False, "served_model_name": cfg.model} if export else {}


def sampling_params(sampling: SamplingConfig, **overrides: Any) -> Any:
    """vLLM ``SamplingParams`` from a SamplingConfig: one mapping for both engines.

    ``top_k: 0`` (ours: no top-k) becomes vLLM's -1 (top-k disabled); an empty stop list is
    None. ``overrides`` are SamplingParams fields an engine sets itself (the async engine's
    ``n=1``, clipped ``max_tokens`` and delta output).
    """
    import vllm

    kwargs: dict[str, Any] = dict(
        n=sampling.n,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k if sampling.top_k > 0 else -1,
        max_tokens=sampling.max_tokens,
        stop=list(sampling.stop) or None,
        seed=sampling.seed,
    )
    kwargs.update(overrides)
    return vllm.SamplingParams(**kwargs)


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


class VLLMEngine:
    """vLLM's offline ``LLM`` with prefix caching; fed token ids rendered by prompts.py.

    ``role`` labels its stats on Ray's metrics endpoint (``weak``, ``strong``, ``judge``, ...;
    :mod:`ptr_ray.engine.vllm_metrics`); they are exported when ``cfg.metrics`` is on and the
    engine runs inside Ray.
    """

    def __init__(self, cfg: EngineConfig, role: str = "engine") -> None:
        configure_vllm_env(cfg)
        t0 = time.time()
        import vllm  # noqa: WPS433 - heavy import deferred until an engine is really wanted

        self.cfg = cfg
        self.role = check_role(role)
        self.model_path = resolve_model(cfg.model)
        export = exports_metrics(cfg)
        self.llm = vllm.LLM(
            **vllm_engine_kwargs(cfg, self.model_path, **metrics_kwargs(cfg, export))
        )
        # LLM takes no stat loggers: its default ones are swapped for the Ray one (if stats on)
        self.exports_metrics = export and install_offline(self.llm, self.role)
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        log.info("vLLM engine for %s ready in %.1fs", cfg.model, time.time() - t0)

    def generate(
        self, conversations: Sequence[Prompt], sampling: SamplingConfig
    ) -> list[Generation]:
        params = sampling_params(sampling)
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
                    Completion(c.text, len(c.token_ids), _finish(c.finish_reason))
                    for c in o.outputs
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
        release_gauges(self.role)
        gc.collect()


class AsyncVLLMEngine:
    """vLLM's ``AsyncLLM`` with prefix caching, for a server that streams and cancels.

    Many requests share one engine and are batched by vLLM's scheduler. Prompts are token ids
    rendered by :mod:`ptr_ray.prompts` (the same format as training and evaluation), output
    arrives as token deltas, and a request whose consumer goes away is aborted in the engine,
    so a disconnected client stops costing compute at once.
    """

    def __init__(self, cfg: EngineConfig, role: str = "serve") -> None:
        configure_vllm_env(cfg)
        t0 = time.time()
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.cfg = cfg
        self.role = check_role(role)
        self.model_path = resolve_model(cfg.model)
        export = exports_metrics(cfg)
        # With stat loggers given, AsyncLLM computes stats but adds none of its default
        # loggers (disable_log_stats=True keeps the periodic log line away).
        more: dict[str, Any] = {"served_model_name": cfg.model} if export else {}
        kwargs = vllm_engine_kwargs(cfg, self.model_path, disable_log_stats=True, **more)
        loggers = [role_stat_logger(self.role)] if export else None
        self.exports_metrics = export
        self.llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs), stat_loggers=loggers)
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = int(self.llm.model_config.max_model_len)
        self.encoder = PromptEncoder(self.tokenizer, self.max_model_len)
        log.info("async vLLM engine for %s ready in %.1fs", cfg.model, time.time() - t0)

    async def stream(
        self,
        conversation: Prompt,
        sampling: SamplingConfig,
        request_id: str | None = None,
    ) -> Any:
        """Async iterator: text deltas (``str``) as tokens arrive, then one :class:`Generation`.

        ``max_tokens`` is clipped to the room left in the context. Closing the iterator early
        (client gone, task cancelled) aborts the request inside vLLM. The prompt is rendered
        and tokenized off the event loop (:class:`~ptr_ray.engine.base.PromptEncoder`).
        """
        from vllm.sampling_params import RequestOutputKind

        ids = await self.encoder.encode(conversation)
        params = sampling_params(
            sampling,
            n=1,
            max_tokens=max(1, min(sampling.max_tokens, self.max_model_len - len(ids))),
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
        conversation: Prompt,
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

    @property
    def errored(self) -> bool:
        """True once the engine can no longer generate: its engine-core process died (killed,
        out of memory) and every request fails with vLLM's ``EngineDeadError``. Only a new
        engine recovers; a caller that owns this one replaces it."""
        llm = self.llm
        return llm is None or bool(llm.errored)

    async def encode(self, conversation: Prompt) -> list[int]:
        """The prompt's token ids, rendered and tokenized off the event loop; raises
        PromptTooLongError when it leaves no room for a token."""
        return await self.encoder.encode(conversation)

    async def complete(
        self, prompt: Prompt, sampling: SamplingConfig, request_id: str | None = None
    ) -> Generation:
        """``sampling.n`` completions of one prompt, returned whole when the last one ends.

        What a batch stage awaits per row: many rows' calls in flight at once are one batch to
        vLLM's scheduler, so a row that finishes early frees its slot for another row (or
        another batch) instead of waiting for the slowest row of its batch. ``max_tokens`` is
        clipped to the room left in the context."""
        from vllm.sampling_params import RequestOutputKind

        ids = await self.encoder.encode(prompt)
        params = sampling_params(
            sampling,
            max_tokens=max(1, min(sampling.max_tokens, self.max_model_len - len(ids))),
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        t0 = time.time()
        final = None
        outputs = self.llm.generate(
            {"prompt_token_ids": ids}, params, request_id or uuid.uuid4().hex
        )
        try:
            async for out in outputs:
                final = out
        finally:
            await outputs.aclose()
        assert final is not None
        return Generation(
            completions=[
                Completion(c.text, len(c.token_ids), _finish(c.finish_reason))
                for c in final.outputs
            ],
            prompt_tokens=len(ids),
            cached_tokens=int(final.num_cached_tokens or 0),
            latency_s=time.time() - t0,
        )

    async def check_health(self) -> None:
        """Raises when the engine-core process is dead (Serve then replaces the replica)."""
        await self.llm.check_health()

    def close(self) -> None:
        encoder = getattr(self, "encoder", None)
        if encoder is not None:
            encoder.close()
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        try:
            llm.shutdown()
        except Exception:  # pragma: no cover - best effort on teardown
            log.debug("async engine shutdown raised", exc_info=True)
        self.llm = None
        release_gauges(self.role)
        gc.collect()
