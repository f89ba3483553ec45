"""How a run's events are written on the wire: server-sent events and JSON bodies.

``/v1/refine`` has its own format (named SSE events ``delta``, ``round``, ``done``, ``error``;
one ``refinement`` object when not streamed). ``/v1/chat/completions`` speaks OpenAI's
(``chat.completion`` / ``chat.completion.chunk``) so OpenAI SDKs work unchanged; the
refinement details ride along in an extra ``refinement`` field those SDKs keep in
``model_extra``. Keeping the formats here leaves the routes with only the HTTP decisions.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from ptr_ray.refine import RoundResult
from ptr_ray.serve.errors import APIError
from ptr_ray.serve.session import RunEnd, Session

# Proxies (nginx) buffer responses unless told otherwise; a refinement stream must not wait.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_DONE = b"data: [DONE]\n\n"


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event (unnamed events are what OpenAI clients read)."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def usage(rounds: list[RoundResult]) -> dict[str, Any]:
    """OpenAI's ``usage`` summed over every round: each round is billed as a completion."""
    prompt = sum(r.prompt_tokens for r in rounds)
    completion = sum(r.tokens for r in rounds)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": sum(r.cached_tokens for r in rounds)},
    }


# -- /v1/refine -------------------------------------------------------------------------------


def refinement(rid: str, model: str, done: list[RoundResult], end: RunEnd) -> dict[str, Any]:
    """The non-streamed ``/v1/refine`` body: every round, the final answer, how it ended."""
    return {
        "id": rid,
        "object": "refinement",
        "model": model,
        "rounds": [asdict(r) for r in done],
        "final": done[-1].answer if done else "",
        "stopped_early": end.stopped_early,
        "stop_reason": end.stop_reason,
        "usage": usage(done),
    }


async def refine_stream(rid: str, session: Session) -> AsyncIterator[bytes]:
    """``/v1/refine`` with ``stream: true``: ``delta`` events (token text of a round),
    one ``round`` event per finished round, then ``done``; a failure is an ``error`` event."""
    done: list[RoundResult] = []
    try:
        async for kind, payload in session.events():
            if kind == "delta":
                k, text = payload
                yield sse({"round": k, "text": text}, "delta")
            elif kind == "round":
                done.append(payload)
                yield sse(asdict(payload), "round")
            elif kind == "end":
                yield sse(
                    {
                        "id": rid,
                        "final": done[-1].answer if done else "",
                        "rounds": len(done),
                        "stopped_early": payload.stopped_early,
                        "stop_reason": payload.stop_reason,
                        "usage": usage(done),
                    },
                    "done",
                )
    except APIError as e:
        yield sse(e.body(), "error")


# -- /v1/chat/completions ---------------------------------------------------------------------


def chat_completion(
    rid: str, created: int, model: str, done: list[RoundResult], end: RunEnd
) -> dict[str, Any]:
    """The non-streamed ``chat.completion``: the last round is the message."""
    last = done[-1]
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": last.answer},
                "finish_reason": last.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage(done),
        "refinement": {
            "rounds": [asdict(r) for r in done],
            "stopped_early": end.stopped_early,
            "stop_reason": end.stop_reason,
        },
    }


async def chat_stream(
    rid: str, created: int, model: str, rounds: int, include_usage: bool, session: Session
) -> AsyncIterator[bytes]:
    """OpenAI chunks. Tokens of the last round are ``content``; earlier rounds stream as
    ``reasoning_content`` (the convention vLLM and others use for thinking tokens), and each
    finished round is reported in a ``refinement`` field of an empty-delta chunk."""

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return sse(
            {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
                **extra,
            }
        )

    def delta(d: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        return chunk([{"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}], **extra)

    done: list[RoundResult] = []
    try:
        yield delta({"role": "assistant", "content": ""})
        async for kind, payload in session.events():
            if kind == "delta":
                k, text = payload
                yield delta({"content": text} if k == rounds else {"reasoning_content": text})
            elif kind == "round":
                done.append(payload)
                yield delta({}, refinement=asdict(payload))
            elif kind == "end":
                last = done[-1]
                if last.round != rounds:  # ended early: its tokens went out as reasoning
                    yield delta({"content": last.answer})
                yield delta(
                    {},
                    last.finish_reason,
                    refinement={
                        "rounds": len(done),
                        "stopped_early": payload.stopped_early,
                        "stop_reason": payload.stop_reason,
                    },
                )
                if include_usage:
                    yield chunk([], usage=usage(done))
    except APIError as e:
        yield sse(e.body())
    yield SSE_DONE


__all__ = [
    "SSE_HEADERS",
    "chat_completion",
    "chat_stream",
    "refine_stream",
    "refinement",
    "sse",
    "usage",
]
