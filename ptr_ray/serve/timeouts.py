"""The three time limits of a refinement request, applied where the request is waited for.

A request is waited for in the ingress, which reads one stream of items from the engine
replica (``accepted``, token ``delta`` or ``progress`` items, one ``round`` per finished round,
``end``). :func:`watched` passes those items on and measures three things:

- ``first_token_timeout_s``: from the start of the request (round 1) or the end of the previous
  round to the round's first token. It covers Serve's queue, vLLM's queue and the prefill.
  When no engine replica had taken the request yet (the replica never sent ``accepted``:
  overloaded, or being replaced after a crash) nothing was spent and a retry is right: 503 with
  ``Retry-After``. Otherwise 504.
- ``stall_timeout_s``: the longest wait for the next token once a round has started: 504.
- ``request_timeout_s``: a deadline for the whole request, all rounds together: 504.

Every error names the limit (``code``: ``first_token_timeout``, ``stall_timeout``,
``request_timeout``) and its value. Raising closes the item stream, which cancels the engine
call, which aborts the request inside vLLM: a timed-out request stops costing compute.

A non-streamed request asks the engine for no text deltas, so the engine sends small
``progress`` items instead, at most every :meth:`Limits.heartbeat_s`, which is well below the
stall limit: without them a long round would look like one long stall (the bug of the old
single ``engine_timeout_s``, which capped the whole round, queueing included).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ptr_ray.config import ServeConfig
from ptr_ray.serve.errors import APIError

__all__ = ["HEARTBEAT_MAX_S", "HEARTBEAT_MIN_S", "Limits", "Watch", "watched"]

HEARTBEAT_MIN_S = 0.02  # the engine's delta coalescing interval: items never come faster
HEARTBEAT_MAX_S = 1.0
TOKEN_ITEMS = ("delta", "progress")
LIMIT_CODES = ("first_token_timeout", "stall_timeout", "request_timeout")


@dataclass(frozen=True)
class Limits:
    """The three limits in seconds (None: no limit)."""

    first_token_s: float | None = None
    stall_s: float | None = None
    request_s: float | None = None

    @classmethod
    def from_config(cls, cfg: ServeConfig) -> Limits:
        return cls(cfg.first_token_timeout_s, cfg.stall_timeout_s, cfg.request_timeout_s)

    def heartbeat_s(self) -> float:
        """How often a non-streaming engine call reports progress: a quarter of the stall
        limit, so a healthy round never looks stalled, between HEARTBEAT_MIN_S and _MAX_S."""
        if not self.stall_s:
            return HEARTBEAT_MAX_S
        return min(HEARTBEAT_MAX_S, max(HEARTBEAT_MIN_S, self.stall_s / 4))


class Watch:
    """Which limit runs out next, given the items seen so far (no I/O: unit-testable)."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self.start = clock()
        self.round = 1
        self.round_start = self.start  # when the current round began waiting for its first token
        self.in_round = False  # the current round has produced a token
        self.accepted = False  # an engine replica has taken the request

    def saw(self, item: dict[str, Any]) -> None:
        kind = item.get("type")
        if kind == "accepted":
            self.accepted = True
        elif kind in TOKEN_ITEMS:
            self.accepted = True
            self.in_round = True
        elif kind == "round":
            self.accepted = True
            self.round = int(item.get("round", self.round)) + 1
            self.round_start = self.clock()
            self.in_round = False

    def next_limit(self) -> tuple[float | None, str]:
        """Seconds until the nearest limit runs out (None: no limit applies) and its code.

        Called when the caller starts waiting for the next item, so the stall limit measures
        the engine's silence, never time the consumer spent writing to a slow client."""
        now = self.clock()
        left: list[tuple[float, str]] = []
        lim = self.limits
        if lim.request_s:
            left.append((self.start + lim.request_s - now, "request_timeout"))
        if self.in_round:
            if lim.stall_s:
                left.append((lim.stall_s, "stall_timeout"))
        elif lim.first_token_s:
            left.append((self.round_start + lim.first_token_s - now, "first_token_timeout"))
        if not left:
            return None, ""
        seconds, code = min(left)
        return max(0.0, seconds), code

    def error(self, code: str) -> APIError:
        """The error for a limit that ran out: which limit, its value, where the request was."""
        lim = self.limits
        if code == "request_timeout":
            return APIError(
                504,
                f"the request ran past request_timeout_s={lim.request_s:g}s "
                f"(in round {self.round}); it was aborted",
                code=code,
            )
        if code == "stall_timeout":
            return APIError(
                504,
                f"round {self.round} produced no token for stall_timeout_s={lim.stall_s:g}s; "
                "it was aborted",
                code=code,
            )
        if not self.accepted:
            return APIError(
                503,
                f"no engine replica took the request within first_token_timeout_s="
                f"{lim.first_token_s:g}s (overloaded or restarting); retry",
                code=code,
                headers={"Retry-After": "5"},
            )
        return APIError(
            504,
            f"round {self.round} did not produce its first token within first_token_timeout_s="
            f"{lim.first_token_s:g}s; it was aborted",
            code=code,
        )


async def watched(
    items: AsyncIterator[dict[str, Any]], limits: Limits, watch: Watch | None = None
) -> AsyncGenerator[dict[str, Any], None]:
    """``items`` passed on, each within its limit; when one runs out, raise its
    :class:`APIError` and close ``items`` (which aborts the engine's work)."""
    watch = watch or Watch(limits)
    it = aiter(items)
    try:
        while True:
            seconds, code = watch.next_limit()
            try:
                async with asyncio.timeout(seconds):
                    item = await anext(it)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise watch.error(code) from None
            watch.saw(item)
            yield item
    finally:
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()
