"""The ingress's handle backend without Ray: an engine that never answers is a 503, not a hang."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest


class _SlowGen:
    """Stands in for a DeploymentResponseGenerator whose replica never answers."""

    def __init__(self) -> None:
        self.cancelled = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        await asyncio.sleep(3600)

    def cancel(self) -> None:
        self.cancelled = True


def test_handle_backend_gives_503_when_no_engine_answers_in_time():
    from ptr_ray.serve.app import HandleBackend
    from ptr_ray.serve.errors import APIError

    gen = _SlowGen()
    handle = SimpleNamespace(
        options=lambda **_: SimpleNamespace(stream=SimpleNamespace(remote=lambda *a: gen))
    )
    backend = HandleBackend(handle, first_item_timeout_s=0.2)

    async def run():
        async for _ in backend.stream([{"role": "user", "content": "q"}], {}, "r-r1"):
            pass

    with pytest.raises(APIError, match="did not start the round within") as err:
        asyncio.run(run())
    assert err.value.status == 503 and gen.cancelled
