"""Rounds stay on their replica: two engine replicas, concurrent multi-round requests.

Each round sends the whole conversation again, so round k can reuse the KV blocks of round
k-1's prompt only on the replica that computed them. Every query here has its own prefix from
its first words on, so a round that lands on the other replica finds nothing of it in that
replica's cache. Two outside views, no test hooks: each response's per-round
``cached_tokens``, and the per-replica counters on Ray's metrics endpoint (requests taken,
rounds started), where every replica must have started exactly ``rounds x requests``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import pytest

from ptr_ray.config import ServeConfig
from ptr_ray.testing import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

APP = "ptr-routing-test"
ROUNDS = 3
REQUESTS = 8
BLOCK = 128  # vLLM's KV block size on CPU: only whole blocks are cached


def _query(i: int) -> str:
    """A unique ~300-token query for the tiny tokenizer (distinct from its first word on)."""
    notes = " ".join(f"Fact {j} of case {i}: the value is {i * 31 + j}." for j in range(12))
    return f"Case {i}. {notes} What is the value of fact 3 of case {i}?"


@pytest.fixture(scope="module")
def two_replicas(ray_local, tiny_model_dir):
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
                "kv_cache_gib": 1,
            },
            "app_name": APP,
            "max_tokens_cap": 64,
            "default_max_tokens": 16,
            "engine_deployment": {"num_replicas": 2, "max_ongoing_requests": 64},
            "ingress_deployment": {"ray_actor_options": {"num_cpus": 0.5}},
        }
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    t0 = time.time()
    serve.run(build_application(cfg), name=APP, route_prefix="/")
    print(f"two-replica app ready in {time.time() - t0:.1f}s")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def _per_replica() -> dict[str, Counter]:
    """``{replica: Counter(requests=..., rounds=...)}`` for this app's engine replicas."""
    import ray
    from prometheus_client.parser import text_string_to_metric_families

    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["Alive"])
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    out: dict[str, Counter] = {}
    names = {
        "ray_ptr_engine_requests_total": "requests",
        "ray_ptr_engine_rounds_started_total": "rounds",
    }
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in names and s.labels.get("application") == APP:
                out.setdefault(s.labels["replica"], Counter())[names[s.name]] += s.value
    return out


def _settled(expected_requests: int, timeout: float = 120.0) -> dict[str, Counter]:
    """The per-replica counters once every request is counted and nothing changed for longer
    than Ray's 10 s metrics export interval."""
    last, since = None, time.time()
    deadline = time.time() + timeout
    while time.time() < deadline:
        now = _per_replica()
        if now != last:
            last, since = now, time.time()
        elif (
            sum(c["requests"] for c in now.values()) >= expected_requests
            and time.time() - since >= 12
        ):
            return now
        time.sleep(1.0)
    raise AssertionError(f"engine metrics did not settle: {last}")


def test_rounds_of_concurrent_requests_stay_on_their_replica(two_replicas):
    async def one(client, i):
        r = await client.post(
            two_replicas + "/v1/refine",
            json={"query": _query(i), "rounds": ROUNDS, "max_tokens": 16},
        )
        assert r.status_code == 200, r.text
        return r.json()["rounds"]

    async def burst():
        async with httpx.AsyncClient(timeout=300) as client:
            await one(client, -1)  # warm-up: both replicas have compiled nothing yet
            return await asyncio.gather(*(one(client, i) for i in range(REQUESTS)))

    results = asyncio.run(burst())
    for i, rounds in enumerate(results):
        assert [r["round"] for r in rounds] == [1, 2, 3]
        assert rounds[0]["prompt_tokens"] >= 2 * BLOCK, rounds[0]
        for prev, cur in zip(rounds, rounds[1:], strict=False):
            # every whole block of the previous round's prompt came from this replica's cache
            assert cur["cached_tokens"] >= prev["prompt_tokens"] - BLOCK, (i, rounds)
    per_replica = _settled(REQUESTS + 1)
    assert len(per_replica) == 2, per_replica
    # both replicas took requests (the router spreads them by load) ...
    assert all(c["requests"] >= 1 for c in per_replica.values()), per_replica
    # ... and each started exactly the rounds of the requests it took
    for replica, c in per_replica.items():
        assert c["rounds"] == ROUNDS * c["requests"], (replica, per_replica)
