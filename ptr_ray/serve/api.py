"""The FastAPI app: /v1/refine, /v1/chat/completions, /v1/models, /healthz.

Routes talk to the engine only through an :class:`EngineBackend` (in Serve: a
DeploymentHandle to the vLLM engine deployment; in unit tests: a fake), and run every request
through :func:`ptr_ray.refine.arefine`, the loop evaluation and the prompt baseline use too.
Each round sends the whole growing conversation, so the engine's prefix cache serves the
earlier rounds.

Streaming: a request's rounds run in a producer task that pushes token deltas and finished
rounds into a queue; the response drains it. When the client goes away the response is
cancelled, which cancels the producer, which cancels the engine call of the running round, so
no further rounds are generated.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError

from ptr_ray import prompts
from ptr_ray.config import ServeConfig, SamplingConfig
from ptr_ray.engine import Completion, Generation
from ptr_ray.refine import RoundResult, arefine, is_stable
from ptr_ray.serve.errors import APIError, install_error_handlers, validation_error
from ptr_ray.serve.metrics import ServeMetrics
from ptr_ray.serve.schemas import (
    ChatCompletionRequest,
    LenientChatCompletionRequest,
    LenientRefineRequest,
    RefineRequest,
    to_messages,
)

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 << 20
HEALTH_TIMEOUT_S = 10.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class EngineBackend(Protocol):
    """What the routes need from an engine; see ptr_ray.serve.app.HandleBackend.

    ``stream`` yields ``{"type": "delta", "text": ...}`` items, then one ``{"type": "result",
    "text", "tokens", "finish_reason", "prompt_tokens", "cached_tokens", "latency_s"}``, or a
    ``{"type": "error", "status", "code", "message"}`` for a client error (prompt too long).
    Engine outages raise :class:`APIError` (503).
    """

    def stream(self, messages: list[dict[str, str]], sampling: dict[str, Any],
               request_id: str, deltas: bool = True) -> AsyncIterator[dict[str, Any]]: ...

    async def info(self) -> dict[str, Any]: ...

    async def health(self) -> None: ...


@dataclass
class RunEnd:
    stopped_early: bool
    stop_reason: str  # "rounds" | "stable" | "context_full"


async def refine_events(
    backend: EngineBackend,
    query: prompts.Query,
    rounds: int,
    sampling: SamplingConfig,
    cfg: ServeConfig,
    stop_when_stable: bool,
    request_id: str,
    metrics: ServeMetrics | None = None,
    deltas: bool = True,
) -> AsyncIterator[tuple[str, Any]]:
    """Run the rounds of one request; yield ``("delta", (k, text))`` (when ``deltas``),
    ``("round", RoundResult)`` and finally ``("end", RunEnd)``. Client errors of round 1 raise
    :class:`APIError`."""
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    sampling_dict = sampling.model_dump()
    counter = {"k": 0}

    async def generate(messages: list[prompts.Message]) -> Generation:
        counter["k"] += 1
        k = counter["k"]
        result: dict[str, Any] | None = None
        stream = backend.stream(list(messages), sampling_dict, f"{request_id}-r{k}", deltas)
        try:
            async for item in stream:
                kind = item.get("type")
                if kind == "delta":
                    queue.put_nowait(("delta", (k, item["text"])))
                elif kind == "result":
                    result = item
                elif kind == "error":
                    raise APIError(int(item.get("status", 400)), item["message"],
                                   param="messages" if k == 1 else None, code=item.get("code"))
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        if result is None:
            raise APIError(503, "the engine ended a round without a result; retry", code="engine_error")
        return Generation(
            completions=[Completion(result["text"], int(result["tokens"]), result["finish_reason"])],
            prompt_tokens=int(result["prompt_tokens"]),
            cached_tokens=int(result["cached_tokens"]),
            latency_s=float(result["latency_s"]),
        )

    async def produce() -> None:
        previous: str | None = None
        last_k = 0
        try:
            async for rr in arefine(generate, query, rounds, cfg.prompt, stop_when_stable):
                if metrics:
                    metrics.round(rr.latency_s, rr.prompt_tokens, rr.tokens, rr.cached_tokens)
                queue.put_nowait(("round", rr))
                stable = previous is not None and is_stable(previous, rr.answer)
                previous, last_k = rr.answer, rr.round
                if stop_when_stable and stable and rr.round < rounds:
                    if metrics:
                        metrics.stopped_early()
                    queue.put_nowait(("end", RunEnd(True, "stable")))
                    return
            queue.put_nowait(("end", RunEnd(False, "rounds")))
        except APIError as e:
            if last_k >= 1 and e.code == "context_length_exceeded":
                # Later rounds outgrew the context: the answer so far is the refined answer.
                queue.put_nowait(("end", RunEnd(True, "context_full")))
            else:
                queue.put_nowait(("error", e))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - surfaced to the client as an error event
            log.exception("refinement of %s failed", request_id)
            queue.put_nowait(("error", APIError(500, f"internal error: {type(e).__name__}: {e}",
                                                code="internal_error")))

    task = asyncio.create_task(produce())
    try:
        while True:
            kind, payload = await queue.get()
            if kind == "error":
                raise payload
            yield kind, payload
            if kind == "end":
                return
    finally:
        if not task.done():
            task.cancel()
            if metrics:
                metrics.cancelled()
        try:
            await task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - already reported
            pass


def sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _usage(rounds: list[RoundResult]) -> dict[str, Any]:
    prompt = sum(r.prompt_tokens for r in rounds)
    completion = sum(r.tokens for r in rounds)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(r.cached_tokens for r in rounds)}}


async def _parse(request: Request, model: type[BaseModel]) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise APIError(413, f"request body is larger than {MAX_BODY_BYTES} bytes", code="body_too_large")
    if not raw.strip():
        raise APIError(400, "request body is empty; send a JSON object", code="invalid_json")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f": {e.msg} at position {e.pos}" if isinstance(e, json.JSONDecodeError) else ""
        raise APIError(400, f"request body is not valid JSON{where}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error(e) from None


def create_app(backend: EngineBackend, cfg: ServeConfig, api_key: str | None = None) -> FastAPI:
    """The FastAPI app over ``backend``. ``api_key`` defaults to ``$cfg.api_key_env``; when it
    is non-empty, every /v1 route needs ``Authorization: Bearer <key>`` ("" turns auth off)."""
    key = (api_key if api_key is not None else os.environ.get(cfg.api_key_env)) or None
    app = FastAPI(title="ptr-ray", description="Progressive Thought Refinement serving",
                  version="0.1.0")
    install_error_handlers(app)
    metrics = ServeMetrics(cfg.served_model_name)
    app.state.metrics = metrics
    app.state.backend = backend
    known_models = {cfg.served_model_name, cfg.engine.model}
    info_cache: dict[str, Any] = {}
    created = int(time.time())

    def authorize(request: Request) -> None:
        if key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def check_model(name: str | None) -> None:
        if name is not None and name not in known_models:
            raise APIError(404, f"model '{name}' is not served here; GET /v1/models lists "
                                f"'{cfg.served_model_name}'", param="model", code="model_not_found")

    def resolve(rounds: int | None, max_tokens: int | None, temperature: float | None,
                top_p: float | None, seed: int | None, stop: list[str],
                rounds_param: str) -> tuple[int, SamplingConfig]:
        n = cfg.default_rounds if rounds is None else rounds
        if n > cfg.max_rounds:
            raise APIError(400, f"'{rounds_param}' is {n}, this server allows at most "
                                f"{cfg.max_rounds}", param=rounds_param, code="invalid_value")
        mt = cfg.default_max_tokens if max_tokens is None else max_tokens
        if mt > cfg.max_tokens_cap:
            raise APIError(400, f"'max_tokens' is {mt}, this server allows at most "
                                f"{cfg.max_tokens_cap}", param="max_tokens", code="invalid_value")
        temp = cfg.default_temperature if temperature is None else temperature
        if temp > cfg.max_temperature:
            raise APIError(400, f"'temperature' is {temp}, at most {cfg.max_temperature}",
                           param="temperature", code="invalid_value")
        sampling = SamplingConfig(max_tokens=mt, temperature=temp,
                                  top_p=1.0 if top_p is None else top_p, seed=seed, stop=stop)
        return n, sampling

    async def first_event(events: AsyncIterator[tuple[str, Any]]) -> tuple[str, Any]:
        """Wait for the first event before answering, so a round-1 client error is a 4xx."""
        try:
            return await events.__anext__()
        except BaseException:
            await events.aclose()
            raise

    # ---------------------------------------------------------------------------------------

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        try:
            await asyncio.wait_for(backend.health(), HEALTH_TIMEOUT_S)
        except APIError as e:
            return e.response()
        except Exception as e:  # noqa: BLE001 - any failure means "not healthy"
            return APIError(503, f"engine is not healthy: {type(e).__name__}: {e}",
                            code="engine_unavailable").response()
        return JSONResponse({"status": "ok", "model": cfg.served_model_name})

    @app.get("/v1/models")
    async def list_models(request: Request) -> JSONResponse:
        authorize(request)
        if not info_cache:
            info_cache.update(await backend.info())
        return JSONResponse({"object": "list", "data": [{
            "id": cfg.served_model_name, "object": "model", "created": created,
            "owned_by": "ptr-ray", "root": info_cache.get("model_path"),
            "max_model_len": info_cache.get("max_model_len"),
            "max_rounds": cfg.max_rounds, "default_rounds": cfg.default_rounds,
        }]})

    @app.post("/v1/refine")
    async def refine(request: Request) -> Any:
        authorize(request)
        body = await _parse(request, RefineRequest if cfg.strict else LenientRefineRequest)
        check_model(body.model)
        rounds, sampling = resolve(body.rounds, body.max_tokens, body.temperature, body.top_p,
                                   body.seed, body.stop_list(), "rounds")
        query: prompts.Query = body.query if body.query is not None else to_messages(body.messages)
        rid = f"refine-{uuid.uuid4().hex[:16]}"
        events = refine_events(backend, query, rounds, sampling, cfg, body.stop_when_stable, rid,
                               metrics, deltas=body.stream)
        first = await first_event(events)
        metrics.request("refine", 200)
        if body.stream:
            return StreamingResponse(_refine_sse(rid, first, events), media_type="text/event-stream",
                                     headers={**SSE_HEADERS, "X-PTR-Request-Id": rid})
        done, end = await _collect(first, events)
        return JSONResponse({
            "id": rid, "object": "refinement", "model": cfg.served_model_name,
            "rounds": [asdict(r) for r in done], "final": done[-1].answer if done else "",
            "stopped_early": end.stopped_early, "stop_reason": end.stop_reason,
            "usage": _usage(done),
        }, headers={"X-PTR-Request-Id": rid})

    async def _refine_sse(rid: str, first: tuple[str, Any],
                          events: AsyncIterator[tuple[str, Any]]) -> AsyncIterator[bytes]:
        done: list[RoundResult] = []
        try:
            async for kind, payload in _chain(first, events):
                if kind == "delta":
                    k, text = payload
                    yield sse({"round": k, "text": text}, "delta")
                elif kind == "round":
                    done.append(payload)
                    yield sse(asdict(payload), "round")
                elif kind == "end":
                    yield sse({"id": rid, "final": done[-1].answer if done else "",
                               "rounds": len(done), "stopped_early": payload.stopped_early,
                               "stop_reason": payload.stop_reason, "usage": _usage(done)}, "done")
        except APIError as e:
            yield sse(e.body(), "error")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        authorize(request)
        body = await _parse(request, ChatCompletionRequest if cfg.strict else LenientChatCompletionRequest)
        check_model(body.model)
        rounds, sampling = resolve(body.refinement_rounds, body.effective_max_tokens(), body.temperature,
                                   body.top_p, body.seed, body.stop_list(), "refinement_rounds")
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        events = refine_events(backend, to_messages(body.messages), rounds, sampling, cfg,
                               body.stop_when_stable, rid, metrics, deltas=body.stream)
        first = await first_event(events)
        metrics.request("chat", 200)
        now = int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_chat_sse(rid, now, rounds, include_usage, first, events),
                                     media_type="text/event-stream",
                                     headers={**SSE_HEADERS, "X-PTR-Request-Id": rid})
        done, end = await _collect(first, events)
        last = done[-1]
        return JSONResponse({
            "id": rid, "object": "chat.completion", "created": now, "model": cfg.served_model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": last.answer},
                         "finish_reason": last.finish_reason, "logprobs": None}],
            "usage": _usage(done),
            "refinement": {"rounds": [asdict(r) for r in done], "stopped_early": end.stopped_early,
                           "stop_reason": end.stop_reason},
        }, headers={"X-PTR-Request-Id": rid})

    async def _chat_sse(rid: str, now: int, rounds: int, include_usage: bool, first: tuple[str, Any],
                        events: AsyncIterator[tuple[str, Any]]) -> AsyncIterator[bytes]:
        """OpenAI chunks. Tokens of the last round are ``content``; earlier rounds stream as
        ``reasoning_content`` (the convention vLLM and others use for thinking tokens), and each
        finished round is reported in a ``refinement`` field of an empty-delta chunk."""

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            return sse({"id": rid, "object": "chat.completion.chunk", "created": now,
                        "model": cfg.served_model_name,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                     "logprobs": None}], **extra})

        done: list[RoundResult] = []
        try:
            yield chunk({"role": "assistant", "content": ""})
            async for kind, payload in _chain(first, events):
                if kind == "delta":
                    k, text = payload
                    yield chunk({"content": text} if k == rounds else {"reasoning_content": text})
                elif kind == "round":
                    done.append(payload)
                    yield chunk({}, refinement=asdict(payload))
                elif kind == "end":
                    last = done[-1]
                    if last.round != rounds:  # ended early: its tokens went out as reasoning
                        yield chunk({"content": last.answer})
                    yield chunk({}, last.finish_reason,
                                refinement={"rounds": len(done), "stopped_early": payload.stopped_early,
                                            "stop_reason": payload.stop_reason})
                    if include_usage:
                        yield sse({"id": rid, "object": "chat.completion.chunk", "created": now,
                                   "model": cfg.served_model_name, "choices": [], "usage": _usage(done)})
        except APIError as e:
            yield sse(e.body())
        yield b"data: [DONE]\n\n"

    return app


async def _collect(first: tuple[str, Any], events: AsyncIterator[tuple[str, Any]]
                   ) -> tuple[list[RoundResult], RunEnd]:
    """A whole (non-streamed) run: its rounds, and how it ended."""
    done: list[RoundResult] = []
    end = RunEnd(False, "rounds")
    async for kind, payload in _chain(first, events):
        if kind == "round":
            done.append(payload)
        elif kind == "end":
            end = payload
    return done, end


async def _chain(first: tuple[str, Any], rest: AsyncIterator[tuple[str, Any]]) -> AsyncIterator[tuple[str, Any]]:
    """``first`` then the rest; closing this closes ``rest`` (which cancels its rounds)."""
    try:
        yield first
        if first[0] == "end":
            return
        async for item in rest:
            yield item
    finally:
        await rest.aclose()  # type: ignore[attr-defined]


__all__ = ["EngineBackend", "create_app", "refine_events", "RunEnd", "sse"]
