"""The three time limits (ptr_ray/serve/timeouts.py): which one applies when, what the client
gets, and that the engine's work is closed (aborted) when one runs out. Tiny limits, scripted
engines, no Ray."""

from __future__ import annotations

import asyncio

import pytest

from ptr_ray.config import SamplingConfig, ServeConfig
from ptr_ray.serve.errors import APIError
from ptr_ray.serve.metrics import ServeMetrics
from ptr_ray.serve.session import refine_events
from ptr_ray.serve.timeouts import HEARTBEAT_MAX_S, HEARTBEAT_MIN_S, Limits, Watch, watched


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_watch_picks_the_limit_that_runs_out_first():
    clock = Clock()
    w = Watch(Limits(first_token_s=5, stall_s=2, request_s=12), clock)
    assert w.next_limit() == (5, "first_token_timeout")
    clock.t += 1
    w.saw({"type": "accepted"})
    assert w.next_limit() == (4, "first_token_timeout")  # still counted from the request's start
    w.saw({"type": "delta", "round": 1, "text": "a"})
    assert w.next_limit() == (2, "stall_timeout")
    clock.t += 6
    w.saw({"type": "round", "round": 1})
    # round 2 waits for its first token from the end of round 1, not from the request's start
    assert w.next_limit() == (5, "first_token_timeout") and w.round == 2
    clock.t += 4
    assert w.next_limit() == (1, "first_token_timeout")
    w.saw({"type": "progress", "round": 2})
    assert w.next_limit() == (1, "request_timeout")  # 11 s of 12 are gone: the deadline is nearer
    clock.t += 5
    assert w.next_limit() == (0.0, "request_timeout")


def test_watch_without_limits_waits_forever():
    assert Watch(Limits()).next_limit() == (None, "")


def test_errors_name_the_limit_and_only_an_untaken_request_is_retryable():
    lim = Limits(first_token_s=0.5, stall_s=0.25, request_s=3)
    w = Watch(lim)
    queued = w.error("first_token_timeout")
    assert queued.status == 503 and queued.headers == {"Retry-After": "5"}
    assert "first_token_timeout_s=0.5s" in queued.message and queued.code == "first_token_timeout"
    w.saw({"type": "accepted"})
    started = w.error("first_token_timeout")
    assert started.status == 504 and not started.headers and "round 1" in started.message
    stall = w.error("stall_timeout")
    assert (stall.status, stall.code) == (504, "stall_timeout") and "0.25s" in stall.message
    late = w.error("request_timeout")
    assert (late.status, late.code) == (504, "request_timeout") and "3s" in late.message
    assert late.body()["error"]["code"] == "request_timeout"


def test_heartbeat_stays_well_inside_the_stall_limit():
    assert Limits(stall_s=2).heartbeat_s() == 0.5
    assert Limits(stall_s=0.001).heartbeat_s() == HEARTBEAT_MIN_S
    assert Limits(stall_s=600).heartbeat_s() == HEARTBEAT_MAX_S
    assert Limits().heartbeat_s() == HEARTBEAT_MAX_S


class ScriptedEngine:
    """A RequestEngine whose one request plays ``script``: (seconds to wait, item) steps, then
    waits forever (``hang``) or ends. Records whether its stream was closed early."""

    def __init__(self, script, hang=True):
        self.script = script
        self.hang = hang
        self.closed_early = False
        self.calls = []

    async def refine(self, query, rounds, sampling, prompt, stop_when_stable, rid, deltas, hb):
        self.calls.append({"rounds": rounds, "deltas": deltas, "heartbeat_s": hb})
        done = False
        try:
            for wait, item in self.script:
                await asyncio.sleep(wait)
                yield item
            if self.hang:
                await asyncio.sleep(3600)
            done = True
        finally:
            self.closed_early = not done

    async def info(self):
        return {}

    async def health(self):
        return None


def _round(k):
    return {
        "type": "round",
        "round": k,
        "answer": f"answer {k}",
        "tokens": 3,
        "finish_reason": "stop",
        "latency_s": 0.01,
        "prompt_tokens": 10 * k,
        "cached_tokens": 8 * (k - 1),
    }


def _tokens(k, n, every):
    return [(every, {"type": "delta", "round": k, "text": f" t{i}"}) for i in range(n)]


