"""The FastAPI app without Ray: validation, auth, SSE and OpenAI formats over a fake engine."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ptr_ray import prompts
from ptr_ray.config import SamplingConfig, ServeConfig, load_config
from ptr_ray.refine import round_prompt
from ptr_ray.serve.api import create_app, refine_events
from ptr_ray.serve.client import iter_sse, refine_command


class FakeBackend:
    """Answers round k with ``answers[k-1]`` (the last one repeats), word by word."""

    def __init__(self, answers: list[str] | None = None, context_tokens: int = 10_000,
                 delay_s: float = 0.0, healthy: bool = True) -> None:
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
            yield {"type": "error", "status": 400, "code": "context_length_exceeded",
                   "message": f"prompt has {n_prompt} tokens, the model's context is {self.context_tokens}"}
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
        yield {"type": "result", "text": answer, "tokens": len(words), "finish_reason": "stop",
               "prompt_tokens": n_prompt, "cached_tokens": max(0, n_prompt - 8) if k > 1 else 0,
               "latency_s": 0.01}

    async def info(self):
        return {"model_path": "/fake/model", "max_model_len": self.context_tokens}

    async def health(self):
        if not self.healthy:
            raise RuntimeError("engine core died")


def make_client(backend: FakeBackend | None = None, api_key: str | None = "", **cfg: Any):
    backend = backend or FakeBackend()
    config = ServeConfig.model_validate({"engine": {"model": "fake-model"}, "max_rounds": 5,
                                         "max_tokens_cap": 512, **cfg})
    app = create_app(backend, config, api_key=api_key)
    return TestClient(app), backend


def events_of(text: str) -> list[tuple[str, Any]]:
    return list(iter_sse(iter(text.splitlines())))


def test_refine_returns_every_round_and_sends_the_growing_conversation():
    client, backend = make_client()
    r = client.post("/v1/refine", json={"query": "What is 2+2?", "rounds": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["answer"] for x in body["rounds"]] == ["first draft", "better answer", "best answer"]
    assert body["final"] == "best answer" and body["stopped_early"] is False
    assert body["usage"]["completion_tokens"] == 2 + 2 + 2
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert r.headers["x-ptr-request-id"] == body["id"]
    assert backend.deltas_asked is False  # nobody streams: no per-token traffic from the engine
    # round k's prompt is exactly the shared format's round prompt with the earlier answers
    cfg = ServeConfig()
    sent = [msgs for _, msgs, _ in backend.calls]
    assert sent[0] == round_prompt("What is 2+2?", [], cfg.prompt)
    assert sent[2] == round_prompt("What is 2+2?", ["first draft", "better answer"], cfg.prompt)
    assert sent[2][-1]["content"] == prompts.DEFAULT_REFINE_INSTRUCTION
    assert backend.calls[0][2]["max_tokens"] == 256 and backend.calls[0][2]["temperature"] == 0.0


def test_refine_defaults_and_messages_input():
    client, backend = make_client(default_rounds=2)
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    r = client.post("/v1/refine", json={"messages": msgs, "max_tokens": 7, "temperature": 0.5})
    assert r.status_code == 200, r.text
    assert len(r.json()["rounds"]) == 2
    assert backend.calls[0][1] == msgs
    assert backend.calls[0][2]["max_tokens"] == 7 and backend.calls[0][2]["temperature"] == 0.5


def test_stop_when_stable_ends_early():
    client, backend = make_client(FakeBackend(["same thing", "Same  thing", "other"]))
    r = client.post("/v1/refine", json={"query": "q", "rounds": 5, "stop_when_stable": True})
    body = r.json()
    assert len(body["rounds"]) == 2 and body["stopped_early"] and body["stop_reason"] == "stable"
    assert len(backend.calls) == 2


def test_later_round_outgrowing_the_context_ends_with_the_answer_so_far():
    # round 1 fits; round 2's prompt (query + answer + instruction) does not
    backend = FakeBackend(["a " * 30], context_tokens=40)
    client, _ = make_client(backend)
    r = client.post("/v1/refine", json={"query": "short question", "rounds": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["rounds"]) == 1 and body["stop_reason"] == "context_full"


def test_refine_stream_sends_deltas_rounds_and_done():
    client, backend = make_client()
    r = client.post("/v1/refine", json={"query": "q", "rounds": 3, "stream": True})
    assert r.status_code == 200 and backend.deltas_asked is True
    assert r.headers["content-type"].startswith("text/event-stream")
    evs = events_of(r.text)
    kinds = [e for e, _ in evs]
    assert kinds[-1] == "done" and kinds.count("round") == 3
    round_at = [i for i, e in enumerate(kinds) if e == "round"]
    for k in (1, 2, 3):
        text = "".join(d["text"] for e, d in evs if e == "delta" and d["round"] == k)
        rnd = evs[round_at[k - 1]][1]
        assert rnd["round"] == k and text == rnd["answer"]
        # round k's deltas arrive after round k-1's event and before round k's event
        at = [i for i, (e, d) in enumerate(evs) if e == "delta" and d["round"] == k]
        assert (round_at[k - 2] if k > 1 else -1) < min(at) and max(at) < round_at[k - 1]
    assert evs[-1][1]["final"] == "best answer" and evs[-1][1]["rounds"] == 3


def test_chat_completions_openai_shape_and_usage():
    client, _ = make_client()
    r = client.post("/v1/chat/completions", json={
        "model": "fake-model", "messages": [{"role": "user", "content": "hi"}],
        "refinement_rounds": 2, "max_completion_tokens": 9})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "fake-model"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "better answer"}
    assert body["choices"][0]["finish_reason"] == "stop"
    u = body["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] and u["completion_tokens"] == 4
    assert [x["round"] for x in body["refinement"]["rounds"]] == [1, 2]


def test_chat_stream_chunks_reasoning_then_content_then_done():
    client, _ = make_client()
    r = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hi"}], "refinement_rounds": 3, "stream": True,
        "stream_options": {"include_usage": True}})
    assert r.status_code == 200
    assert r.text.rstrip().endswith("data: [DONE]")
    chunks = [d for _, d in events_of(r.text)]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning_content") or "" for c in chunks if c["choices"])
    assert content == "best answer" and reasoning == "first draftbetter answer"
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6


def test_chat_stream_stopped_early_sends_the_answer_as_content():
    client, _ = make_client(FakeBackend(["x y", "x y"]))
    r = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hi"}], "refinement_rounds": 4, "stream": True,
        "stop_when_stable": True})
    chunks = [d for _, d in events_of(r.text)]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert content == "x y"


def test_official_openai_client_works_with_extra_body():
    openai = pytest.importorskip("openai")
    client, backend = make_client()
    oa = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)
    resp = oa.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}],
                                      max_tokens=32, extra_body={"refinement_rounds": 3})
    assert resp.choices[0].message.content == "best answer"
    assert resp.usage.completion_tokens == 6 and len(backend.calls) == 3
    stream = oa.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}],
                                        stream=True, extra_body={"refinement_rounds": 2})
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "better answer"
    assert [m.id for m in oa.models.list().data] == ["fake-model"]
    with pytest.raises(openai.BadRequestError, match="at most 5"):
        oa.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}],
                                   extra_body={"refinement_rounds": 6})


BAD_REFINE = [
    ("missing query", {"rounds": 2}, "exactly one of 'query' or 'messages'"),
    ("empty query", {"query": "   "}, "'query' is empty"),
    ("both inputs", {"query": "q", "messages": [{"role": "user", "content": "q"}]}, "exactly one"),
    ("query wrong type", {"query": 5}, "'query'"),
    ("rounds wrong type", {"query": "q", "rounds": "three"}, "'rounds'"),
    ("rounds zero", {"query": "q", "rounds": 0}, "'rounds'"),
    ("rounds over max", {"query": "q", "rounds": 6}, "at most 5"),
    ("max_tokens over cap", {"query": "q", "max_tokens": 513}, "at most 512"),
    ("max_tokens negative", {"query": "q", "max_tokens": -1}, "'max_tokens'"),
    ("temperature negative", {"query": "q", "temperature": -0.1}, "'temperature'"),
    ("temperature too high", {"query": "q", "temperature": 9}, "'temperature' is 9"),
    ("unknown field", {"query": "q", "round": 3}, "unknown field 'round'"),
    ("stream wrong type", {"query": "q", "stream": {"a": 1}}, "'stream'"),
    ("last message not user", {"messages": [{"role": "user", "content": "q"},
                                            {"role": "assistant", "content": "a"}]}, "last message"),
    ("bad role", {"messages": [{"role": "robot", "content": "q"}]}, "'messages.0.role'"),
    ("empty messages", {"messages": []}, "'messages' is empty"),
    ("prompt too long", {"query": "word " * 200}, "context is 100"),
]


@pytest.mark.parametrize("name,body,message", BAD_REFINE, ids=[b[0] for b in BAD_REFINE])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_refine_input_is_a_4xx_with_openai_error(name, body, message, stream):
    client, backend = make_client(FakeBackend(context_tokens=100))
    if stream and isinstance(body, dict) and "stream" not in body:
        body = {**body, "stream": True}
    r = client.post("/v1/refine", json=body)
    assert 400 <= r.status_code < 500, r.text
    err = r.json()["error"]
    assert message in err["message"] and err["type"] == "invalid_request_error"
    assert set(err) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("raw,message", [
    (b'{"query": "q",', "not valid JSON"),
    (b"", "body is empty"),
    (b"[1, 2]", "must be a JSON object"),
    (b"\xff\xfe", "not valid JSON"),
])
def test_invalid_json_is_a_400(raw, message):
    client, _ = make_client()
    for path in ("/v1/refine", "/v1/chat/completions"):
        r = client.post(path, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and message in r.json()["error"]["message"]


@pytest.mark.parametrize("body,status,message", [
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "'n'"),
    ({"messages": [{"role": "user", "content": "hi"}], "refinement_rounds": 0}, 400, "refinement_rounds"),
    ({"messages": [{"role": "user", "content": "hi"}], "tools": []}, 400, "unknown field 'tools'"),
    ({"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4"}, 404, "not served here"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "text content"),
    ({"model": "fake-model"}, 400, "missing field 'messages'"),
])
def test_bad_chat_input(body, status, message):
    client, _ = make_client()
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"]


def test_lenient_mode_ignores_unknown_fields():
    client, _ = make_client(strict=False)
    r = client.post("/v1/refine", json={"query": "q", "rounds": 1, "whatever": 1})
    assert r.status_code == 200


def test_unknown_route_and_method_are_json_errors():
    client, _ = make_client()
    r = client.get("/v1/nope")
    assert r.status_code == 404 and "error" in r.json()
    r = client.get("/v1/refine")
    assert r.status_code == 405 and "error" in r.json()


def test_bearer_auth():
    client, _ = make_client(api_key="sekrit")
    assert client.post("/v1/refine", json={"query": "q"}).status_code == 401
    bad = client.post("/v1/refine", json={"query": "q"}, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/v1/models").status_code == 401
    ok = client.post("/v1/refine", json={"query": "q", "rounds": 1}, headers={"Authorization": "Bearer sekrit"})
    assert ok.status_code == 200
    assert client.get("/healthz").status_code == 200  # probes need no token


def test_auth_key_from_environment(monkeypatch):
    monkeypatch.setenv("PTR_TEST_KEY", "k1")
    client, _ = make_client(api_key=None, api_key_env="PTR_TEST_KEY")
    assert client.post("/v1/refine", json={"query": "q"}).status_code == 401
    assert client.post("/v1/refine", json={"query": "q", "rounds": 1},
                       headers={"Authorization": "Bearer k1"}).status_code == 200


def test_health_and_models():
    client, _ = make_client()
    assert client.get("/healthz").json()["status"] == "ok"
    data = client.get("/v1/models").json()["data"]
    assert data[0]["id"] == "fake-model" and data[0]["max_model_len"] == 10_000
    sick, _ = make_client(FakeBackend(healthy=False))
    r = sick.get("/healthz")
    assert r.status_code == 503 and "engine core died" in r.json()["error"]["message"]


def test_metrics_count_rounds_and_tokens():
    client, _ = make_client()
    client.post("/v1/refine", json={"query": "q", "rounds": 3})
    m = client.app.state.metrics.local
    assert m["rounds:model=fake-model"] == 3
    assert m["tokens:kind=completion,model=fake-model"] == 6
    assert m["tokens:kind=cached,model=fake-model"] > 0
    assert m["requests:route=refine,status=200"] == 1


def test_closing_the_event_stream_cancels_the_remaining_rounds():
    backend = FakeBackend(["one two three four five six"], delay_s=0.05)
    cfg = ServeConfig()

    async def run():
        events = refine_events(backend, "q", 4, SamplingConfig(), cfg, False, "req-x")
        async for kind, payload in events:
            if kind == "round":
                break
        await asyncio.sleep(0.1)  # round 2 is running now
        await events.aclose()
        await asyncio.sleep(0.3)

    asyncio.run(run())
    assert backend.states["req-x-r1"] == "finished"
    assert backend.states["req-x-r2"] == "cancelled"
    assert "req-x-r3" not in backend.states and "req-x-r4" not in backend.states


def test_refine_command_prints_rounds_as_they_arrive(monkeypatch, capsys):
    import httpx

    client, _ = make_client()
    monkeypatch.setattr(httpx, "stream", lambda method, url, **kw: client.stream(
        method, url.replace("http://127.0.0.1:8000", ""), json=kw["json"], headers=kw["headers"]))
    args = SimpleNamespace(query="What is 2+2?", rounds=3, url="http://127.0.0.1:8000",
                           max_tokens=16, temperature=None, api_key=None)
    assert refine_command(args) == 0
    out = capsys.readouterr().out
    assert out.index("── round 1 ──") < out.index("first draft") < out.index("── round 2 ──")
    assert "── final answer after 3 round(s) ──\nbest answer" in out
    bad = SimpleNamespace(**{**vars(args), "rounds": 99})
    with pytest.raises(ValueError, match="server answered 400: 'rounds' is 99"):
        refine_command(bad)


def test_iter_sse_parses_named_events_and_done():
    text = 'event: round\ndata: {"a": 1}\n\n: comment\ndata: {"b": 2}\n\ndata: [DONE]\n\n'
    assert list(iter_sse(iter(text.splitlines()))) == [("round", {"a": 1}), ("message", {"b": 2})]


@pytest.mark.parametrize("path", ["serve_configs/local.yaml", "serve_configs/gpu.yaml"])
def test_serve_config_files_load(path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(ServeConfig, root / path, ["port=8123", "engine.max_num_seqs=3"])
    assert cfg.port == 8123 and cfg.engine.max_num_seqs == 3
    assert cfg.engine_deployment.max_queued_requests > 0 and cfg.ingress_deployment.max_queued_requests > 0
    if "gpu" in path:
        assert cfg.engine.tensor_parallel_size == 2
        assert "num_replicas" not in cfg.engine_deployment.serve_options()  # autoscaled


def test_serve_config_rejects_bad_settings():
    from ptr_ray.config import ConfigError

    with pytest.raises(ConfigError, match="default_rounds 9 > max_rounds 8"):
        load_config(ServeConfig, None, ["default_rounds=9"])
    with pytest.raises(ConfigError, match="unknown config key 'roundz'"):
        load_config(ServeConfig, None, ["roundz=3"])
    with pytest.raises(ValueError, match="unknown deployment"):
        ServeConfig.model_validate({"applications": [{"args": {}, "deployments": [{"name": "X"}]}]})
    assert json.loads(ServeConfig().model_dump_json())["engine"]["enable_prefix_caching"] is True


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
    handle = SimpleNamespace(options=lambda **_: SimpleNamespace(
        stream=SimpleNamespace(remote=lambda *a: gen)))
    backend = HandleBackend(handle, first_item_timeout_s=0.2)

    async def run():
        async for _ in backend.stream([{"role": "user", "content": "q"}], {}, "r-r1"):
            pass

    with pytest.raises(APIError, match="did not start the round within") as err:
        asyncio.run(run())
    assert err.value.status == 503 and gen.cancelled
