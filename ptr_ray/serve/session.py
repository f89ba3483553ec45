"""One request's refinement run against the engine, as a stream of events.

The routes never call the engine themselves: they start a :class:`Session`, which runs the
rounds through :func:`ptr_ray.refine.arefine` (the loop evaluation and the prompt baseline use
too) and hands out ``delta`` / ``round`` / ``end`` events. How those events are written (SSE,
OpenAI chunks, one JSON body) is :mod:`ptr_ray.serve.chunks`' business.

Each round sends the whole growing conversation, so the engine's prefix cache serves the
earlier rounds. The rounds run in a producer task that pushes token deltas and finished rounds
into a queue; the consumer drains it. When the client goes away the response is cancelled,
which closes the events, which cancels the producer, which cancels the engine call of the
running round: no further rounds are generated.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from ptr_ray import prompts
from ptr_ray.config import SamplingConfig, ServeConfig
from ptr_ray.engine import Completion, Generation
from ptr_ray.refine import RoundResult, arefine, is_stable
from ptr_ray.serve.errors import APIError
from ptr_ray.serve.metrics import ServeMetrics

log = logging.getLogger(__name__)

Event = tuple[str, Any]


class EngineBackend(Protocol):
    """What a session needs from an engine; see ptr_ray.serve.app.HandleBackend.

    ``stream`` yields ``{"type": "delta", "text": ...}`` items, then one ``{"type": "result",
    "text", "tokens", "finish_reason", "prompt_tokens", "cached_tokens", "latency_s"}``, or a
    ``{"type": "error", "status", "code", "message"}`` for a client error (prompt too long).
    Engine outages raise :class:`APIError` (503).
    """

    def stream(
        self,
        messages: list[dict[str, str]],
        sampling: dict[str, Any],
        request_id: str,
        deltas: bool = True,
    ) -> AsyncIterator[dict[str, Any]]: ...

    async def info(self) -> dict[str, Any]: ...

    async def health(self) -> None: ...


@dataclass
class RunEnd:
    """How a run ended; a run may end before its rounds are used up."""

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
) -> AsyncGenerator[Event, None]:
    """Run the rounds of one request; yield ``("delta", (k, text))`` (when ``deltas``),
    ``("round", RoundResult)`` and finally ``("end", RunEnd)``. Client errors of round 1 raise
    :class:`APIError`; a later round that outgrows the context ends the run with the answer so
    far (the refined answer is still an answer)."""
    queue: asyncio.Queue[Event] = asyncio.Queue()
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
            queue.put_nowait(
                (
                    "error",
                    APIError(
                        500, f"internal error: {type(e).__name__}: {e}", code="internal_error"
                    ),
                )
            )

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


class Session:
    """A started run: its first event is already in hand, the rest are still to come.

    A route starts the session *before* it answers, so a client error of round 1 (prompt too
    long, say) is still a 4xx with a JSON body instead of an error inside a 200 stream.
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


__all__ = ["EngineBackend", "Event", "RunEnd", "Session", "refine_events"]