def _run(engine, rounds=2, stream=True, metrics=None, **limits):
    cfg = ServeConfig.model_validate({"engine": {"model": "fake"}, **limits})

    async def go():
        out = []
        async for ev in refine_events(
            engine, "q", rounds, SamplingConfig(), cfg, False, "req", metrics, deltas=stream
        ):
            out.append(ev)
        return out

    return asyncio.run(go())


FAST = {"first_token_timeout_s": 5, "stall_timeout_s": 5, "request_timeout_s": 30}


def test_a_request_no_replica_takes_is_a_retryable_503():
    engine = ScriptedEngine([])
    metrics = ServeMetrics("m")
    with pytest.raises(APIError) as e:
        _run(engine, metrics=metrics, **{**FAST, "first_token_timeout_s": 0.2})
    assert e.value.status == 503 and e.value.code == "first_token_timeout"
    assert e.value.headers == {"Retry-After": "5"} and engine.closed_early
    assert metrics.local["timeouts:limit=first_token_timeout,model=m"] == 1
    assert not any(k.startswith("cancelled") for k in metrics.local)  # not a client that left


def test_a_taken_request_without_a_first_token_is_a_504():
    engine = ScriptedEngine([(0, {"type": "accepted"})])
    with pytest.raises(APIError) as e:
        _run(engine, **{**FAST, "first_token_timeout_s": 0.2})
    assert e.value.status == 504 and e.value.code == "first_token_timeout" and engine.closed_early


def test_first_token_limit_applies_to_each_round_not_to_the_request():
    # each round: first token after 0.1 s, then 0.5 s of tokens; the whole request takes ~1.2 s
    script = [(0, {"type": "accepted"})]
    for k in (1, 2):
        script += _tokens(k, 6, 0.1) + [(0, _round(k))]
    script.append((0, {"type": "end", "stopped_early": False, "stop_reason": "rounds"}))
    events = _run(ScriptedEngine(script), **{**FAST, "first_token_timeout_s": 0.4})
    assert [e for e, _ in events].count("round") == 2 and events[-1][0] == "end"


def test_a_round_that_stops_producing_tokens_hits_the_stall_limit():
    script = [(0, {"type": "accepted"})] + _tokens(1, 3, 0.02)
    engine = ScriptedEngine(script)
    with pytest.raises(APIError) as e:
        _run(engine, **{**FAST, "stall_timeout_s": 0.2})
    assert e.value.status == 504 and e.value.code == "stall_timeout" and engine.closed_early
    assert "round 1" in e.value.message


def test_progress_items_keep_a_non_streamed_round_alive():
    # no text is streamed, but progress items every 0.05 s: a 0.6 s round is not a stall
    script = [(0, {"type": "accepted"})]
    script += [(0.05, {"type": "progress", "round": 1}) for _ in range(12)]
    script += [
        (0, _round(1)),
        (0, {"type": "end", "stopped_early": False, "stop_reason": "rounds"}),
    ]
    engine = ScriptedEngine(script, hang=False)
    events = _run(engine, rounds=1, stream=False, **{**FAST, "stall_timeout_s": 0.2})
    assert [e for e, _ in events] == ["round", "end"]  # progress is not an event
    assert engine.calls[0] == {"rounds": 1, "deltas": False, "heartbeat_s": 0.05}


def test_steady_tokens_still_end_at_the_request_deadline():
    script = [(0, {"type": "accepted"})] + _tokens(1, 1000, 0.02)
    engine = ScriptedEngine(script)
    metrics = ServeMetrics("m")
    with pytest.raises(APIError) as e:
        _run(
            engine,
            metrics=metrics,
            **{**FAST, "request_timeout_s": 0.3, "first_token_timeout_s": 0.3},
        )
    assert e.value.status == 504 and e.value.code == "request_timeout" and engine.closed_early
    assert metrics.local["timeouts:limit=request_timeout,model=m"] == 1


def test_watched_passes_items_through_and_closes_the_source_on_expiry():
    engine = ScriptedEngine([(0, {"type": "accepted"}), (0, {"type": "delta", "round": 1})])

    async def go():
        seen = []
        with pytest.raises(APIError):
            async for item in watched(
                engine.refine("q", 1, {}, {}, False, "r", True, 1.0), Limits(stall_s=0.1)
            ):
                seen.append(item["type"])
        return seen

    assert asyncio.run(go()) == ["accepted", "delta"] and engine.closed_early
