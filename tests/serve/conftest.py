"""A fake engine for the serving tests that run without Ray: it answers like the real one
(token deltas, then a result; a context-length error for long prompts) and records what it
was asked, so the tests can check what the routes sent."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ptr_ray.config import ServeConfig
from ptr_ray.serve.api import create_app


class FakeBackend:
    """Answers round k with ``answers[k-1]`` (the last one repeats), word by word."""

    def __init__(
        self,
        answers: list[str] | None = None,
        context_tokens: int = 10_000,
        delay_s: float = 0.0,
        healthy: bool = True,
    ) -> None:
        self.answers = answers or ["first draft", "better answer", "best answer"]
        self.context_tokens = context_tokens
        self.delay_s = delay_s
        self.healthy = healthy
        self.calls: list[tuple[str, list[dict[str, str]], dict[str, Any]]] = []
        self.states: dict[str, str] = {}

    async def stream(self, messages, sampling, request_id, deltas=True):
        self.calls.append((request_id, messages, sampling))
        self.deltas_asked = deltas
        self.states[request_id] = "running"
        n_prompt = sum(len(m["content"].split()) + 4 for m in messages)
        if n_prompt >= self.context_tokens:
            self.states[request_id] = "rejected"
            yield {
                "type": "error",
                "status": 400,
                "code": "context_length_exceeded",
                "message": f"prompt has {n_prompt} tokens, the model's context is {self.context_tokens}",
            }
            return
        k = int(request_id.rsplit("-r", 1)[1])
        answer = self.answers[min(k, len(self.answers)) - 1]
        words = answer.split(" ")
        try:
            for i, w in enumerate(words):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                if deltas:
                    yield {"type": "delta", "text": w if i == 0 else " " + w}
        except (asyncio.CancelledError, GeneratorExit):
            self.states[request_id] = "cancelled"
            raise
        self.states[request_id] = "finished"
        yield {
            "type": "result",
            "text": answer,
            "tokens": len(words),
            "finish_reason": "stop",
            "prompt_tokens": n_prompt,
            "cached_tokens": max(0, n_prompt - 8) if k > 1 else 0,
            "latency_s": 0.01,
        }

    async def info(self):
        return {"model_path": "/fake/model", "max_model_len": self.context_tokens}

    async def health(self):
        if not self.healthy:
            raise RuntimeError("engine core died")


@pytest.fixture
def fake_backend() -> type[FakeBackend]:
    return FakeBackend


@pytest.fixture
def make_client():
    """``make_client(backend=None, api_key="", **serve_settings) -> (TestClient, backend)``."""

    def make_client(backend: FakeBackend | None = None, api_key: str | None = "", **cfg: Any):
        backend = backend or FakeBackend()
        config = ServeConfig.model_validate(
            {"engine": {"model": "fake-model"}, "max_rounds": 5, "max_tokens_cap": 512, **cfg}
        )
        app = create_app(backend, config, api_key=api_key)
        return TestClient(app), backend

    return make_client
