"""Serving benchmark: ratios measured side by side in one run on 127.0.0.1.

1. Serve + HTTP overhead: the same 3-round requests through the vLLM engine called directly
   (``AsyncVLLMEngine`` + ``arefine`` in this process) and through the server's /v1/refine.
2. Throughput: completed requests/s with 16 concurrent clients vs. 1.
3. Prefix caching: 3-round request latency with the engine's prefix cache on vs. off (the app
   is redeployed with ``enable_prefix_caching: false``).
4. Rounds on one replica: the share of round-2/3 prompt tokens served from the prefix cache
   with one engine replica (the concurrent requests of 2.) and with ``--replicas`` (default 2)
   engine replicas under the same load (the app is redeployed). Every round of a request runs
   on the replica that took the request, so the share should not drop (goal: >= 90 % of the
   one-replica figure); with one handle call per round (before issue 11) rounds scattered and
   the share fell with the number of replicas.

Every measured query has its own prefix, so no request is served from a cache filled by
another one: only a request's own earlier rounds can be cached. The direct engine, the server
with caching and the server without it answer the *same* queries on fresh engines with greedy
decoding, so they generate the same tokens and only the serving path differs. A 1-token,
1-round request measures the fixed per-request cost. Bounded counts and a wall-clock limit.

    .venv/bin/python benchmarks/serve_rounds.py                 # builtin:smollm2-135m
    .venv/bin/python benchmarks/serve_rounds.py --model /path/to/model --requests 6
    .venv/bin/python benchmarks/serve_rounds.py --only-replicas     # just 4. (1 vs 2 replicas)
    .venv/bin/python benchmarks/serve_rounds.py --only-cache --context-sentences 95  # ~2k-token prompts
    .venv/bin/python benchmarks/serve_rounds.py --only-concurrency  # just 2., engine alone beside it

``--only-cache`` profiles 3. on the engine alone (Serve adds x1.02, measured in 1.): each
round's latency with the prefix cache off and on, and 1-token requests (a short prompt: the
fixed cost; the round-1 prompt: the prefill rate). It prints the bound those figures put on
the caching speed-up: a cache can at best remove the prefill of the earlier rounds' tokens in
rounds 2..R, never the decoding or the fixed cost, so with R rounds the speed-up stays < R
(x3 at 3 rounds only as answers shrink to nothing).

``--only-concurrency`` measures 2. twice in one run: on the engine alone (``AsyncVLLMEngine`` in
this process, the same requests, the same ``max_num_seqs``) and through Serve + HTTP. The
engine's own ratio is the ceiling of the server's: on a CPU, batching 16 sequences does not
make a decoding step 16 times cheaper, and what the server loses below the engine's ratio is
the serving path's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ptr_ray.config import EngineConfig, SamplingConfig, ServeConfig  # noqa: E402
from ptr_ray.refine import arefine  # noqa: E402
from ptr_ray.testing import free_port  # noqa: E402

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


def make_engine(args, **overrides):
    from ptr_ray.engine import AsyncVLLMEngine

    overrides.setdefault("enforce_eager", not args.compile)
    return AsyncVLLMEngine(
        EngineConfig(model=args.model, max_model_len=args.max_model_len, **overrides)
    )


async def timed_rounds(gen, q: str, rounds: int) -> list[tuple[float, int, int, int]]:
    """One refine request; per round: latency, prompt tokens, new tokens, cached tokens."""
    rows, t0 = [], time.perf_counter()
    async for rr in arefine(gen, q, rounds):
        now = time.perf_counter()
        rows.append((now - t0, rr.prompt_tokens, rr.tokens, rr.cached_tokens))
        t0 = now
    return rows


async def one_token(eng, conversation) -> tuple[float, int]:
    """Latency and prompt tokens of a 1-token request: the fixed cost plus the prefill."""
    t0 = time.perf_counter()
    g = await eng.generate(conversation, SamplingConfig(max_tokens=1))
    return time.perf_counter() - t0, g.prompt_tokens


def say(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Say {i}."}]


async def direct_engine(args, queries: list[str]) -> dict:
    eng = make_engine(args)
    sampling = SamplingConfig(max_tokens=args.max_tokens)

    async def gen(msgs):
        return await eng.generate(msgs, sampling)

    async def one(q: str) -> tuple[float, int]:
        rows = await timed_rounds(gen, q, args.rounds)
        return sum(r[0] for r in rows), sum(r[2] for r in rows)

    try:
        await one("warm up the engine")
        lat = []
        for q in queries:
            lat.append(await one(q))
        return {"latency": lat, "tiny": [(await one_token(eng, say(i)))[0] for i in range(5)]}
    finally:
        eng.close()


async def engine_concurrency(args, batches: list[tuple[list[str], int]]) -> list[tuple]:
    """(seconds, per-request results) of each (queries, concurrency) on one engine alone,
    the server's engine settings (``max_num_seqs`` 32), after a warm-up request."""
    eng = make_engine(args, max_num_seqs=32)
    sampling = SamplingConfig(max_tokens=args.max_tokens)

    async def gen(msgs):
        return await eng.generate(msgs, sampling)

    try:
        await timed_rounds(gen, "warm up the engine", args.rounds)

        async def one(q: str) -> tuple[float, int]:
            rows = await timed_rounds(gen, q, args.rounds)
            return sum(r[0] for r in rows), sum(r[2] for r in rows)

        return [await at_most(concurrency, one, queries) for queries, concurrency in batches]
    finally:
        eng.close()


