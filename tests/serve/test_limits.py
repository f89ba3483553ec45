"""Bounded cost per request: every limit is enforced in the ingress, before the engine is
asked anything, and answers a 4xx OpenAI-style error that names the limit (deps.py, body.py)."""

from __future__ import annotations

import asyncio
import json

import pytest

from ptr_ray.config import ServeConfig
from ptr_ray.serve.api import create_app
from ptr_ray.serve.body import json_depth_exceeds

USER = [{"role": "user", "content": "hi"}]


def _refused(r, status: int, limit: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert limit in err["message"], err
    return err


LIMITED = [
    # (name, path, body, limit named, param)
    (
        "budget",
        "/v1/refine",
        {"query": "q", "rounds": 5, "max_tokens": 300},
        "max_total_tokens",
        "max_tokens",
    ),
    (
        "budget chat",
        "/v1/chat/completions",
        {"messages": USER, "refinement_rounds": 4, "max_completion_tokens": 400},
        "max_total_tokens",
        "max_tokens",
    ),
    (
        "stop count",
        "/v1/refine",
        {"query": "q", "stop": ["a", "b", "c", "d", "e"]},
        "max_stop_sequences",
        "stop",
    ),
    ("stop length", "/v1/refine", {"query": "q", "stop": "x" * 65}, "max_stop_chars", "stop"),
    (
        "stop length list",
        "/v1/chat/completions",
        {"messages": USER, "stop": ["ok", "y" * 65]},
        "max_stop_chars",
        "stop",
    ),
    ("prompt chars", "/v1/refine", {"query": "x" * 2001}, "max_prompt_chars", "query"),
    (
        "prompt chars messages",
        "/v1/chat/completions",
        {
            "messages": [
                {"role": "system", "content": "s" * 1500},
                {"role": "user", "content": "u" * 501},
            ]
        },
        "max_prompt_chars",
        "messages",
    ),
    ("message count", "/v1/refine", {"messages": USER * 9}, "max_messages", "messages"),
    ("rounds", "/v1/refine", {"query": "q", "rounds": 6}, "max_rounds", "rounds"),
    (
        "max_tokens",
        "/v1/chat/completions",
        {"messages": USER, "max_tokens": 513},
        "max_tokens_cap",
        "max_tokens",
    ),
    (
        "temperature",
        "/v1/refine",
        {"query": "q", "temperature": 2.5},
        "max_temperature",
        "temperature",
    ),
]


@pytest.mark.parametrize("name,path,body,limit,param", LIMITED, ids=[x[0] for x in LIMITED])
def test_each_limit_is_a_400_naming_it_and_the_engine_is_not_asked(
    name, path, body, limit, param, make_client
):
    client, backend = make_client(max_total_tokens=1024, max_prompt_chars=2000, max_messages=8)
    err = _refused(client.post(path, json=body), 400, limit)
    assert err["code"] == "limit_exceeded" and err["param"] == param
    assert backend.calls == []


def test_limits_at_their_edge_are_accepted(make_client):
    client, backend = make_client(max_total_tokens=1024, max_prompt_chars=2000, max_messages=8)
    ok = [
        {"query": "q", "rounds": 4, "max_tokens": 256, "stop": ["a", "b", "c", "d"]},
        {"query": "x" * 2000, "rounds": 1, "stop": "y" * 64},
        {"messages": USER * 8, "rounds": 1},
    ]
    for body in ok:
        r = client.post("/v1/refine", json=body)
        assert r.status_code == 200, r.text
    assert backend.calls[0][2]["stop"] == ["a", "b", "c", "d"]


def test_empty_stop_entry_is_a_400(make_client):
    client, _ = make_client()
    r = client.post("/v1/refine", json={"query": "q", "stop": ["ok", ""]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop"


def test_default_budget_must_fit_the_config():
    with pytest.raises(
        ValueError, match="default_rounds x default_max_tokens = 1024 > max_total_tokens 512"
    ):
        ServeConfig(default_rounds=4, default_max_tokens=256, max_total_tokens=512)


# -- the body: size before reading, depth, strict JSON ---------------------------------------


def _call_asgi(app, headers: list[tuple[bytes, bytes]], chunks: list[bytes]):
    """Drive the app with a hand-written ASGI request; returns (status, body, chunks read)."""
    read = []
    sent: list[dict] = []

    async def receive():
        if read.__len__() < len(chunks):
            chunk = chunks[len(read)]
            read.append(chunk)
            return {"type": "http.request", "body": chunk, "more_body": len(read) < len(chunks)}
        await asyncio.sleep(3600)  # a client that never sends more

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/refine",
        "raw_path": b"/v1/refine",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"t"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 1234),
        "server": ("t", 80),
    }
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), len(read)


def _app(fake_backend, **kw):
    cfg = ServeConfig.model_validate({"engine": {"model": "fake-model"}, **kw})
    return create_app(fake_backend(), cfg, api_key="")


def test_content_length_is_checked_before_the_body_is_read(fake_backend):
    app = _app(fake_backend, max_body_bytes=4096)
    status, body, read = _call_asgi(app, [(b"content-length", b"1000000000")], [b"{" * 100])
    assert status == 413 and read == 0  # refused on the header alone
    assert (
        "max_body_bytes" in body["error"]["message"] and body["error"]["code"] == "limit_exceeded"
    )
    status, body, _ = _call_asgi(app, [(b"content-length", b"12abc")], [b"{}"])
    assert status == 400 and "Content-Length" in body["error"]["message"]


