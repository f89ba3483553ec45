"""``ptr-ray refine`` and the SSE reader, against the app over the fake engine."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ptr_ray.serve.client import iter_sse, refine_command


def test_refine_command_prints_rounds_as_they_arrive(monkeypatch, capsys, make_client):
    import httpx

    client, _ = make_client()
    monkeypatch.setattr(
        httpx,
        "stream",
        lambda method, url, **kw: client.stream(
            method, url.replace("http://127.0.0.1:8000", ""), json=kw["json"], headers=kw["headers"]
        ),
    )
    args = SimpleNamespace(
        query="What is 2+2?",
        rounds=3,
        url="http://127.0.0.1:8000",
        max_tokens=16,
        temperature=None,
        api_key=None,
    )
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


def test_refine_command_sends_the_first_of_several_keys(monkeypatch, capsys, make_client):
    """The server's PTR_API_KEY may list several keys; a client with the same variable
    authenticates with the first one."""
    import httpx

    client, _ = make_client(api_key="k1,k2")
    sent = []

    def stream(method, url, **kw):
        sent.append(kw["headers"])
        return client.stream(
            method, url.replace("http://s", ""), json=kw["json"], headers=kw["headers"]
        )

    monkeypatch.setattr(httpx, "stream", stream)
    monkeypatch.setenv("PTR_API_KEY", " k1 ,k2")
    args = SimpleNamespace(
        query="q", rounds=1, url="http://s", max_tokens=None, temperature=None, api_key=None
    )
    assert refine_command(args) == 0
    assert sent == [{"Authorization": "Bearer k1"}]
    monkeypatch.setenv("PTR_API_KEY", "wrong")
    with pytest.raises(ValueError, match="server answered 401"):
        refine_command(args)


def test_an_empty_query_is_a_one_line_ptr_ray_error():
    from ptr_ray.errors import PtrRayValueError

    args = SimpleNamespace(query="  ", rounds=3, max_tokens=None, url="http://127.0.0.1:1")
    with pytest.raises(PtrRayValueError, match="the query is empty"):
        refine_command(args)
