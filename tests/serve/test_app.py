"""The Serve side without Ray: the ingress's handle backend (one call per request, Serve's
failures as 503s, the call cancelled when its reader leaves) and the engine replica's side
(all rounds of a request on the replica's one engine, deltas coalesced, progress heartbeats,
outcomes counted, aborts)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from ptr_ray.config import PromptConfig, SamplingConfig, ServeConfig
from ptr_ray.engine import Completion, Generation, PromptTooLongError
from ptr_ray.serve.errors import APIError
from ptr_ray.serve.session import refine_events, run_items


class _Gen:
    """Stands in for a DeploymentResponseGenerator: plays ``items``, then hangs or raises."""

    def __init__(self, items=(), hang=True, error: Exception | None = None) -> None:
        self.items = list(items)
        self.hang = hang
        self.error = error
        self.cancelled = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.items:
            return self.items.pop(0)
        if self.error is not None:
            raise self.error
        if self.hang:
            await asyncio.sleep(3600)
        raise StopAsyncIteration

    def cancel(self) -> None:
        self.cancelled = True


def _handle(gen, calls=None):
    def remote(*args):
        if calls is not None:
            calls.append(args)
        return gen

    return SimpleNamespace(
        options=lambda **_: SimpleNamespace(refine=SimpleNamespace(remote=remote))
    )


def _events(backend, rounds=1, **cfg):
    config = ServeConfig.model_validate({"engine": {"model": "fake"}, **cfg})

    async def go():
        return [
            ev
            async for ev in refine_events(
                backend, "q", rounds, SamplingConfig(), config, False, "req-1"
            )
        ]

    return asyncio.run(go())


def test_handle_backend_gives_503_when_no_engine_replica_takes_the_request():
    from ptr_ray.serve.app import HandleBackend

    gen = _Gen()
    with pytest.raises(APIError, match="no engine replica took the request within") as err:
        _events(HandleBackend(_handle(gen)), first_token_timeout_s=0.2)
    assert err.value.status == 503 and err.value.headers == {"Retry-After": "5"}
    assert gen.cancelled  # the call is cancelled, so a late replica does not do the work


def test_handle_backend_makes_one_call_per_request_and_passes_items():
    from ptr_ray.serve.app import HandleBackend

    items = [
        {"type": "accepted"},
        {"type": "progress", "round": 1},
        {
            "type": "round",
            "round": 1,
            "answer": "a",
            "tokens": 1,
            "finish_reason": "stop",
            "latency_s": 0.1,
            "prompt_tokens": 5,
            "cached_tokens": 0,
        },
        {"type": "end", "stopped_early": False, "stop_reason": "rounds"},
    ]
    calls: list = []
    gen = _Gen(items, hang=False)
    events = _events(HandleBackend(_handle(gen, calls)), stall_timeout_s=8)
    assert [e for e, _ in events] == ["round", "end"] and not gen.cancelled
    (args,) = calls  # one handle call for the whole request
    query, rounds, sampling, prompt, stable, rid, deltas, heartbeat = args
    assert (query, rounds, rid, deltas, heartbeat) == ("q", 1, "req-1", True, 1.0)
    assert sampling == SamplingConfig().model_dump() and prompt == PromptConfig().model_dump()


def test_handle_backend_turns_a_failed_replica_into_a_retryable_503():
    from ptr_ray.serve.app import HandleBackend

    gen = _Gen([{"type": "accepted"}], error=RuntimeError("ActorDiedError: replica gone"))
    with pytest.raises(APIError) as err:
        _events(HandleBackend(_handle(gen)))
    assert err.value.status == 503 and err.value.code == "engine_unavailable"
    assert err.value.headers == {"Retry-After": "2"}


class FakeAsyncEngine:
    """Speaks AsyncVLLMEngine.stream: text deltas, then a Generation; remembers every request
    it served and which ones were closed before they finished (aborted in vLLM)."""

    def __init__(self, words=8, delay_s=0.0, fail=False, too_long_after=None) -> None:
        self.words = words
        self.delay_s = delay_s
        self.fail = fail
        self.too_long_after = too_long_after
        self.requests: list[str] = []
        self.aborted: list[str] = []
        self.closed = False

    def close(self) -> None:  # the replica closes its engine when it goes away
        self.closed = True

    async def stream(self, conversation, sampling, request_id=None):
        self.requests.append(request_id)
        if self.too_long_after is not None and len(self.requests) > self.too_long_after:
            raise PromptTooLongError(2000, 1024)
        done = False
        try:
            for i in range(self.words):
                await asyncio.sleep(self.delay_s)
                if self.fail and i == 2:
                    raise RuntimeError("EngineDeadError")
                yield f"w{i} "
            done = True
        finally:
            if not done:
                self.aborted.append(request_id)
        text = "".join(f"w{i} " for i in range(self.words))
        n = len(conversation)
        yield Generation([Completion(text, self.words, "stop")], prompt_tokens=10 * n)


class Counts:
    def __init__(self) -> None:
        self.requests = 0
        self.rounds_started = 0
        self.outcomes: list[str] = []

    def request(self) -> None:
        self.requests += 1

    def started(self) -> None:
        self.rounds_started += 1

    def ended(self, outcome: str) -> None:
        self.outcomes.append(outcome)


def _replica(engine):
    """An EngineDeployment replica object around a fake engine (Serve's constructor skipped)."""
    from ptr_ray.serve.app import EngineDeployment

    cls = EngineDeployment.func_or_class
    replica = cls.__new__(cls)
    replica.engine = engine
    replica.metrics = Counts()
    return replica


async def _collect(agen, stop_after=None):
    out = []
    try:
        async for item in agen:
            out.append(item)
            if stop_after is not None and stop_after(item):
                break
    finally:
        await agen.aclose()
    return out


def _refine(replica, rounds=3, deltas=True, heartbeat_s=1.0, stop_after=None):
    gen = replica.refine(
        "q",
        rounds,
        SamplingConfig().model_dump(),
        PromptConfig().model_dump(),
        False,
        "req-7",
        deltas,
        heartbeat_s,
    )
    return asyncio.run(_collect(gen, stop_after))


def test_engine_replica_runs_every_round_of_a_request_itself():
    engine = FakeAsyncEngine(words=5)
    replica = _replica(engine)
    items = _refine(replica, rounds=3)
    kinds = [i["type"] for i in items]
    assert kinds[0] == "accepted" and kinds[-1] == "end" and kinds.count("round") == 3
    assert engine.requests == ["req-7-r1", "req-7-r2", "req-7-r3"]  # one engine, all rounds
    rounds = [i for i in items if i["type"] == "round"]
    assert [r["prompt_tokens"] for r in rounds] == [10, 30, 50]  # the conversation grows
    for k in (1, 2, 3):
        text = "".join(i["text"] for i in items if i["type"] == "delta" and i["round"] == k)
        assert text == rounds[k - 1]["answer"]
    m = replica.metrics
    assert (m.requests, m.rounds_started, m.outcomes) == (1, 3, ["finished"] * 3)


def test_engine_replica_coalesces_deltas_but_sends_the_first_token_at_once():
    engine = FakeAsyncEngine(words=20, delay_s=0.001)
    items = _refine(_replica(engine), rounds=1)
    deltas = [i for i in items if i["type"] == "delta"]
    assert deltas[0]["text"] == "w0 "  # the first token alone: the first-token timer stops
    assert 2 <= len(deltas) < 20  # the rest coalesced (at most one item per 20 ms)


def test_engine_replica_sends_progress_instead_of_text_when_not_streaming():
    engine = FakeAsyncEngine(words=30, delay_s=0.01)
    items = _refine(_replica(engine), rounds=1, deltas=False, heartbeat_s=0.05)
    kinds = [i["type"] for i in items]
    assert "delta" not in kinds and kinds.index("progress") == 1  # right after "accepted"
    assert 3 <= kinds.count("progress") <= 8  # ~0.3 s of tokens, one heartbeat per 0.05 s


def test_closing_the_request_aborts_the_running_round_and_starts_no_other():
    engine = FakeAsyncEngine(words=50, delay_s=0.01)
    replica = _replica(engine)
    _refine(replica, rounds=3, stop_after=lambda i: i["type"] == "delta" and i["round"] == 2)
    assert engine.requests == ["req-7-r1", "req-7-r2"] and engine.aborted == ["req-7-r2"]
    assert replica.metrics.outcomes == ["finished", "cancelled"]


def test_engine_replica_reports_a_long_prompt_and_an_engine_failure():
    items = _refine(_replica(FakeAsyncEngine(too_long_after=0)), rounds=2)
    assert items[-1]["type"] == "error" and items[-1]["status"] == 400
    assert items[-1]["code"] == "context_length_exceeded"
    # round 2 outgrows the context: the run ends with round 1's answer
    replica = _replica(FakeAsyncEngine(words=3, too_long_after=1))
    items = _refine(replica, rounds=3)
    assert items[-1] == {"type": "end", "stopped_early": True, "stop_reason": "context_full"}
    assert replica.metrics.outcomes == ["finished", "rejected"]
    replica = _replica(FakeAsyncEngine(words=5, fail=True))
    items = _refine(replica, rounds=2)
    assert items[-1]["type"] == "error" and items[-1]["status"] == 503
    assert items[-1]["code"] == "engine_error" and replica.metrics.outcomes == ["failed"]


def test_run_items_starts_with_accepted_and_names_each_rounds_request(fake_backend):
    backend = fake_backend(["a b", "c d"])

    async def go():
        return await _collect(
            run_items(backend, "q", 2, SamplingConfig().model_dump(), PromptConfig(), False, "x")
        )

    items = asyncio.run(go())
    assert items[0] == {"type": "accepted"} and items[-1]["type"] == "end"
    assert [c[0] for c in backend.calls] == ["x-r1", "x-r2"]


def test_ptr_ray_serve_refuses_a_public_host_without_a_key_before_starting_anything(monkeypatch):
    import ray

    from ptr_ray.serve.app import run_serve
    from ptr_ray.serve.auth import AuthConfigError

    monkeypatch.delenv("PTR_API_KEY", raising=False)
    cfg = ServeConfig.model_validate({"engine": {"model": "/no/such/model"}, "host": "0.0.0.0"})
    was_up = ray.is_initialized()
    with pytest.raises(AuthConfigError, match="PTR_API_KEY"):
        run_serve(cfg)  # not the model error: auth is checked first, and Ray is not started
    assert ray.is_initialized() == was_up
