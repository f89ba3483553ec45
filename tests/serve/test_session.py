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
