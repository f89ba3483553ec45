"""``ptr-ray refine "question"``: ask a running server and print each round as it arrives.

Reads the server-sent events of ``POST /v1/refine`` (``delta``, ``round``, ``done``,
``error``) with httpx; :func:`iter_sse` is reusable by other clients and the benchmark.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import httpx

from ptr_ray.errors import PtrRayValueError


class ServerError(PtrRayValueError):
    """The server answered with an error; the message is the server's own one-liner."""


def iter_sse(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """(event, data) pairs from SSE text lines; ``data: [DONE]`` ends the stream."""
    event, data = "message", list[str]()
    for line in lines:
        if line == "":
            if data:
                raw = "\n".join(data)
                if raw == "[DONE]":
                    return
                yield event, json.loads(raw)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data and "\n".join(data) != "[DONE]":
        yield event, json.loads("\n".join(data))


def _error_message(resp: httpx.Response) -> str:
    try:
        return resp.json()["error"]["message"]
    except Exception:  # noqa: BLE001 - not our JSON (a proxy's 503, say)
        return resp.text.strip()[:200] or resp.reason_phrase


def refine_stream(
    url: str, body: dict[str, Any], api_key: str | None = None, timeout: float = 600.0
) -> Iterator[tuple[str, Any]]:
    """POST /v1/refine with ``stream: true``; yield its (event, data) pairs."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.stream(
            "POST",
            url.rstrip("/") + "/v1/refine",
            json={**body, "stream": True},
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10),
        ) as resp:
            if resp.status_code != 200:
                resp.read()
                raise ServerError(f"server answered {resp.status_code}: {_error_message(resp)}")
            for event, data in iter_sse(resp.iter_lines()):
                if event == "error":
                    raise ServerError(f"server error: {data['error']['message']}")
                yield event, data
    except httpx.ConnectError as e:
        raise ServerError(
            f"no ptr-ray server at {url} ({e}); start one with `ptr-ray serve`"
        ) from None
    except httpx.TimeoutException:
        raise ServerError(f"{url} did not answer within {timeout:.0f}s") from None


def refine_command(args: Any, out: TextIO | None = None) -> int:
    """CLI entry: stream the rounds of one query to ``out`` (stdout)."""
    out = out or sys.stdout
    if not args.query.strip():
        raise ServerError("the query is empty")
    body: dict[str, Any] = {"query": args.query, "rounds": args.rounds}
    if args.max_tokens is not None:
        body["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        body["temperature"] = args.temperature
    # The server's variable may hold several keys (comma-separated): a client sends the first.
    key = args.api_key or os.environ.get("PTR_API_KEY", "").split(",")[0].strip() or None
    open_round = 0
    for event, data in refine_stream(args.url, body, key):
        if event == "delta":
            if data["round"] != open_round:
                open_round = data["round"]
                out.write(f"── round {open_round} ──\n")
            out.write(data["text"])
            out.flush()
        elif event == "round":
            if data["round"] != open_round:  # a round without text deltas
                out.write(f"── round {data['round']} ──\n{data['answer']}")
            open_round = data["round"]
            cached = f"{data['cached_tokens']}/{data['prompt_tokens']} prompt tokens cached"
            out.write(
                f"\n   [{data['tokens']} tokens, {data['finish_reason']}, "
                f"{data['latency_s']:.2f}s, {cached}]\n"
            )
            out.flush()
        elif event == "done":
            why = f" (stopped early: {data['stop_reason']})" if data["stopped_early"] else ""
            out.write(f"── final answer after {data['rounds']} round(s){why} ──\n{data['final']}\n")
            out.flush()
    return 0
