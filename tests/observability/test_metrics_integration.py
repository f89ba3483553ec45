"""Engine and build metrics on Ray's Prometheus endpoint, scraped from outside.

A local Ray instance; an offline vLLM engine in an actor (the way a build's actor pool runs
it) and an async one in an async actor (what a Serve replica runs) generate a few completions
each; the driver reports a build snapshot. The roles are this test's own (``obs-weak``,
``obs-serve``), so other tests' engines in the same Ray session cannot add to the counts. Then the node's
metrics endpoint is scraped until vLLM's gauges and counters appear with ptr-ray's labels and
the generated-token counters equal what the engines returned (Ray's metrics agent exports every
few seconds, so it is polled); the gauges are scraped again 45 s after they were last set, past
the 20 s after which Ray drops a gauge that nobody sets again.
"""

from __future__ import annotations

import time

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

PROMPTS = 4
MAX_TOKENS = 8


def _engine_cfg(model_dir) -> dict:
    return {
        "model": str(model_dir),
        "dtype": "float32",
        "max_model_len": 512,
        "max_num_seqs": 8,
        "kv_cache_gib": 1,
    }


def _samples() -> list:
    import ray
    from prometheus_client.parser import text_string_to_metric_families

    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["Alive"])
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    return [s for f in text_string_to_metric_families(text) for s in f.samples]


