"""One request's refinement run, as a stream of events.

The routes never call the engine themselves: they start a :class:`Session` over
:func:`refine_events`, which hands out ``delta`` / ``round`` / ``end`` events. How those
events are written (SSE, OpenAI chunks, one JSON body) is :mod:`ptr_ray.serve.chunks`'
business.

**Where the rounds run.** Each round sends the whole growing conversation, so the engine's
prefix cache serves the earlier rounds, but only if every round of a request reaches the
*same* engine replica. Serve's router picks a replica per call by load, so one call per round
scattered the rounds of a request over the replicas (and lost the cache exactly when the
engine scales out). So the N-round loop runs inside the engine replica: the ingress makes one
handle call per request (a :class:`RequestEngine`, ``ptr_ray.serve.app.HandleBackend``) and
reads back one stream of items. :func:`run_items` is that loop; the engine replica runs it
over its vLLM engine, and the ingress runs it itself over a :class:`RoundEngine` (a fake
engine in unit tests), so both paths share one loop (:func:`ptr_ray.refine.arefine`).

**Items** (what the engine replica streams back, plain dicts so they cross processes):
``accepted`` (a replica took the request), ``delta`` (token text of round k, when streaming)
or ``progress`` (tokens arrived, when not), ``round`` (a finished round), then ``end``, or an
``error`` (status, code, message, param). :mod:`ptr_ray.serve.timeouts` watches them for the
request's time limits.

**Cancelling.** When the client goes away the response is cancelled, which closes the events,
which closes the item stream, which cancels the engine call, which cancels the loop's running
round, which aborts it inside vLLM: no further rounds are generated. A time limit that runs
out does the same.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from ptr_ray import prompts
from ptr_ray.config import PromptConfig, SamplingConfig, ServeConfig
from ptr_ray.engine import Completion, Generation
from ptr_ray.refine import RoundResult, arefine, is_stable
from ptr_ray.serve.errors import APIError
from ptr_ray.serve.metrics import ServeMetrics
from ptr_ray.serve.timeouts import LIMIT_CODES, Limits, watched

log = logging.getLogger(__name__)

Event = tuple[str, Any]
Item = dict[str, Any]


class RoundEngine(Protocol):
    """An engine that generates one round per call (``ptr_ray.serve.app.ReplicaRounds`` inside
    the engine replica; the unit tests' fake). The loop runs in the caller's process.

    ``stream`` yields ``{"type": "delta", "text": ...}`` items (when ``deltas``) or, optionally,
    ``{"type": "progress"}`` items (when not), then one ``{"type": "result", "text", "tokens",
    "finish_reason", "prompt_tokens", "cached_tokens", "latency_s"}``, or a ``{"type": "error",
    "status", "code", "message"}`` for a client error (prompt too long). Engine failures raise.
    """

    def stream(
        self,
        messages: list[dict[str, str]],
        sampling: dict[str, Any],
        request_id: str,
        deltas: bool = True,
    ) -> AsyncIterator[Item]: ...


class RoundBackend(RoundEngine, Protocol):
    """A per-round engine the ingress talks to directly (the unit tests' fake engine)."""

    async def info(self) -> dict[str, Any]: ...

    async def health(self) -> None: ...


@runtime_checkable
class RequestEngine(Protocol):
    """An engine that runs a whole request (all its rounds) per call and streams its items:
    the Serve handle to the engine deployment (``ptr_ray.serve.app.HandleBackend``). Engine
    outages raise :class:`APIError` (503)."""

    def refine(
        self,
        query: prompts.Query,
        rounds: int,
        sampling: dict[str, Any],
        prompt: dict[str, Any],
        stop_when_stable: bool,
        request_id: str,
        deltas: bool = True,
        heartbeat_s: float = 1.0,
    ) -> AsyncIterator[Item]: ...

    async def info(self) -> dict[str, Any]: ...

    async def health(self) -> None: ...


EngineBackend = RoundBackend | RequestEngine


@dataclass
class RunEnd:
    """How a run ended; a run may end before its rounds are used up."""

    stopped_early: bool
    stop_reason: str  # "rounds" | "stable" | "context_full"


def error_item(e: APIError) -> Item:
    return {
        "type": "error",
        "status": e.status,
        "code": e.code,
        "message": e.message,
        "param": e.param,
    }


async def run_items(
    engine: RoundEngine,
    query: prompts.Query,
    rounds: int,
    sampling: dict[str, Any],
    prompt_cfg: PromptConfig,
    stop_when_stable: bool,
    request_id: str,
    deltas: bool = True,
) -> AsyncGenerator[Item, None]:
    """THE loop of one request over a per-round engine, as items (see the module docstring).

    Round k's engine request id is ``{request_id}-r{k}``. Client errors of round 1 end the run
    with an ``error`` item; a later round that outgrows the context ends it with the answer so
    far (the refined answer is still an answer)."""
    yield {"type": "accepted"}
    queue: asyncio.Queue[Item] = asyncio.Queue()
    counter = {"k": 0}

    async def generate(messages: list[prompts.Message]) -> Generation:
        counter["k"] += 1
        k = counter["k"]
        result: Item | None = None
        stream = engine.stream(list(messages), sampling, f"{request_id}-r{k}", deltas)
        try:
            async for item in stream:
                kind = item.get("type")
                if kind == "delta":
                    queue.put_nowait({"type": "delta", "round": k, "text": item["text"]})
                elif kind == "progress":
                    queue.put_nowait({"type": "progress", "round": k})
                elif kind == "result":
                    result = item
                elif kind == "error":
                    raise APIError(
                        int(item.get("status", 400)),
                        item["message"],
                        param="messages" if k == 1 else None,
                        code=item.get("code"),
                    )
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        if result is None:
            raise APIError(
                503, "the engine ended a round without a result; retry", code="engine_error"
            )
        return Generation(
            completions=[
                Completion(result["text"], int(result["tokens"]), result["finish_reason"])
            ],
            prompt_tokens=int(result["prompt_tokens"]),
            cached_tokens=int(result["cached_tokens"]),
            latency_s=float(result["latency_s"]),
        )

    async def produce() -> None:
        previous: str | None = None
        last_k = 0
        try:
            async for rr in arefine(generate, query, rounds, prompt_cfg, stop_when_stable):
                queue.put_nowait({"type": "round", **asdict(rr)})
                stable = previous is not None and is_stable(previous, rr.answer)
                previous, last_k = rr.answer, rr.round
                if stop_when_stable and stable and rr.round < rounds:
                    queue.put_nowait(
                        {"type": "end", "stopped_early": True, "stop_reason": "stable"}
                    )
                    return
            queue.put_nowait({"type": "end", "stopped_early": False, "stop_reason": "rounds"})
        except APIError as e:
            if last_k >= 1 and e.code == "context_length_exceeded":
                # Later rounds outgrew the context: the answer so far is the refined answer.
                end = {"type": "end", "stopped_early": True, "stop_reason": "context_full"}
                queue.put_nowait(end)
            else:
                queue.put_nowait(error_item(e))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - surfaced to the client as an error item
            # the details (paths, values) go to the log; the client gets the type only
            log.exception("refinement of %s failed", request_id)
            err = APIError(500, f"internal error: {type(e).__name__}", code="internal_error")
            queue.put_nowait(error_item(err))

    task = asyncio.create_task(produce())
    try:
        while True:
            item = await queue.get()
            yield item
            if item["type"] in ("end", "error"):
                return
    finally:
        if not task.done():
            task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - already reported
            pass


def request_items(
    backend: EngineBackend,
    query: prompts.Query,
    rounds: int,
    sampling: SamplingConfig,
    cfg: ServeConfig,
    stop_when_stable: bool,
    request_id: str,
    deltas: bool,
    heartbeat_s: float,
) -> AsyncIterator[Item]:
    """The items of one request: one call to a :class:`RequestEngine` (all rounds on the
    replica that took the request), or the loop run here over a :class:`RoundEngine`."""
    sampling_dict = sampling.model_dump()
    if isinstance(backend, RequestEngine):
        return backend.refine(
            query,
            rounds,
            sampling_dict,
            cfg.prompt.model_dump(),
            stop_when_stable,
            request_id,
            deltas,
            heartbeat_s,
        )
    return run_items(
        backend, query, rounds, sampling_dict, cfg.prompt, stop_when_stable, request_id, deltas
    )


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
) -> AsyncGenerator[Event, None]:
    """Run the rounds of one request within the config's time limits; yield
    ``("delta", (k, text))`` (when ``deltas``), ``("round", RoundResult)`` and finally
    ``("end", RunEnd)``. Errors (a client error of round 1, a time limit, an engine outage)
    raise :class:`APIError`."""
    limits = Limits.from_config(cfg)
    source = request_items(
        backend,
        query,
        rounds,
        sampling,
        cfg,
        stop_when_stable,
        request_id,
        deltas,
        limits.heartbeat_s(),
    )
    items = watched(source, limits)
    settled = False  # ended, failed or timed out: anything but the client going away
    try:
        async for item in items:
            kind = item["type"]
            if kind == "delta":
                if deltas:
                    yield "delta", (int(item["round"]), item["text"])
            elif kind == "round":
                rr = RoundResult(**{k: v for k, v in item.items() if k != "type"})
                if metrics:
                    metrics.round(rr.latency_s, rr.prompt_tokens, rr.tokens, rr.cached_tokens)
                yield "round", rr
            elif kind == "end":
                settled = True
                end = RunEnd(bool(item["stopped_early"]), str(item["stop_reason"]))
                if metrics and end.stop_reason == "stable":
                    metrics.stopped_early()
                yield "end", end
                return
            elif kind == "error":
                status = int(item.get("status", 500))
                raise APIError(
                    status,
                    str(item.get("message")),
                    param=item.get("param"),
                    code=item.get("code"),
                    headers={"Retry-After": "2"} if status == 503 else None,
                )
        raise APIError(
            503, "the engine ended the run without an answer; retry", code="engine_error"
        )
    except APIError as e:
        settled = True
        if metrics and e.code in LIMIT_CODES:
            metrics.timed_out(e.code)
        raise
    finally:
        await items.aclose()
        if not settled and metrics:
            metrics.cancelled()


class Session:
    """A started run: its first event is already in hand, the rest are still to come.

    A route starts the session *before* it answers, so a client error of round 1 (prompt too
    long, say) or a first-token timeout is still a 4xx/5xx with a JSON body instead of an
    error inside a 200 stream.
    """

    def __init__(self, first: Event, rest: AsyncGenerator[Event, None]) -> None:
        self._first = first
        self._rest = rest

    @classmethod
    async def start(cls, events: AsyncGenerator[Event, None]) -> Session:
        """Wait for the first event of ``events`` (closing them if that fails)."""
        try:
            first = await events.__anext__()
        except BaseException:
            await events.aclose()
            raise
        return cls(first, events)

    async def events(self) -> AsyncIterator[Event]:
        """Every event, the first included; closing this closes the run (cancels its rounds)."""
        try:
            yield self._first
            if self._first[0] == "end":
                return
            async for item in self._rest:
                yield item
        finally:
            await self._rest.aclose()

    async def collect(self) -> tuple[list[RoundResult], RunEnd]:
        """A whole (non-streamed) run: its rounds, and how it ended."""
        done: list[RoundResult] = []
        end = RunEnd(False, "rounds")
        async for kind, payload in self.events():
            if kind == "round":
                done.append(payload)
            elif kind == "end":
                end = payload
        return done, end


__all__ = [
    "EngineBackend",
    "Event",
    "Item",
    "RequestEngine",
    "RoundBackend",
    "RoundEngine",
    "RunEnd",
    "Session",
    "refine_events",
    "request_items",
    "run_items",
]