async def http_refine(
    client: httpx.AsyncClient, url: str, q: str, rounds: int, max_tokens: int
) -> tuple[float, int, int, int, int]:
    """latency, completion tokens, cached prompt tokens, and the prompt tokens of rounds >= 2
    with how many of them came from the cache."""
    t0 = time.perf_counter()
    r = await client.post(
        url + "/v1/refine", json={"query": q, "rounds": rounds, "max_tokens": max_tokens}
    )
    if r.status_code != 200:
        raise RuntimeError(f"/v1/refine answered {r.status_code}: {r.text[:500]}")
    body = r.json()
    later = [x for x in body["rounds"] if x["round"] >= 2]
    return (
        time.perf_counter() - t0,
        body["usage"]["completion_tokens"],
        body["usage"]["prompt_tokens_details"]["cached_tokens"],
        sum(x["prompt_tokens"] for x in later),
        sum(x["cached_tokens"] for x in later),
    )


def later_cache_share(results) -> float:
    """Share of the prompt tokens of rounds 2.. that the prefix cache served."""
    prompt = sum(r[3] for r in results)
    return sum(r[4] for r in results) / prompt if prompt else float("nan")


def engine_requests_per_replica(app: str, settle_s: float = 12.0) -> list[int]:
    """Requests each engine replica of ``app`` took, from Ray's metrics endpoint (read twice,
    ``settle_s`` apart, until it holds still: Ray exports every 10 s)."""
    import ray
    from prometheus_client.parser import text_string_to_metric_families

    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["Alive"])

    def read() -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "ray_ptr_engine_requests_total" and s.labels.get("application") == app:
                    out[s.labels["replica"]] = out.get(s.labels["replica"], 0) + s.value
        return out

    last = None
    for _ in range(10):
        now = read()
        if now == last:
            break
        last = now
        time.sleep(settle_s)
    return sorted((int(v) for v in (last or {}).values()), reverse=True)


async def cache_profile(args, queries: list[str]) -> dict:
    """Per-round latencies with the prefix cache off, then on (fresh engines, same greedy
    queries); with the cache off also 1-token requests on a short prompt (the fixed cost) and
    on each query's round-1 prompt (plus its prefill)."""
    from ptr_ray.config import PromptConfig
    from ptr_ray.refine import round_prompt

    out: dict = {"prefill": []}
    for caching in (False, True):
        eng = make_engine(args, enable_prefix_caching=caching)
        sampling = SamplingConfig(max_tokens=args.max_tokens)

        async def gen(msgs, eng=eng, sampling=sampling):
            return await eng.generate(msgs, sampling)

        try:
            await eng.generate([{"role": "user", "content": "warm up"}], sampling)
            per_round: list[list[tuple[float, int, int, int]]] = []
            for i, q in enumerate(queries):
                if not caching:  # pairs: (short prompt, round-1 prompt), nothing cached
                    out["prefill"].append(await one_token(eng, say(i)))
                    out["prefill"].append(await one_token(eng, round_prompt(q, [], PromptConfig())))
                rows = await timed_rounds(gen, q, args.rounds)
                per_round.append(rows)
                print(
                    f"      cache {'on ' if caching else 'off'} request {i + 1}: "
                    + " ".join(f"{t:.2f}s ({n}+{m} tok)" for t, n, m, _ in rows),
                    flush=True,
                )
            out["on" if caching else "off"] = per_round
        finally:
            eng.close()
    return out


