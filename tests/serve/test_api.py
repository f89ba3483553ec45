"""The FastAPI routes without Ray: validation, auth, SSE and OpenAI formats over a fake engine
(``fake_backend`` / ``make_client`` in conftest.py)."""

from __future__ import annotations

from typing import Any

import pytest

from ptr_ray import prompts
from ptr_ray.config import ServeConfig
from ptr_ray.refine import round_prompt
from ptr_ray.serve.client import iter_sse


def events_of(text: str) -> list[tuple[str, Any]]:
    return list(iter_sse(iter(text.splitlines())))


def test_refine_returns_every_round_and_sends_the_growing_conversation(make_client):
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


def test_refine_defaults_and_messages_input(make_client):
    client, backend = make_client(default_rounds=2)
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    r = client.post("/v1/refine", json={"messages": msgs, "max_tokens": 7, "temperature": 0.5})
    assert r.status_code == 200, r.text
    assert len(r.json()["rounds"]) == 2
    assert backend.calls[0][1] == msgs
    assert backend.calls[0][2]["max_tokens"] == 7 and backend.calls[0][2]["temperature"] == 0.5


def test_stop_when_stable_ends_early(make_client, fake_backend):
    client, backend = make_client(fake_backend(["same thing", "Same  thing", "other"]))
    r = client.post("/v1/refine", json={"query": "q", "rounds": 5, "stop_when_stable": True})
    body = r.json()
    assert len(body["rounds"]) == 2 and body["stopped_early"] and body["stop_reason"] == "stable"
    assert len(backend.calls) == 2


def test_later_round_outgrowing_the_context_ends_with_the_answer_so_far(make_client, fake_backend):
    # round 1 fits; round 2's prompt (query + answer + instruction) does not
    backend = fake_backend(["a " * 30], context_tokens=40)
    client, _ = make_client(backend)
    r = client.post("/v1/refine", json={"query": "short question", "rounds": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["rounds"]) == 1 and body["stop_reason"] == "context_full"


def test_refine_stream_sends_deltas_rounds_and_done(make_client):
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


def test_chat_completions_openai_shape_and_usage(make_client):
    client, _ = make_client()
    r = client.post(
        "/v1/chat/completions",
        json={
            "model": "fake-model",
            "messages": [{"role": "user", "content": "hi"}],
            "refinement_rounds": 2,
            "max_completion_tokens": 9,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "fake-model"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "better answer"}
    assert body["choices"][0]["finish_reason"] == "stop"
    u = body["usage"]
    assert (
        u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
        and u["completion_tokens"] == 4
    )
    assert [x["round"] for x in body["refinement"]["rounds"]] == [1, 2]


def test_chat_stream_chunks_reasoning_then_content_then_done(make_client):
    client, _ = make_client()
    r = client.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "hi"}],
            "refinement_rounds": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert r.status_code == 200
    assert r.text.rstrip().endswith("data: [DONE]")
    chunks = [d for _, d in events_of(r.text)]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    reasoning = "".join(
        c["choices"][0]["delta"].get("reasoning_content") or "" for c in chunks if c["choices"]
    )
    assert content == "best answer" and reasoning == "first draftbetter answer"
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6


def test_chat_stream_stopped_early_sends_the_answer_as_content(make_client, fake_backend):
    client, _ = make_client(fake_backend(["x y", "x y"]))
    r = client.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "hi"}],
            "refinement_rounds": 4,
            "stream": True,
            "stop_when_stable": True,
        },
    )
    chunks = [d for _, d in events_of(r.text)]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert content == "x y"


def test_official_openai_client_works_with_extra_body(make_client):
    openai = pytest.importorskip("openai")
    client, backend = make_client()
    oa = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)
    resp = oa.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=32,
        extra_body={"refinement_rounds": 3},
    )
    assert resp.choices[0].message.content == "best answer"
    assert resp.usage.completion_tokens == 6 and len(backend.calls) == 3
    stream = oa.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_body={"refinement_rounds": 2},
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "better answer"
    assert [m.id for m in oa.models.list().data] == ["fake-model"]
    with pytest.raises(openai.BadRequestError, match="at most 5"):
        oa.chat.completions.create(
            model="fake-model",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"refinement_rounds": 6},
        )


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
    (
        "last message not user",
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        "last message",
    ),
    ("bad role", {"messages": [{"role": "robot", "content": "q"}]}, "'messages.0.role'"),
    ("empty messages", {"messages": []}, "'messages' is empty"),
    ("prompt too long", {"query": "word " * 200}, "context is 100"),
]


