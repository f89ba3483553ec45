"""A refinement session: what happens to the engine's work when the consumer goes away."""

from __future__ import annotations

import asyncio

from ptr_ray.config import SamplingConfig, ServeConfig
from ptr_ray.serve.session import refine_events


def test_closing_the_event_stream_cancels_the_remaining_rounds(fake_backend):
    backend = fake_backend(["one two three four five six"], delay_s=0.05)
    cfg = ServeConfig()

    async def run():
        events = refine_events(backend, "q", 4, SamplingConfig(), cfg, False, "req-x")
        async for kind, _ in events:
            if kind == "round":
                break
        await asyncio.sleep(0.1)  # round 2 is running now
        await events.aclose()
        await asyncio.sleep(0.3)

    asyncio.run(run())
    assert backend.states["req-x-r1"] == "finished"
    assert backend.states["req-x-r2"] == "cancelled"
    assert "req-x-r3" not in backend.states and "req-x-r4" not in backend.states


def _drain(events, stop_at_first_round=False):
    async def go():
        async for kind, _ in events:
            if stop_at_first_round and kind == "round":
                break
        await events.aclose()

    asyncio.run(go())


def test_only_a_client_that_leaves_counts_as_cancelled(fake_backend):
    from ptr_ray.serve.metrics import ServeMetrics

    cfg = ServeConfig()
    metrics = ServeMetrics("m")
    backend = fake_backend(["one two three"], delay_s=0.01)
    _drain(refine_events(backend, "q", 2, SamplingConfig(), cfg, False, "a", metrics))
    assert metrics.local["rounds:model=m"] == 2 and "cancelled:model=m" not in metrics.local
    _drain(refine_events(backend, "q", 3, SamplingConfig(), cfg, False, "b", metrics), True)
    assert metrics.local["cancelled:model=m"] == 1


def test_a_streamed_run_gives_deltas_of_each_round_then_the_round(fake_backend):
    backend = fake_backend(["a b c", "d e"])
    cfg = ServeConfig()

    async def run():
        return [
            ev async for ev in refine_events(backend, "q", 2, SamplingConfig(), cfg, False, "s")
        ]

    events = asyncio.run(run())
    assert [k for k, _ in events] == ["delta"] * 3 + ["round"] + ["delta"] * 2 + ["round", "end"]
    assert events[0][1] == (1, "a") and events[4][1] == (2, "d")
    assert events[-1][1].stop_reason == "rounds" and not events[-1][1].stopped_early