def report_cache_profile(prof: dict, args) -> dict:
    """The measured speed-up and the most a prefix cache could give on the same requests.

    Prefill cost model from the 1-token requests: a fixed cost f (a short prompt) plus a
    rate per prompt token (the round-1 prompt). An ideal cache serves, in round k >= 2, the
    whole earlier conversation (round k-1's prompt and answer) and nothing else changes, so
    a request's best time is its cache-off time minus those tokens' prefill. Decoding and the
    fixed cost stay: the bound is < the number of rounds whenever an answer is generated."""
    med = statistics.median
    short = prof["prefill"][0::2]
    long_ = prof["prefill"][1::2]
    f = med(t for t, _ in short)
    rate = med((t - f) / max(n - ns, 1) for (t, n), (_, ns) in zip(long_, short, strict=True))
    off = [sum(r[0] for r in req) for req in prof["off"]]
    on = [sum(r[0] for r in req) for req in prof["on"]]
    best = []
    for req in prof["off"]:
        saved = sum((req[k - 1][1] + req[k - 1][2]) * rate for k in range(1, len(req)))
        best.append(sum(r[0] for r in req) - saved)
    bounds = [o / b for o, b in zip(off, best, strict=True)]
    later_prompt = sum(r[1] for req in prof["on"] for r in req[1:])
    later_cached = sum(r[3] for req in prof["on"] for r in req[1:])
    res = {
        "cache_off_latency_s": med(off),
        "cache_on_latency_s": med(on),
        "cache_speedup": med(off) / med(on),
        "fixed_cost_s": f,
        "prefill_ms_per_token": rate * 1000,
        "ideal_cache_latency_s": med(best),
        "speedup_bound": med(bounds),
        "later_round_cached_share": later_cached / later_prompt if later_prompt else 0.0,
        "tokens_per_round": [med(req[k][2] for req in prof["off"]) for k in range(args.rounds)],
    }
    print()
    print(
        f"model {Path(args.model).name}, {args.rounds} rounds x {args.max_tokens} max tokens, "
        f"round-1 prompts of {med(req[0][1] for req in prof['off']):.0f} tokens, medians of "
        f"{len(off)} requests (engine alone)"
    )
    print(f"  prefix cache off      {med(off):7.2f} s / request")
    print(
        f"  prefix cache on       {med(on):7.2f} s / request "
        f"({res['later_round_cached_share']:.0%} of round-2.. prompt tokens from cache)"
    )
    print(f"  caching speed-up      x{res['cache_speedup']:.2f}   (goal x3)")
    print(
        f"  prefill model         {f * 1000:.0f} ms fixed + {rate * 1000:.2f} ms per prompt "
        f"token; answers of {res['tokens_per_round']} tokens by round"
    )
    print(
        f"  bound                 x{res['speedup_bound']:.2f}: cache-off time over the time "
        f"with every earlier round's tokens served free ({med(best):.2f} s)"
    )
    return res


async def run_sequential(url, queries, args):
    async with httpx.AsyncClient(timeout=args.timeout) as c:
        return [await http_refine(c, url, q, args.rounds, args.max_tokens) for q in queries]


async def at_most(concurrency: int, call, items) -> tuple[float, list]:
    """``call`` over ``items`` with at most ``concurrency`` in flight: (seconds, results)."""
    sem = asyncio.Semaphore(concurrency)

    async def guarded(item):
        async with sem:
            return await call(item)

    t0 = time.perf_counter()
    res = await asyncio.gather(*(guarded(x) for x in items))
    return time.perf_counter() - t0, res