def test_a_chunked_body_is_read_only_up_to_the_cap(fake_backend):
    app = _app(fake_backend, max_body_bytes=4096)
    chunks = [b" " * 1024] * 1000  # 1 MB offered, no Content-Length
    status, body, read = _call_asgi(app, [], chunks)
    assert status == 413 and "4096 bytes (max_body_bytes)" in body["error"]["message"]
    assert read <= 5  # stopped at the cap, not at the end of the upload


def test_a_body_that_fits_is_read_whole(fake_backend):
    app = _app(fake_backend)
    raw = json.dumps({"query": "q", "rounds": 1}).encode()
    status, body, _ = _call_asgi(
        app, [(b"content-length", str(len(raw)).encode())], [raw[:5], raw[5:]]
    )
    assert status == 200 and body["final"] == "first draft"


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000,  # the recursion-limit bomb: RecursionError inside json
        b'{"query": "q", "messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        b'{"query": "q", "x": ' + b'{"a": ' * 20 + b"1" + b"}" * 20 + b"}",  # just past 16
    ],
    ids=["unclosed", "deep-valid-json", "past-the-cap"],
)
def test_nested_json_bombs_are_a_400(raw, make_client):
    client, backend = make_client()
    for path in ("/v1/refine", "/v1/chat/completions"):
        r = client.post(path, content=raw, headers={"content-type": "application/json"})
        err = _refused(r, 400, "max_json_depth")
        assert err["code"] == "limit_exceeded"
    assert backend.calls == []


def test_json_depth_counting():
    assert not json_depth_exceeds({"a": [1, {"b": []}]}, 4)
    assert json_depth_exceeds({"a": [1, {"b": []}]}, 3)
    assert not json_depth_exceeds({}, 1)
    deep: list = []
    for _ in range(100_000):  # deeper than Python's recursion limit: counted without recursion
        deep = [deep]
    assert json_depth_exceeds(deep, 64)


@pytest.mark.parametrize(
    "raw,message",
    [
        (b'{"query": "q", "temperature": NaN}', "NaN is not valid JSON"),
        (b'{"query": "q", "top_p": Infinity}', "Infinity is not valid JSON"),
        (b'{"query": "q", "seed": ' + b"9" * 5000 + b"}", "Exceeds the limit"),
        (b'{"query": "\xff"}', "not UTF-8"),
    ],
)
def test_json_that_python_would_accept_or_crash_on_is_a_400(raw, message, make_client):
    client, _ = make_client()
    r = client.post("/v1/refine", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text


@pytest.mark.parametrize(
    "body,param",
    [
        ({"query": "q", "rounds": "3"}, "rounds"),
        ({"query": "q", "rounds": 2.0}, "rounds"),
        ({"query": "q", "stream": 1}, "stream"),
        ({"query": "q", "stream": "true"}, "stream"),
        ({"query": 5}, "query"),
        ({"query": "q", "seed": 2**63}, "seed"),
    ],
)
def test_types_are_strict_as_the_schema_says(body, param, make_client):
    client, backend = make_client()
    r = client.post("/v1/refine", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert backend.calls == []


def test_openapi_documents_bodies_limits_and_errors(make_client):
    client, _ = make_client(max_total_tokens=1024, max_prompt_chars=2000, max_messages=8)
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for path, name in (
        ("/v1/refine", "RefineRequest"),
        ("/v1/chat/completions", "ChatCompletionRequest"),
    ):
        op = spec["paths"][path]["post"]
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{name}" and op["requestBody"]["required"]
        for status in ("400", "401", "413", "429", "503"):
            err = op["responses"][status]["content"]["application/json"]["schema"]
            assert err == {"$ref": "#/components/schemas/ErrorResponse"}
        assert "422" not in op["responses"]  # FastAPI's default shape is never answered
        assert schemas[name]["additionalProperties"] is False  # strict: unknown fields refused
        assert "max_total_tokens" in schemas[name]["description"]
    refine = schemas["RefineRequest"]["properties"]
    assert {"maximum": 5, "minimum": 1, "type": "integer"} in refine["rounds"]["anyOf"]
    assert {"maximum": 512, "minimum": 1, "type": "integer"} in refine["max_tokens"]["anyOf"]
    stop = {b["type"]: b for b in refine["stop"]["anyOf"]}
    assert stop["array"]["maxItems"] == 4 and stop["string"]["maxLength"] == 64
    assert {"type": "string", "enum": ["fake-model"]} in refine["model"]["anyOf"]
    query = next(b for b in refine["query"]["anyOf"] if b["type"] == "string")
    assert query["maxLength"] == 2000
    chat = schemas["ChatCompletionRequest"]["properties"]
    assert chat["messages"]["maxItems"] == 8
    assert set(schemas["ErrorResponse"]["properties"]) == {"error"}
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_lenient_server_documents_lenient_bodies(make_client):
    client, _ = make_client(strict=False)
    spec = client.get("/openapi.json").json()
    for path, name in (
        ("/v1/refine", "RefineRequest"),
        ("/v1/chat/completions", "ChatCompletionRequest"),
    ):
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"]["$ref"] == f"#/components/schemas/{name}"
        assert spec["components"]["schemas"][name].get("additionalProperties") is not False
