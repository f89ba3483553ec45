"""Auth fails closed (ptr_ray/serve/auth.py): no key on a reachable address refuses to start;
with a key, every route but /healthz (the docs and the schema included) needs it."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from ptr_ray.config import ServeConfig
from ptr_ray.errors import PtrRayValueError
from ptr_ray.serve.api import create_app
from ptr_ray.serve.auth import AuthConfigError, KeySlots, check_key, is_loopback, resolve_auth


def cfg(**kw) -> ServeConfig:
    return ServeConfig.model_validate({"engine": {"model": "fake-model"}, **kw})


@pytest.mark.parametrize(
    "host,loopback",
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.5", False),
        ("my-host.internal", False),  # a name could resolve anywhere: not loopback
    ],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "server.example"])
def test_no_key_on_a_reachable_host_refuses_to_start_in_one_line(host):
    with pytest.raises(AuthConfigError) as e:
        resolve_auth(cfg(host=host), api_key="")
    msg = str(e.value)
    assert "\n" not in msg and isinstance(e.value, PtrRayValueError)
    assert f"host {host} is not loopback" in msg
    assert "$PTR_API_KEY" in msg and "auth: off" in msg
    # the app refuses too, whichever way the bind address is given
    with pytest.raises(AuthConfigError):
        create_app(object(), cfg(host=host), api_key="")  # type: ignore[arg-type]
    with pytest.raises(AuthConfigError):
        create_app(object(), cfg(), api_key="", bind_host=host)  # type: ignore[arg-type]


def test_auth_required_refuses_even_on_loopback():
    with pytest.raises(AuthConfigError, match=r"auth: required.*\$MY_KEY"):
        resolve_auth(cfg(auth="required", api_key_env="MY_KEY"), api_key="")
    assert resolve_auth(cfg(auth="required"), api_key="k") == ("k",)


def test_auth_off_is_explicit_and_logged(caplog):
    with caplog.at_level(logging.INFO, logger="ptr_ray.serve.auth"):
        assert resolve_auth(cfg(host="0.0.0.0", auth="off"), api_key="") == ()
        assert resolve_auth(cfg(auth="off"), api_key="k") == ()  # the key is ignored, and said so
    text = caplog.text
    assert "auth is OFF (auth: off" in text and "is set but ignored" in text


def test_the_server_logs_whether_auth_is_on(caplog):
    with caplog.at_level(logging.INFO, logger="ptr_ray.serve.auth"):
        create_app(object(), cfg(host="0.0.0.0"), api_key="a,b")  # type: ignore[arg-type]
        create_app(object(), cfg(), api_key="")  # type: ignore[arg-type]
    assert "auth is on: 2 key(s) from $PTR_API_KEY" in caplog.text
    assert "auth is OFF: $PTR_API_KEY is unset (allowed on loopback host 127.0.0.1)" in caplog.text


def test_key_from_environment_several_keys(monkeypatch):
    monkeypatch.setenv("PTR_API_KEY", " k1 , k2,,")
    assert resolve_auth(cfg(host="0.0.0.0")) == ("k1", "k2")
    monkeypatch.setenv("PTR_API_KEY", " , ")
    with pytest.raises(AuthConfigError):  # blank is no key
        resolve_auth(cfg(host="0.0.0.0"))


def test_check_key():
    keys = ("alpha", "beta")
    assert check_key("Bearer beta", keys) == "beta"
    assert check_key("bearer  alpha ", keys) == "alpha"
    for header in ("", "Bearer", "Bearer alph", "Basic alpha", "alpha", "Bearer alpha beta"):
        assert check_key(header, keys) is None, header


AUTH = {"Authorization": "Bearer sekrit"}


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc", "/v1/models"])
def test_docs_and_schema_need_the_key_when_auth_is_on(path, make_client):
    client, _ = make_client(api_key="sekrit")
    r = client.get(path)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert client.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get(path, headers=AUTH).status_code == 200
    assert client.get("/healthz").status_code == 200  # the probe stays open


def test_docs_are_served_without_auth_on_loopback(make_client):
    client, _ = make_client()
    assert client.get("/openapi.json").json()["info"]["title"] == "ptr-ray"
    assert "swagger-ui" in client.get("/docs").text
    assert "/openapi.json" in client.get("/redoc").text


def test_every_configured_key_is_accepted(make_client):
    client, _ = make_client(api_key="one,two")
    for key in ("one", "two"):
        r = client.post(
            "/v1/refine",
            json={"query": "q", "rounds": 1},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 200, r.text
    r = client.post("/v1/refine", json={"query": "q"}, headers={"Authorization": "Bearer one,two"})
    assert r.status_code == 401


def test_key_slots_count_per_caller():
    slots = KeySlots(2)
    assert slots.acquire("a") and slots.acquire("a") and not slots.acquire("a")
    assert slots.acquire("b")
    slots.release("a")
    assert slots.acquire("a")
    for _ in range(2):
        slots.release("a")
    slots.release("b")
    assert not slots.running
    assert all(KeySlots(None).acquire("x") for _ in range(100))


def _asgi_client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def test_per_key_concurrency_limit_is_a_429_naming_the_limit(fake_backend):
    """A slow request holds its key's only slot: a second one with that key gets a 429 at
    once, another key does not; the slot comes back when the first answer (a stream too) ends."""
    backend = fake_backend(["w " * 10], delay_s=0.05)
    app = create_app(
        backend,
        cfg(max_concurrent_per_key=1, max_rounds=5, max_tokens_cap=512),
        api_key="k1,k2",
    )
    ctx = app.state.serve
    k1, k2 = ({"Authorization": f"Bearer {k}"} for k in ("k1", "k2"))

    async def scenario():
        async with _asgi_client(app) as client:
            body = {"query": "q", "rounds": 2, "stream": True}
            slow = asyncio.create_task(client.post("/v1/refine", json=body, headers=k1))
            while len(backend.calls) < 2:  # the first one is streaming: round 1 went out
                await asyncio.sleep(0.01)
            t0 = asyncio.get_running_loop().time()
            refused = await client.post("/v1/refine", json=body, headers=k1)
            refused_after = asyncio.get_running_loop().time() - t0
            other = await client.post("/v1/refine", json={"query": "q", "rounds": 1}, headers=k2)
            first = await slow
            again = await client.post("/v1/refine", json={"query": "q", "rounds": 1}, headers=k1)
            return refused, refused_after, other, first, again

    refused, refused_after, other, first, again = asyncio.run(scenario())
    assert refused.status_code == 429 and refused_after < 1.0
    err = refused.json()["error"]
    assert "max_concurrent_per_key" in err["message"] and err["code"] == "limit_exceeded"
    assert err["type"] == "rate_limit_error" and refused.headers["retry-after"] == "1"
    assert other.status_code == 200 and first.status_code == 200 and again.status_code == 200
    assert "event: done" in first.text
    assert not ctx.slots.running  # every slot was given back


def test_failed_requests_give_their_slot_back(make_client):
    client, _ = make_client(max_concurrent_per_key=1)
    for body in ({"query": ""}, {"query": "q", "rounds": 99}, {"query": "q", "rounds": 1}):
        client.post("/v1/refine", json=body)
    client.post("/v1/refine", content=b"[[[", headers={"content-type": "application/json"})
    assert not client.app.state.serve.slots.running
    assert client.post("/v1/refine", json={"query": "q", "rounds": 1}).status_code == 200