@pytest.mark.parametrize("name,body,message", BAD_REFINE, ids=[b[0] for b in BAD_REFINE])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_refine_input_is_a_4xx_with_openai_error(
    name, body, message, stream, make_client, fake_backend
):
    client, backend = make_client(fake_backend(context_tokens=100))
    if stream and isinstance(body, dict) and "stream" not in body:
        body = {**body, "stream": True}
    r = client.post("/v1/refine", json=body)
    assert 400 <= r.status_code < 500, r.text
    err = r.json()["error"]
    assert message in err["message"] and err["type"] == "invalid_request_error"
    assert set(err) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    "raw,message",
    [
        (b'{"query": "q",', "not valid JSON"),
        (b"", "body is empty"),
        (b"[1, 2]", "must be a JSON object"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_invalid_json_is_a_400(raw, message, make_client):
    client, _ = make_client()
    for path in ("/v1/refine", "/v1/chat/completions"):
        r = client.post(path, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and message in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "body,status,message",
    [
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "'n'"),
        (
            {"messages": [{"role": "user", "content": "hi"}], "refinement_rounds": 0},
            400,
            "refinement_rounds",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}], "tools": []},
            400,
            "unknown field 'tools'",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4"},
            404,
            "not served here",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "text content"),
        ({"model": "fake-model"}, 400, "missing field 'messages'"),
    ],
)
def test_bad_chat_input(body, status, message, make_client):
    client, _ = make_client()
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"]


def test_lenient_mode_ignores_unknown_fields(make_client):
    client, _ = make_client(strict=False)
    r = client.post("/v1/refine", json={"query": "q", "rounds": 1, "whatever": 1})
    assert r.status_code == 200


def test_unknown_route_and_method_are_json_errors(make_client):
    client, _ = make_client()
    r = client.get("/v1/nope")
    assert r.status_code == 404 and "error" in r.json()
    r = client.get("/v1/refine")
    assert r.status_code == 405 and "error" in r.json()


def test_bearer_auth(make_client):
    client, _ = make_client(api_key="sekrit")
    assert client.post("/v1/refine", json={"query": "q"}).status_code == 401
    bad = client.post("/v1/refine", json={"query": "q"}, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/v1/models").status_code == 401
    ok = client.post(
        "/v1/refine", json={"query": "q", "rounds": 1}, headers={"Authorization": "Bearer sekrit"}
    )
    assert ok.status_code == 200
    assert client.get("/healthz").status_code == 200  # probes need no token


def test_auth_is_checked_before_the_body(make_client):
    # a client without the key learns nothing about what the server would accept
    client, backend = make_client(api_key="sekrit")
    for path in ("/v1/refine", "/v1/chat/completions"):
        r = client.post(path, content=b'{"query": ', headers={"content-type": "application/json"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert backend.calls == []


def test_auth_key_from_environment(monkeypatch, make_client):
    monkeypatch.setenv("PTR_TEST_KEY", "k1")
    client, _ = make_client(api_key=None, api_key_env="PTR_TEST_KEY")
    assert client.post("/v1/refine", json={"query": "q"}).status_code == 401
    assert (
        client.post(
            "/v1/refine", json={"query": "q", "rounds": 1}, headers={"Authorization": "Bearer k1"}
        ).status_code
        == 200
    )


def test_health_and_models(make_client, fake_backend):
    client, _ = make_client()
    assert client.get("/healthz").json()["status"] == "ok"
    data = client.get("/v1/models").json()["data"]
    assert data[0]["id"] == "fake-model" and data[0]["max_model_len"] == 10_000
    sick, _ = make_client(fake_backend(healthy=False))
    r = sick.get("/healthz")
    # healthy or not, never the exception's text (the probe needs no key)
    assert r.status_code == 503 and r.json()["error"]["message"] == "engine is not healthy"
    assert "died" not in r.text and "RuntimeError" not in r.text


def test_metrics_count_rounds_and_tokens(make_client):
    client, _ = make_client()
    client.post("/v1/refine", json={"query": "q", "rounds": 3})
    m = client.app.state.metrics.local
    assert m["rounds:model=fake-model"] == 3
    assert m["tokens:kind=completion,model=fake-model"] == 6
    assert m["tokens:kind=cached,model=fake-model"] > 0
    assert m["requests:route=refine,status=200"] == 1