async def run_concurrent(url, queries, args, concurrency: int) -> tuple[float, list]:
    async with httpx.AsyncClient(
        timeout=args.timeout, limits=httpx.Limits(max_connections=concurrency + 4)
    ) as c:
        return await at_most(
            concurrency, lambda q: http_refine(c, url, q, args.rounds, args.max_tokens), queries
        )


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
        "--context-sentences", type=int, default=30, help="query length (~21 tokens each)"
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
    p.add_argument(
        "--replicas", type=int, default=2, help="engine replicas of the routing measurement"
    )
    p.add_argument(
        "--only-replicas",
        action="store_true",
        help="measure only the cache share with 1 and --replicas engine replicas",
    )
    p.add_argument(
        "--only-cache",
        action="store_true",
        help="profile only the prefix cache (engine alone, per round, with the bound)",
    )
    p.add_argument(
        "--only-concurrency",
        action="store_true",
        help="measure only the throughput at --concurrency vs 1, on the engine alone and via Serve",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="engines with enforce_eager=false (vLLM compiles the model: slower start)",
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
    if args.only_cache:
        results.update(report_cache_profile(asyncio.run(cache_profile(args, q_same)), args))
        results["wall_s"] = time.time() - t_start
        print(f"  total wall time {results['wall_s']:.0f}s")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
        return 0

    q_reps = [make_query(5000 + i, args.context_sentences) for i in range(args.concurrent_requests)]
    full = not (args.only_replicas or args.only_concurrency)
    steps = 5 if full else 2
    done_steps = [0]

    def stage(what: str) -> None:
        done_steps[0] += 1
        print(f"[{done_steps[0]}/{steps}] {what} ...", flush=True)

    direct: dict = {}
    if full:
        stage(f"engine called directly ({n} x {args.rounds}-round requests)")
        direct = asyncio.run(direct_engine(args, q_same))
    d_lat = [x for x, _ in direct.get("latency", [])]
    eng_conc: list[tuple] = []
    if args.only_concurrency:
        stage(
            f"engine alone: {len(q_conc1)} requests at concurrency 1, {len(q_concN)} at "
            f"concurrency {args.concurrency}"
        )
        eng_conc = asyncio.run(
            engine_concurrency(args, [(q_conc1, 1), (q_concN, args.concurrency)])
        )

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
        "engine": {
            "model": args.model,
            "max_model_len": args.max_model_len,
            "max_num_seqs": 32,
            "enforce_eager": not args.compile,
        },
        "max_tokens_cap": max(1024, args.max_tokens),
        "app_name": "ptr-bench",
        "ingress_deployment": {"max_ongoing_requests": 64, "max_queued_requests": 256},
    }
    try:
        startup = deploy(ServeConfig.model_validate(base))
        print(f"      server up in {startup:.0f}s at {url}", flush=True)
        asyncio.run(run_sequential(url, ["warm up the server"], args))
        if full:
            stage(f"through Serve + HTTP, prefix caching on ({n} requests)")
            s_res = asyncio.run(run_sequential(url, q_same, args))
            tiny_args = argparse.Namespace(**{**vars(args), "rounds": 1, "max_tokens": 1})
            s_tiny = [
                asyncio.run(run_sequential(url, [f"Say {i}."], tiny_args))[0][0] for i in range(5)
            ]
        stage(
            f"1 engine replica: {len(q_conc1)} requests at concurrency 1, "
            f"{len(q_concN)} at concurrency {args.concurrency}"
        )
        t1, r1 = asyncio.run(run_concurrent(url, q_conc1, args, 1))
        tN, rN = asyncio.run(run_concurrent(url, q_concN, args, args.concurrency))
        if full:
            stage(f"prefix caching off (redeploy, {n} requests)")
            off = json.loads(json.dumps(base))
            off["engine"]["enable_prefix_caching"] = False
            deploy(ServeConfig.model_validate(off))
            asyncio.run(run_sequential(url, ["warm up the server"], args))
            o_res = asyncio.run(run_sequential(url, q_same, args))
        if not args.only_concurrency:
            stage(
                f"{args.replicas} engine replicas (redeploy): {len(q_reps)} requests at "
                f"concurrency {args.concurrency}"
            )
            reps = json.loads(json.dumps(base))
            reps["app_name"] = "ptr-bench-replicas"
            reps["engine_deployment"] = {"num_replicas": args.replicas}
            serve.delete("ptr-bench")
            deploy(ServeConfig.model_validate(reps))
            # warm every replica up (each compiles on its first request), then measure
            asyncio.run(
                run_concurrent(url, [f"warm up {i}" for i in range(4 * args.replicas)], args, 8)
            )
            tR, rR = asyncio.run(run_concurrent(url, q_reps, args, args.concurrency))
            per_replica = engine_requests_per_replica("ptr-bench-replicas")
    finally:
        serve.shutdown()
        ray.shutdown()

    med = statistics.median
    thr1 = len(r1) / t1
    thrN = len(rN) / tN
    tok1 = sum(t for _, t, *_ in r1) / t1
    tokN = sum(t for _, t, *_ in rN) / tN
    share_1 = later_cache_share(rN)
    results.update(
        {
            "throughput_1_rps": thr1,
            f"throughput_{args.concurrency}_rps": thrN,
            "throughput_ratio": thrN / thr1,
            "tokens_per_s_1": tok1,
            f"tokens_per_s_{args.concurrency}": tokN,
            "later_round_cache_share_1_replica": share_1,
        }
    )
    if eng_conc:
        (e1, er1), (eN, erN) = eng_conc
        results.update(
            {
                "engine_throughput_1_rps": len(er1) / e1,
                f"engine_throughput_{args.concurrency}_rps": len(erN) / eN,
                "engine_throughput_ratio": (len(erN) / eN) / (len(er1) / e1),
                "engine_tokens_per_s_1": sum(t for _, t in er1) / e1,
                f"engine_tokens_per_s_{args.concurrency}": sum(t for _, t in erN) / eN,
            }
        )
    else:
        share_R = later_cache_share(rR)
        results.update(
            {
                f"later_round_cache_share_{args.replicas}_replicas": share_R,
                "later_round_cache_share_ratio": share_R / share_1,
                f"requests_per_replica_{args.replicas}_replicas": per_replica,
                f"throughput_{args.replicas}_replicas_rps": len(rR) / tR,
            }
        )
    if full:
        s_lat = [x for x, *_ in s_res]
        o_lat = [x for x, *_ in o_res]
        results.update(
            {
                "direct_1token_ms": med(direct["tiny"]) * 1000,
                "serve_1token_ms": med(s_tiny) * 1000,
                "direct_latency_s": med(d_lat),
                "serve_latency_s": med(s_lat),
                "serve_overhead_ratio": med(s_lat) / med(d_lat),
                "serve_overhead_ms_per_request": (med(s_lat) - med(d_lat)) * 1000,
                "direct_tokens_per_request": statistics.mean(t for _, t in direct["latency"]),
                "serve_tokens_per_request": statistics.mean(t for _, t, *_ in s_res),
                "cache_on_latency_s": med(s_lat),
                "cache_off_latency_s": med(o_lat),
                "cache_speedup": med(o_lat) / med(s_lat),
            }
        )
    results["wall_s"] = time.time() - t_start
    print()
    print(
        f"model {Path(args.model).name}, {args.rounds} rounds x {args.max_tokens} max tokens, "
        f"queries ~{args.context_sentences * 16} tokens, medians of {n} requests"
    )
    if full:
        cached_on = sum(r[2] for r in s_res)
        cached_off = sum(r[2] for r in o_res)
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
            f" {statistics.mean(t for _, t, *_ in o_res):.1f} cache off"
        )
        print(
            f"  prefix cache on       {med(s_lat):7.2f} s   ({cached_on} prompt tokens from cache)"
        )
        print(
            f"  prefix cache off      {med(o_lat):7.2f} s   ({cached_off} prompt tokens from cache)"
            f"  -> caching speed-up x{results['cache_speedup']:.2f}"
        )
    if eng_conc:
        c = args.concurrency
        print(
            f"  engine alone c=1      {results['engine_throughput_1_rps']:7.3f} req/s "
            f"({results['engine_tokens_per_s_1']:.0f} tok/s)"
        )
        print(
            f"  engine alone c={c:<2}     {results[f'engine_throughput_{c}_rps']:7.3f} req/s "
            f"({results[f'engine_tokens_per_s_{c}']:.0f} tok/s)  -> "
            f"x{results['engine_throughput_ratio']:.2f} (the ceiling for the server)"
        )
    print(f"  throughput c=1        {thr1:7.3f} req/s ({tok1:.0f} tok/s)")
    print(
        f"  throughput c={args.concurrency:<2}       {thrN:7.3f} req/s ({tokN:.0f} tok/s)"
        f"  -> x{results['throughput_ratio']:.2f} (goal x6)"
    )
    if not eng_conc:
        print(
            f"  round-2/3 prompt tokens from cache, c={args.concurrency}: 1 replica "
            f"{share_1:6.1%}, {args.replicas} replicas {share_R:6.1%}  -> ratio "
            f"{share_R / share_1:.3f} (goal >= 0.9); requests per replica {per_replica}"
        )
    print(f"  total wall time {results['wall_s']:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