def _find(samples, name: str, **labels) -> list:
    return [
        s
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def test_engine_and_build_metrics_reach_rays_prometheus_endpoint(ray_local, tiny_model_dir):
    ray = ray_local
    cfg = _engine_cfg(tiny_model_dir)
    model = cfg["model"]

    @ray.remote(num_cpus=1)
    class OfflineEngine:
        def __init__(self, cfg: dict, role: str) -> None:
            from ptr_ray.config import EngineConfig
            from ptr_ray.engine.vllm import VLLMEngine

            self.engine = VLLMEngine(EngineConfig.model_validate(cfg), role=role)

        def generate(self, n: int) -> tuple[bool, int]:
            from ptr_ray.config import SamplingConfig

            convs = [[{"role": "user", "content": f"Count to {i} please."}] for i in range(n)]
            gens = self.engine.generate(convs, SamplingConfig(max_tokens=MAX_TOKENS))
            return self.engine.exports_metrics, sum(g.completions[0].tokens for g in gens)

        def close(self) -> None:
            self.engine.close()

    @ray.remote(num_cpus=1)
    class AsyncEngine:
        async def start(self, cfg: dict, role: str) -> bool:
            from ptr_ray.config import EngineConfig
            from ptr_ray.engine.vllm import AsyncVLLMEngine

            self.engine = AsyncVLLMEngine(EngineConfig.model_validate(cfg), role=role)
            return self.engine.exports_metrics

        async def generate(self, n: int) -> int:
            import asyncio

            from ptr_ray.config import SamplingConfig

            s = SamplingConfig(max_tokens=MAX_TOKENS)
            gens = await asyncio.gather(
                *[
                    self.engine.generate([{"role": "user", "content": f"Name {i} colours."}], s)
                    for i in range(n)
                ]
            )
            return sum(g.completions[0].tokens for g in gens)

        async def close(self) -> None:
            self.engine.close()

    from ptr_ray.datagen.metrics import BuildMetrics, BuildProgress

    build = BuildMetrics("obs-test-build")
    assert build.attach()
    build.report(
        BuildProgress(
            rows_in=5,
            skipped=0,
            queued=4,
            returned=1,
            rows_out={"ptr": 1},
            dropped={"prepare": {"duplicate": 1}},
            tokens={"weak": {model: {"prompt": 30, "generated": 7, "cached": 0}}},
        )
    )

    # Both engines start at once (vLLM's import and start-up dominate; a loaded 2-core machine
    # takes minutes).
    t0 = time.time()
    offline = OfflineEngine.remote(cfg, "obs-weak")
    replica = AsyncEngine.remote()
    started = replica.start.remote(cfg, "obs-serve")
    exported, weak_tokens = ray.get(offline.generate.remote(PROMPTS), timeout=600)
    assert ray.get(started, timeout=600) is True
    serve_tokens = ray.get(replica.generate.remote(PROMPTS), timeout=300)
    print(f"engines started and done in {time.time() - t0:.1f}s")
    assert exported is True and weak_tokens > 0 and serve_tokens > 0

    # Gauges too: Ray drops a gauge ~20 s after its last set; ptr-ray holds them
    # (ptr_ray.held_gauges), which the second scrape below checks.
    weak = {"role": "obs-weak", "model_name": model}
    serve = {"role": "obs-serve", "model_name": model}
    bsel = {"build": "obs-test-build"}
    wanted = {
        "weak prefix queries": ("ray_vllm_prefix_cache_queries_total", weak, None),
        "weak generated": ("ray_vllm_generation_tokens_total", weak, weak_tokens),
        "weak ttft": ("ray_vllm_time_to_first_token_seconds_count", weak, PROMPTS),
        "serve generated": ("ray_vllm_generation_tokens_total", serve, serve_tokens),
        "build rows in": ("ray_ptr_build_rows_in_total", bsel, 5),
        "build dropped": (
            "ray_ptr_build_rows_dropped_total",
            {**bsel, "stage": "prepare", "reason": "duplicate"},
            1,
        ),
        "build tokens": (
            "ray_ptr_build_tokens_total",
            {**bsel, "role": "weak", "kind": "generated"},
            7,
        ),
        "build pending (gauge)": ("ray_ptr_build_rows_pending", bsel, 3),
        "weak running (gauge)": ("ray_vllm_num_requests_running", weak, 0),
        "weak kv usage (gauge)": ("ray_vllm_kv_cache_usage_perc", weak, None),
        "serve running (gauge)": ("ray_vllm_num_requests_running", serve, 0),
    }
    done = time.time()  # the last set of any gauge above was before this
    samples = _scrape_until(wanted, deadline=done + 90)
    # Still there well past Ray's gauge TTL (2 x the 10 s export interval) after the last set
    time.sleep(max(0.0, done + 45 - time.time()))
    held = {k: v for k, v in wanted.items() if "gauge" in k}
    samples = _scrape_until(held, deadline=time.time() + 15)
    try:
        # ptr-ray's labels: the config's model name and the role; vLLM's replica tag
        (gen,) = _find(samples, "ray_vllm_generation_tokens_total", role="obs-weak")
        assert gen.labels["model_name"] == model and gen.labels.get("ReplicaId", "") == ""
        (srv,) = _find(samples, "ray_vllm_generation_tokens_total", role="obs-serve")
        assert srv.labels["model_name"] == model
        print(f"scraped after {time.time() - t0:.1f}s")
    finally:
        ray.get([offline.close.remote(), replica.close.remote()], timeout=120)
        ray.kill(offline)
        ray.kill(replica)


def _scrape_until(wanted: dict, deadline: float) -> list:
    """Scrape until every wanted (name, labels, value or None) series is there; the samples."""
    missing: dict[str, str] = dict.fromkeys(wanted, "not scraped yet")
    samples: list = []
    while missing and time.time() < deadline:
        samples = _samples()
        for key, (name, labels, value) in list(wanted.items()):
            found = _find(samples, name, **labels)
            if not found:
                missing[key] = "absent"
                continue
            total = sum(s.value for s in found)
            if value is not None and total != value:
                missing[key] = f"{total} != {value}"
                continue
            missing.pop(key, None)
        if missing:
            time.sleep(2.0)
    assert not missing, (
        f"{missing}; vllm/ptr samples seen: "
        f"{sorted({s.name for s in samples if 'vllm' in s.name or 'ptr_build' in s.name})}"
    )
    return samples
