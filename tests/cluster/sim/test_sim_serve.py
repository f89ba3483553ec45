"""Serve on a simulated cluster: two engine replicas on two ``vllm`` nodes, the ingress on a
``cpu`` node, and requests through the head's HTTP proxy reaching both replicas.

``engine.resources: {pool_vllm: 1}`` and one ``pool_vllm`` per vllm node put the two replicas
on different nodes; ``ingress_deployment.ray_actor_options.resources`` puts the ingress on the
cpu node. One HTTP proxy, on the head (``proxy_location: HeadOnly``): on one machine every
node has the same address, so a proxy per node would fight over one port. Which replica
served a request is read from outside: each replica's request counter on its node's metrics
endpoint, tagged with the replica id, matched with the replica actors in the GCS table.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import pytest

from ptr_ray.config import RayConfig, ServeConfig
from ptr_ray.testing import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

APP = "ptr-sim-serve"
REQUESTS = 8
REQUESTS_METRIC = "ray_ptr_engine_requests_total"


@pytest.fixture(scope="module")
def cluster(sim_cluster):
    return sim_cluster("vllm", "vllm", "cpu")


@pytest.fixture(scope="module")
def app_url(cluster, tiny_model_dir):
    from ray import serve

    from ptr_ray.ray_utils import ray_session
    from ptr_ray.serve.app import build_application

    cfg = ServeConfig.model_validate(
        {
            "engine": {
                "model": str(tiny_model_dir),
                "dtype": "float32",
                "max_model_len": 512,
                "max_num_seqs": 8,
                "kv_cache_gib": 1,
                "resources": {"pool_vllm": 1},
            },
            "app_name": APP,
            "max_tokens_cap": 32,
            "default_max_tokens": 8,
            "engine_deployment": {"num_replicas": 2},
            "ingress_deployment": {
                "ray_actor_options": {"num_cpus": 0.5, "resources": {"pool_cpu": 1}}
            },
        }
    )
    port = free_port()
    with ray_session(RayConfig(address=cluster.address)):
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        t0 = time.time()
        serve.run(build_application(cfg), name=APP, route_prefix="/")
        print(f"two engine replicas on two nodes ready in {time.time() - t0:.1f}s")
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            serve.shutdown()


def _replica_requests() -> Counter:
    """Requests each engine replica took, summed over every node's metrics endpoint."""
    import ray
    from prometheus_client.parser import text_string_to_metric_families

    out: Counter = Counter()
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        url = f"http://127.0.0.1:{node['MetricsExportPort']}/metrics"
        try:
            text = httpx.get(url, timeout=30).text
        except httpx.HTTPError:
            continue
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == REQUESTS_METRIC and s.labels.get("application") == APP:
                    out[s.labels["replica"]] += s.value
    return out


def _settled(expected: int, timeout: float = 120.0) -> Counter:
    """The counters once all requests are counted and nothing moved for longer than Ray's
    10 s metrics export interval."""
    last, since = None, time.time()
    deadline = time.time() + timeout
    while time.time() < deadline:
        now = _replica_requests()
        if now != last:
            last, since = now, time.time()
        elif sum(now.values()) >= expected and time.time() - since >= 12:
            return now
        time.sleep(1.0)
    raise AssertionError(f"engine metrics did not settle: {last}")


def test_ingress_routes_to_engine_replicas_on_two_nodes(cluster, app_url):
    from ptr_ray.serve.config_file import ENGINE_DEPLOYMENT_NAME, INGRESS_DEPLOYMENT_NAME

    # Serve names a replica actor SERVE_REPLICA::<app>#<deployment>#<replica id>
    replicas = [a for a in cluster.actors("ServeReplica") if a["State"] == "ALIVE"]
    engines = [a for a in replicas if f"::{APP}#{ENGINE_DEPLOYMENT_NAME}#" in a["Name"]]
    ingress = [a for a in replicas if f"::{APP}#{INGRESS_DEPLOYMENT_NAME}#" in a["Name"]]
    replica_node = {a["Name"].rsplit("#", 1)[-1]: a["Address"]["NodeID"] for a in engines}
    assert len(replica_node) == 2, engines
    assert len(set(replica_node.values())) == 2, replica_node  # two nodes ...
    assert {cluster.kind_of(n) for n in replica_node.values()} == {"vllm"}  # ... of type vllm
    assert len(ingress) == 1 and cluster.kind_of(ingress[0]["Address"]["NodeID"]) == "cpu"

    async def one(client, i):
        r = await client.post(
            app_url + "/v1/refine",
            json={"query": f"Case {i}: what is {i} + {i}?", "rounds": 2, "max_tokens": 8},
        )
        assert r.status_code == 200, r.text
        assert [x["round"] for x in r.json()["rounds"]] == [1, 2]

    async def burst():
        async with httpx.AsyncClient(timeout=300) as client:
            await asyncio.gather(*(one(client, i) for i in range(REQUESTS)))

    asyncio.run(burst())
    served = _settled(REQUESTS)
    print(f"requests per replica: {dict(served)}; nodes: {replica_node}")
    assert set(served) == set(replica_node), (served, replica_node)
    assert sum(served.values()) == REQUESTS
    assert all(n >= 1 for n in served.values()), served  # both nodes' replicas took requests
