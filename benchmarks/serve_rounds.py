"""Serving benchmark: ratios measured side by side in one run on 127.0.0.1.

1. Serve + HTTP overhead: the same 3-round requests through the vLLM engine called directly
   (``AsyncVLLMEngine`` + ``arefine`` in this process) and through the server's /v1/refine.
2. Throughput: completed requests/s with 16 concurrent clients vs. 1.
3. Prefix caching: 3-round request latency with the engine's prefix cache on vs. off (the app
   is redeployed with ``enable_prefix_caching: false``).

Every measured query has its own prefix, so no request is served from a cache filled by
another one: only a request's own earlier rounds can be cached. The direct engine, the server
with caching and the server without it answer the *same* queries on fresh engines with greedy
decoding, so they generate the same tokens and only the serving path differs. A 1-token,
1-round request measures the fixed per-request cost. Bounded counts and a wall-clock limit.

    .venv/bin/python benchmarks/serve_rounds.py                 # builtin:smollm2-135m
    .venv/bin/python benchmarks/serve_rounds.py --model /path/to/model --requests 6
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ptr_ray.config import EngineConfig, SamplingConfig, ServeConfig  # noqa: E402
from ptr_ray.refine import arefine  # noqa: E402

TOPICS = [
    "a lighthouse keeper",
    "a bakery in Lyon",
    "the water cycle",
    "a chess tournament",
    "migrating birds",
    "a small robot",
    "the first railway",
    "a mountain village",
    "honey bees",
    "a lost violin",
    "volcanoes",
    "a library at night",
    "tidal pools",
    "a night market",
    "glaciers",
    "a clockmaker",
    "desert plants",
    "a radio station",
    "coral reefs",
    "a bicycle race",
    "northern lights",
    "a ferry crossing",
    "paper mills",
    "a jazz club",
    "salt marshes",
    "a telescope",
    "wind farms",
    "a tea plantation",
]


def make_query(i: int, context_sentences: int) -> str:
    """A unique long query: the prefix differs from the first token on (no cross-request hits)."""
    topic = TOPICS[i % len(TOPICS)]
    notes = " ".join(
        f"Note {j} about {topic} (set {i}): it matters for reason {i * 7 + j}."
        for j in range(context_sentences)
    )
    return f"[{i}] Read these notes about {topic}. {notes} Question: in two sentences, what is the main point about {topic}?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def direct_engine(args, queries: list[str]) -> dict:
    from ptr_ray.engine import AsyncVLLMEngine

    eng = AsyncVLLMEngine(EngineConfig(model=args.model, max_model_len=args.max_model_len))
    sampling = SamplingConfig(max_tokens=args.max_tokens)

    async def gen(msgs):
        return await eng.generate(msgs, sampling)

    async def one(q: str) -> tuple[float, int]:
        t0 = time.perf_counter()
        toks = 0
        async for rr in arefine(gen, q, args.rounds):
            toks += rr.tokens
        return time.perf_counter() - t0, toks

    async def tiny(i: int) -> float:
        t0 = time.perf_counter()
        await eng.generate([{"role": "user", "content": f"Say {i}."}], SamplingConfig(max_tokens=1))
        return time.perf_counter() - t0

    try:
        await one("warm up the engine")
        lat = []
        for q in queries:
            lat.append(await one(q))
        return {"latency": lat, "tiny": [await tiny(i) for i in range(5)]}
    finally:
        eng.close()


async def http_refine(
    client: httpx.AsyncClient, url: str, q: str, rounds: int, max_tokens: int
) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    r = await client.post(
        url + "/v1/refine", json={"query": q, "rounds": rounds, "max_tokens": max_tokens}
    )
    r.raise_for_status()
    body = r.json()
    return (
        time.perf_counter() - t0,
        body["usage"]["completion_tokens"],
        body["usage"]["prompt_tokens_details"]["cached_tokens"],
    )


async def run_sequential(url, queries, args):
    async with httpx.AsyncClient(timeout=args.timeout) as c:
        return [await http_refine(c, url, q, args.rounds, args.max_tokens) for q in queries]


async def run_concurrent(url, queries, args, concurrency: int) -> tuple[float, list]:
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(
        timeout=args.timeout, limits=httpx.Limits(max_connections=concurrency + 4)
    ) as c:

        async def guarded(q):
            async with sem:
                return await http_refine(c, url, q, args.rounds, args.max_tokens)

        t0 = time.perf_counter()
        res = await asyncio.gather(*(guarded(q) for q in queries))
        return time.perf_counter() - t0, res


def deploy(cfg: ServeConfig):
    from ray import serve

    from ptr_ray.serve.app import build_application

    t0 = time.time()
    serve.run(build_application(cfg), name=cfg.app_name, route_prefix="/")
    return time.time() - t0


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="builtin:smollm2-135m")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument(
        "--context-sentences", type=int, default=30, help="query length (~16 tokens each)"
    )
    p.add_argument(
        "--requests", type=int, default=5, help="measured sequential requests per setting"
    )
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--concurrent-requests", type=int, default=32)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument(
        "--time-limit", type=float, default=1500, help="abort the run after this many seconds"
    )
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    import signal

    signal.signal(
        signal.SIGALRM,
        lambda *_: (_ for _ in ()).throw(TimeoutError("benchmark time limit reached")),
    )
    signal.alarm(int(args.time_limit))
    from ptr_ray.models import resolve_model
    from ptr_ray.runtime_env import apply_env

    apply_env()

    args.model = resolve_model(args.model)
    n = args.requests
    q_same = [
        make_query(i, args.context_sentences) for i in range(n)
    ]  # direct, cache on, cache off
    q_conc1 = [
        make_query(3000 + i, args.context_sentences)
        for i in range(max(4, args.concurrent_requests // 4))
    ]
    q_concN = [
        make_query(4000 + i, args.context_sentences) for i in range(args.concurrent_requests)
    ]
    results: dict = {"model": args.model, "rounds": args.rounds, "max_tokens": args.max_tokens}
    t_start = time.time()

    print(f"[1/4] engine called directly ({n} x {args.rounds}-round requests) ...", flush=True)
    direct = asyncio.run(direct_engine(args, q_same))
    d_lat = [x for x, _ in direct["latency"]]

    import ray
    from ray import serve

    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        _temp_dir=tempfile.mkdtemp(prefix="ray-bench-", dir="/tmp"),
        log_to_driver=False,
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = {
        "engine": {"model": args.model, "max_model_len": args.max_model_len, "max_num_seqs": 32},
        "max_tokens_cap": max(1024, args.max_tokens),
        "app_name": "ptr-bench",
        "ingress_deployment": {"max_ongoing_requests": 64, "max_queued_requests": 256},
    }
    try:
        startup = deploy(ServeConfig.model_validate(base))
        print(f"      server up in {startup:.0f}s at {url}", flush=True)
        asyncio.run(run_sequential(url, ["warm up the server"], args))
        print(f"[2/4] through Serve + HTTP, prefix caching on ({n} requests) ...", flush=True)
        s_res = asyncio.run(run_sequential(url, q_same, args))
        tiny_args = argparse.Namespace(**{**vars(args), "rounds": 1, "max_tokens": 1})
        s_tiny = [
            asyncio.run(run_sequential(url, [f"Say {i}."], tiny_args))[0][0] for i in range(5)
        ]
        print(
            f"[3/4] throughput: {len(q_conc1)} requests at concurrency 1, "
            f"{len(q_concN)} at concurrency {args.concurrency} ...",
            flush=True,
        )
        t1, r1 = asyncio.run(run_concurrent(url, q_conc1, args, 1))
        tN, rN = asyncio.run(run_concurrent(url, q_concN, args, args.concurrency))
        print(f"[4/4] prefix caching off (redeploy, {n} requests) ...", flush=True)
        off = json.loads(json.dumps(base))
        off["engine"]["enable_prefix_caching"] = False
        deploy(ServeConfig.model_validate(off))
        asyncio.run(run_sequential(url, ["warm up the server"], args))
        o_res = asyncio.run(run_sequential(url, q_same, args))
    finally:
        serve.shutdown()
        ray.shutdown()

    s_lat = [x for x, _, _ in s_res]
    o_lat = [x for x, _, _ in o_res]
    med = statistics.median
    thr1 = len(r1) / t1
    thrN = len(rN) / tN
    tok1 = sum(t for _, t, _ in r1) / t1
    tokN = sum(t for _, t, _ in rN) / tN
    results.update(
        {
            "direct_1token_ms": med(direct["tiny"]) * 1000,
            "serve_1token_ms": med(s_tiny) * 1000,
            "direct_latency_s": med(d_lat),
            "serve_latency_s": med(s_lat),
            "serve_overhead_ratio": med(s_lat) / med(d_lat),
            "serve_overhead_ms_per_request": (med(s_lat) - med(d_lat)) * 1000,
            "direct_tokens_per_request": statistics.mean(t for _, t in direct["latency"]),
            "serve_tokens_per_request": statistics.mean(t for _, t, _ in s_res),
            "cache_on_latency_s": med(s_lat),
            "cache_off_latency_s": med(o_lat),
            "cache_speedup": med(o_lat) / med(s_lat),
            "throughput_1_rps": thr1,
            f"throughput_{args.concurrency}_rps": thrN,
            "throughput_ratio": thrN / thr1,
            "tokens_per_s_1": tok1,
            f"tokens_per_s_{args.concurrency}": tokN,
            "wall_s": time.time() - t_start,
        }
    )
    cached_on = sum(c for *_, c in s_res)
    cached_off = sum(c for *_, c in o_res)
    print()
    print(
        f"model {Path(args.model).name}, {args.rounds} rounds x {args.max_tokens} max tokens, "
        f"queries ~{args.context_sentences * 16} tokens, medians of {n} requests"
    )
    print(f"  engine direct         {med(d_lat):7.2f} s / request")
    print(
        f"  Serve + HTTP          {med(s_lat):7.2f} s / request  -> overhead x{results['serve_overhead_ratio']:.3f} "
        f"({results['serve_overhead_ms_per_request']:+.0f} ms)"
    )
    print(
        f"  1-token request       {med(direct['tiny']) * 1000:7.1f} ms direct, {med(s_tiny) * 1000:.1f} ms via Serve + HTTP"
    )
    print(
        f"  tokens / request      {results['direct_tokens_per_request']:.1f} direct, {results['serve_tokens_per_request']:.1f} via Serve,"
        f" {statistics.mean(t for _, t, _ in o_res):.1f} cache off"
    )
    print(f"  prefix cache on       {med(s_lat):7.2f} s   ({cached_on} prompt tokens from cache)")
    print(
        f"  prefix cache off      {med(o_lat):7.2f} s   ({cached_off} prompt tokens from cache)"
        f"  -> caching speed-up x{results['cache_speedup']:.2f}"
    )
    print(f"  throughput c=1        {thr1:7.3f} req/s ({tok1:.0f} tok/s)")
    print(
        f"  throughput c={args.concurrency:<2}       {thrN:7.3f} req/s ({tokN:.0f} tok/s)"
        f"  -> x{results['throughput_ratio']:.2f}"
    )
    print(f"  total wall time {results['wall_s']:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
