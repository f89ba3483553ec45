"""The real serving path: Ray Serve + FastAPI ingress + vLLM engine deployment (tiny model).

One application is deployed for the module (about 30 s to start); tests share it and the
replica-kill test runs last. The deployment has no test hooks: tests watch it from outside,
through Ray's Prometheus endpoint (what an operator sees) and the process table.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from types import SimpleNamespace

import httpx
import pytest

from ptr_ray.config import ServeConfig
from ptr_ray.serve.client import iter_sse, refine_command
from ptr_ray.serve.config_file import ENGINE_DEPLOYMENT_NAME
from ptr_ray.testing import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
APP = "ptr-serve-test"
# ~250 tokens for the tiny tokenizer: round 1's prompt fills at least one 128-token KV block,
# so later rounds must find it in the prefix cache.
LONG_QUERY = "The quick brown fox jumps over the lazy dog. " * 25 + "What is 2+2?"


@pytest.fixture(scope="module")
def server(ray_local, tiny_model_dir):
    from ray import serve

    from ptr_ray.serve.app import build_application

    port = free_port()
    cfg = ServeConfig.model_validate(
        {
            "engine": {
                "model": str(tiny_model_dir),
                "dtype": "float32",
                "max_model_len": 1024,
                "max_num_seqs": 16,
            },
            "host": "127.0.0.1",
            "port": port,
            "app_name": APP,
            "model_name": "tiny",
            "max_rounds": 8,
            "max_tokens_cap": 512,
            "default_max_tokens": 32,
            "first_token_timeout_s": 15,
            # Small ingress limits so the overload test can fill them with a handful of requests.
            "ingress_deployment": {
                "max_ongoing_requests": 4,
                "max_queued_requests": 2,
                "ray_actor_options": {
                    "num_cpus": 0.5,
                    "runtime_env": {"env_vars": {"PTR_API_KEY": KEY}},
                },
            },
            "engine_deployment": {
                "max_ongoing_requests": 64,
                "max_queued_requests": 64,
                "health_check_period_s": 2,
                "health_check_timeout_s": 30,
            },
        }
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    t0 = time.time()
    serve.run(build_application(cfg), name=APP, route_prefix="/")
    print(f"serve app ready in {time.time() - t0:.1f}s")
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}", cfg=cfg)
    serve.shutdown()


def post(server, path, body, timeout=120, headers=AUTH):
    return httpx.post(server.url + path, json=body, headers=headers, timeout=timeout)


def test_health_models_and_auth(server):
    assert httpx.get(server.url + "/healthz", timeout=30).json()["status"] == "ok"
    r = httpx.get(server.url + "/v1/models", headers=AUTH, timeout=30)
    assert r.json()["data"][0]["id"] == "tiny" and r.json()["data"][0]["max_model_len"] == 1024
    r = post(server, "/v1/refine", {"query": "hi", "rounds": 1}, headers={})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_refine_rounds_use_the_prefix_cache(server):
    r = post(server, "/v1/refine", {"query": LONG_QUERY, "rounds": 3, "max_tokens": 24})
    assert r.status_code == 200, r.text
    rounds = r.json()["rounds"]
    assert [x["round"] for x in rounds] == [1, 2, 3]
    assert rounds[0]["prompt_tokens"] >= 128
    assert rounds[0]["prompt_tokens"] < rounds[1]["prompt_tokens"] < rounds[2]["prompt_tokens"]
    assert all(x["tokens"] >= 1 and x["finish_reason"] in ("stop", "length") for x in rounds)
    # the earlier rounds' tokens come from the engine's prefix cache
    assert (
        rounds[1]["cached_tokens"] >= 128
        and rounds[2]["cached_tokens"] >= rounds[1]["cached_tokens"]
    )
    assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] >= 256


def test_refine_stream_deltas_match_rounds(server):
    with httpx.stream(
        "POST",
        server.url + "/v1/refine",
        headers=AUTH,
        timeout=120,
        json={"query": "What is 2+2?", "rounds": 2, "max_tokens": 12, "stream": True},
    ) as r:
        assert r.status_code == 200
        evs = list(iter_sse(r.iter_lines()))
    kinds = [e for e, _ in evs]
    assert kinds.count("round") == 2 and kinds[-1] == "done" and "delta" in kinds
    for k in (1, 2):
        text = "".join(d["text"] for e, d in evs if e == "delta" and d["round"] == k)
        assert text == next(d["answer"] for e, d in evs if e == "round" and d["round"] == k)


def test_stop_when_stable_on_a_repeating_model(server):
    # greedy decoding of the same random model repeats itself: round 2 == round 1
    r = post(
        server,
        "/v1/refine",
        {"query": "hello", "rounds": 6, "max_tokens": 8, "stop_when_stable": True},
    )
    body = r.json()
    answers = [x["answer"] for x in body["rounds"]]
    assert body["stopped_early"] and body["stop_reason"] == "stable", answers
    assert len(answers) == 2 and answers[0].strip() == answers[1].strip()


def test_openai_client_gets_refined_answer_and_stream(server):
    openai = pytest.importorskip("openai")
    oa = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, timeout=120, max_retries=0)
    resp = oa.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=10,
        extra_body={"refinement_rounds": 2},
    )
    assert isinstance(resp.choices[0].message.content, str)
    assert resp.usage.completion_tokens >= 2 and resp.usage.total_tokens > resp.usage.prompt_tokens
    assert len(resp.model_extra["refinement"]["rounds"]) == 2
    assert resp.choices[0].message.content == resp.model_extra["refinement"]["rounds"][-1]["answer"]
    stream = oa.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=10,
        stream=True,
        extra_body={"refinement_rounds": 2},
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    rounds = [
        c.model_extra["refinement"] for c in chunks if (c.model_extra or {}).get("refinement")
    ]
    assert rounds[1]["answer"] == content and chunks[-1].usage.completion_tokens >= 2
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()


@pytest.mark.parametrize(
    "body,status,message",
    [
        ({"rounds": 2}, 400, "exactly one of 'query' or 'messages'"),
        ({"query": ""}, 400, "'query' is empty"),
        ({"query": "q", "rounds": "x"}, 400, "'rounds'"),
        ({"query": "q", "rounds": 9}, 400, "at most 8"),
        ({"query": "q", "rounds": 0}, 400, "'rounds'"),
        ({"query": "q", "max_tokens": 4096}, 400, "at most 512"),
        ({"query": "q", "bogus": True}, 400, "unknown field 'bogus'"),
        ({"query": "The quick brown fox. " * 400}, 400, "the model's context is 1024"),
        (
            {"query": "The quick brown fox. " * 400, "stream": True},
            400,
            "the model's context is 1024",
        ),
    ],
)
def test_bad_input_gets_a_4xx_over_http(server, body, status, message):
    r = post(server, "/v1/refine", body, timeout=60)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"]


def test_invalid_json_over_http(server):
    r = httpx.post(
        server.url + "/v1/chat/completions",
        content=b'{"messages": [',
        timeout=60,
        headers={**AUTH, "content-type": "application/json"},
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def test_refine_cli_prints_rounds(server, capsys, monkeypatch):
    monkeypatch.setenv("PTR_API_KEY", KEY)
    args = SimpleNamespace(
        query="What is 2+2?", rounds=2, url=server.url, max_tokens=8, temperature=0.0, api_key=None
    )
    assert refine_command(args) == 0
    out = capsys.readouterr().out
    assert (
        "── round 1 ──" in out and "── round 2 ──" in out and "final answer after 2 round(s)" in out
    )


# Ray exports metrics every metrics_report_interval_ms (10 s by default): a reading that held
# still for longer than that has no counts still on their way.
METRICS_SETTLE_S = 12.0


def _serve_metrics() -> Counter:
    """This app's round counters as Ray's Prometheus endpoint shows them, summed over replicas:
    ``started``, one key per engine outcome, and ``ingress_cancelled`` (runs whose client left)."""
    import ray
    from prometheus_client.parser import text_string_to_metric_families

    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["Alive"])
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    out: Counter = Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if (
                s.name == "ray_ptr_engine_rounds_started_total"
                and s.labels.get("application") == APP
            ):
                out["started"] += s.value
            elif s.name == "ray_ptr_engine_rounds_total" and s.labels.get("application") == APP:
                out[s.labels["outcome"]] += s.value
            elif s.name == "ray_ptr_cancelled_total" and s.labels.get("model") == "tiny":
                out["ingress_cancelled"] += s.value
    return out


def _settled_metrics(timeout: float = 120.0) -> Counter:
    """The counters once no round is in flight and nothing is still being exported."""
    last, since = None, time.time()
    deadline = time.time() + timeout
    while time.time() < deadline:
        now = _serve_metrics()
        ended = ("finished", "cancelled", "rejected", "failed")
        in_flight = now["started"] - sum(now[k] for k in ended)
        if now != last:
            last, since = now, time.time()
        elif in_flight == 0 and time.time() - since >= METRICS_SETTLE_S:
            return now
        time.sleep(1.0)
    raise AssertionError(f"engine round metrics did not settle: {last}")


def test_client_disconnect_cancels_remaining_rounds(server):
    before = _settled_metrics()
    with httpx.stream(
        "POST",
        server.url + "/v1/refine",
        headers=AUTH,
        timeout=120,
        json={"query": "Tell me a story.", "rounds": 8, "max_tokens": 400, "stream": True},
    ) as r:
        for event, data in iter_sse(r.iter_lines()):
            if event == "delta" and data["round"] == 2:
                break  # leave while round 2 is being generated
    # A server that kept going would start a new 400-token round every second or so.
    time.sleep(6)
    delta = _settled_metrics() - before
    assert delta["finished"] == 1, delta  # round 1
    assert delta["cancelled"] == 1, delta  # round 2, aborted inside vLLM
    assert delta["started"] == 2, delta  # rounds 3..8 never started
    assert delta["ingress_cancelled"] == 1, delta


def _tight_client(**limits):
    """A second ingress app, in this process, with tiny time limits, over the *same* engine
    deployment (its real handle): the limits are the server's, so tiny ones need their own app,
    and a second engine replica would only cost memory."""
    from fastapi.testclient import TestClient
    from ray import serve

    from ptr_ray.serve.api import create_app
    from ptr_ray.serve.app import HandleBackend

    handle = serve.get_deployment_handle(ENGINE_DEPLOYMENT_NAME, app_name=APP)
    cfg = ServeConfig.model_validate(
        {"engine": {"model": "tiny"}, "max_rounds": 8, "max_tokens_cap": 512, **limits}
    )
    return TestClient(create_app(HandleBackend(handle), cfg, api_key=""))


LONG_RUN = {"query": "Tell me a story.", "rounds": 8, "max_tokens": 400}


@pytest.mark.parametrize(
    "limits,body,statuses,code",
    [
        # 8 rounds of 400 tokens: on an idle 2-core machine a fresh-clone CI run once finished
        # them inside a 2 s deadline (2 Dec 2026), so the deadline is 1 s to end it mid-run
        (
            {"request_timeout_s": 1, "first_token_timeout_s": 1},
            LONG_RUN,
            {504},
            "request_timeout",
        ),
        # progress items come every 20 ms at best: a 1 ms stall limit trips inside round 1
        ({"stall_timeout_s": 0.001}, LONG_RUN, {504}, "stall_timeout"),
        # not even the replica's "accepted" comes back within 1 ms
        ({"first_token_timeout_s": 0.001}, LONG_RUN, {503, 504}, "first_token_timeout"),
    ],
    ids=["request", "stall", "first_token"],
)
def test_a_time_limit_ends_the_request_and_aborts_its_vllm_work(
    server, limits, body, statuses, code
):
    before = _settled_metrics()
    with _tight_client(**limits) as client:
        t0 = time.time()
        r = client.post("/v1/refine", json=body)
        took = time.time() - t0
    assert r.status_code in statuses, r.text
    err = r.json()["error"]
    assert err["code"] == code and code.removesuffix("_timeout") in err["message"], err
    assert (r.status_code == 503) == ("Retry-After" in r.headers)
    assert took < 2 + 10, took  # answered at the limit, not after the run
    delta = _settled_metrics() - before
    # at most the round that was running was cut short, inside vLLM; no later round started
    assert delta["cancelled"] == delta["started"] - delta["finished"] <= 1, delta
    assert delta["started"] < 8 and delta["failed"] == 0, delta


def test_a_stall_in_a_stream_is_an_error_event(server):
    with _tight_client(stall_timeout_s=0.001) as client:
        with client.stream("POST", "/v1/refine", json={**LONG_RUN, "stream": True}) as r:
            assert r.status_code == 200  # the first token came: the answer had started
            evs = list(iter_sse(r.iter_lines()))
    assert evs[0][0] == "delta" and evs[-1][0] == "error", evs[-3:]
    assert evs[-1][1]["error"]["code"] == "stall_timeout"


def test_overload_gets_503_quickly(server):
    ingress = server.cfg.ingress_deployment
    fit = ingress.max_ongoing_requests + ingress.max_queued_requests  # 4 + 2
    n = 4 * fit

    async def one(client, answered, all_answered):
        t0 = time.time()
        async with client.stream(
            "POST",
            server.url + "/v1/refine",
            headers=AUTH,
            json={"query": "Tell me a story.", "rounds": 8, "max_tokens": 400, "stream": True},
        ) as r:
            result = r.status_code, time.time() - t0
            answered.append(result)
            if len(answered) == n:
                all_answered.set()
            # hold accepted streams open until every request has its answer, so a finished
            # one cannot free its slot for a later one; leaving closes (cancels) the stream
            await asyncio.wait_for(all_answered.wait(), 60)
            return result

    async def burst():
        answered, all_answered = [], asyncio.Event()
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=n)) as client:
            return await asyncio.gather(*(one(client, answered, all_answered) for _ in range(n)))

    results = asyncio.run(burst())
    statuses = [s for s, _ in results]
    assert set(statuses) <= {200, 503}, statuses
    # 4 ongoing + 2 queued fit in the ingress; the rest are turned away at once, each in < 1 s
    assert 2 <= statuses.count(200) <= fit and statuses.count(503) >= n - fit, statuses
    assert max(dt for s, dt in results if s == 503) < 1.0, sorted(results)
    # and the server is fine afterwards
    assert (
        post(server, "/v1/refine", {"query": "q", "rounds": 1, "max_tokens": 4}).status_code == 200
    )


def test_fuzzed_requests_never_get_a_5xx(server):
    """Schema-driven fuzz (ptr_ray/serve/fuzzing.py) against the real server: ~350 generated
    requests, valid and invalid: no 5xx, every error OpenAI-style JSON."""
    schemathesis = pytest.importorskip("schemathesis")
    from ptr_ray.serve.fuzzing import fuzz

    schema = schemathesis.openapi.from_url(server.url + "/openapi.json", headers=AUTH)
    caps = {"max_tokens": 8, "max_completion_tokens": 8, "rounds": 2, "refinement_rounds": 2}
    report = fuzz(schema, examples=60, headers=AUTH, clamp=caps, timeout=120)
    assert not report.failures, "\n".join([report.summary(), *report.failures])
    assert report.requests >= 250, report.summary()


def _engine_replicas() -> set[str]:
    """Serve's names of this app's live engine replica actors (each replica has its own)."""
    import ray

    prefix = f"SERVE_REPLICA::{APP}#{ENGINE_DEPLOYMENT_NAME}#"
    return {
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(prefix)
    }


def _engine_replica_pids() -> list[int]:
    """The engine replica's worker processes, as the OS sees them. Ray titles an actor's
    process ``ray::<class>[.<method>]`` and Serve names the class ``ServeReplica:<app>:<name>``;
    the workers of this test's local Ray are descendants of this process."""
    import psutil

    title = f"ray::ServeReplica:{APP}:{ENGINE_DEPLOYMENT_NAME}"
    pids = []
    for p in psutil.Process().children(recursive=True):
        try:
            name = (p.cmdline() or [""])[0]
        except psutil.Error:
            continue
        if name == title or name.startswith(title + "."):
            pids.append(p.pid)
    return pids


@pytest.mark.timeout(900)
def test_killed_engine_replica_is_replaced(server):
    import psutil

    old_replicas = _engine_replicas()
    pids = _engine_replica_pids()
    assert len(old_replicas) == 1 and len(pids) == 1, (old_replicas, pids)
    old_pid = pids[0]
    children = psutil.Process(old_pid).children(recursive=True)
    os.kill(old_pid, signal.SIGKILL)  # a crash, as the OOM killer would do it
    statuses = []
    # A new replica loads vLLM again: ~30 s alone, several minutes on a loaded 2-core box.
    deadline = time.time() + 480
    replaced = False
    while time.time() < deadline:
        try:  # the server answers within first_token_timeout_s (15 s) even with no engine replica
            r = post(server, "/v1/refine", {"query": "q", "rounds": 2, "max_tokens": 4}, timeout=45)
            statuses.append(r.status_code)
            if r.status_code == 200 and _engine_replicas() - old_replicas:
                replaced = True
                break
        except httpx.TimeoutException:
            statuses.append("timeout")
        time.sleep(1.0)
    assert replaced, statuses
    assert set(statuses) <= {200, 503}, statuses  # unavailable while replaced, never a 500
    new_pids = _engine_replica_pids()
    assert len(new_pids) == 1 and new_pids[0] != old_pid, (old_pid, new_pids)
    assert (
        post(server, "/v1/refine", {"query": "again", "rounds": 2, "max_tokens": 4}).status_code
        == 200
    )
    # the killed replica's vLLM engine-core processes must not outlive it
    gone, alive = psutil.wait_procs(children, timeout=60)
    for p in alive:
        p.kill()
    assert not alive, [p.pid for p in alive]
