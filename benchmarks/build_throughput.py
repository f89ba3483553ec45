"""Dataset-construction throughput: Ray Data pipeline vs. the same engine alone vs. HF generate.

    .venv/bin/python benchmarks/build_throughput.py [--model builtin:smollm2-135m] [--queries 32]

One run, same prompts (packaged ShareGPT queries), same model, same sampling (greedy), the
weak-thought stage (one round) in three ways:

1. Ray Data: ``map_batches(WeakThoughts)`` on an actor pool of one vLLM actor, the way
   ``ptr-ray build`` runs it: every row awaited on vLLM's async engine, ``--concurrent``
   batches in flight per actor (``pool.max_concurrent_batches``, default 2), and once more
   with one batch at a time. Timed from the moment the actor's engine is ready (engine
   start-up is paid once per run by every method and would hide the orchestration cost),
   to the last row back in the driver.
2. Direct: the offline ``VLLMEngine`` in this process, over the same batches, one blocking
   ``generate`` per batch (the way the build ran before its actors went async).
   Ratio 2/1 - 1 = the pipeline's overhead over the engine alone (goal <= 5 %; negative when
   overlapping batches make the pipeline faster than a batch-at-a-time engine). A second
   figure from the pipeline run alone, wall time after start-up vs. the time the actor had at
   least one batch in hand, measures the orchestration without comparing two runs (robust on a
   shared machine).
3. Sequential transformers ``generate`` (HFEngine, one query at a time) on a subsample
   (``--hf-queries``), compared in generated tokens/s: the speed-up vLLM batching buys.

Absolute numbers depend on the machine (and on what else runs on it); the ratios are the point.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sharegpt_queries(n: int, max_words: int = 120) -> list[str]:
    from ptr_ray.data.clean import clean_text
    from ptr_ray.data.queries import read_sharegpt

    out: list[str] = []
    for row in read_sharegpt():
        if row.ok:
            q = clean_text(row.query)
            if q and len(q.split()) <= max_words and q not in out:
                out.append(q)
        if len(out) >= n:
            break
    return out


def busy_union(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one of the (start, end) intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def run_pipeline(engine_cfg, queries, sampling, batch_size, concurrent):
    import pyarrow as pa
    import ray

    from ptr_ray.config import PromptConfig
    from ptr_ray.config.datagen import PoolConfig
    from ptr_ray.datagen.actors import WeakThoughts
    from ptr_ray.datagen.dataflow import _compute
    from ptr_ray.datagen.rows import new_row, to_table

    class TimedWeak(WeakThoughts):
        """Adds the time its engine became ready (so start-up can be left out) and each
        batch's start and end (the time the actor had work in hand)."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.ready_at = time.time()

        async def __call__(self, batch):
            t0 = time.time()
            t = await super().__call__(batch)
            t1 = time.time()
            for name, v in (("ready_at", self.ready_at), ("batch_start", t0), ("batch_end", t1)):
                t = t.append_column(name, pa.array([v] * t.num_rows, pa.float64()))
            return t

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        rows = [new_row(id=str(i), query=q, kind="ptr") for i, q in enumerate(queries)]
        table = to_table(rows)
        ds = ray.data.from_arrow(
            [table.slice(i, batch_size) for i in range(0, len(rows), batch_size)]
        )
        ds = ds.map_batches(
            TimedWeak,
            fn_constructor_kwargs=dict(
                engine=engine_cfg, rounds=1, sampling=sampling, prompt=PromptConfig()
            ),
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=_compute(PoolConfig(replicas=1, max_concurrent_batches=concurrent)),
            num_cpus=engine_cfg.num_cpus,
        )
        t0 = time.time()
        out = []
        for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            out.extend(b.to_pylist())
        end = time.time()
    finally:
        ray.shutdown()
    ready = min(r["ready_at"] for r in out)
    tokens = sum(sum(r["weak_tokens"]) for r in out)
    busy = busy_union(sorted({(r["batch_start"], r["batch_end"]) for r in out}))
    return {
        "rows": len(out),
        "tokens": tokens,
        "seconds": end - ready,
        "total_seconds": end - t0,
        "startup_seconds": ready - t0,
        "actor_busy_seconds": busy,
    }


def run_direct(engine_cfg, queries, sampling, batch_size):
    from ptr_ray.config import PromptConfig
    from ptr_ray.engine import make_engine
    from ptr_ray.refine import refine_batch

    engine = make_engine(engine_cfg)  # the blocking engine: offline LLM or transformers
    try:
        t0 = time.time()
        tokens = 0
        for i in range(0, len(queries), batch_size):
            for res in refine_batch(
                engine, queries[i : i + batch_size], 1, sampling, PromptConfig()
            ):
                tokens += sum(r.tokens for r in res.rounds)
        dt = time.time() - t0
    finally:
        engine.close()
    return {"rows": len(queries), "tokens": tokens, "seconds": dt}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="builtin:smollm2-135m", help="model source (or 'tiny')")
    p.add_argument("--queries", type=int, default=32)
    p.add_argument("--hf-queries", type=int, default=6, help="subsample for sequential HF generate")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--concurrent", type=int, default=2, help="batches in flight per actor")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    from ptr_ray.config import EngineConfig, SamplingConfig

    model = args.model
    if model == "tiny":
        import tempfile

        from ptr_ray.testing import make_tiny_chat_model

        model = str(make_tiny_chat_model(tempfile.mkdtemp(prefix="ptr-bench-")))
    from ptr_ray.models import resolve_model

    resolve_model(model)  # convert a builtin once, before anything is timed
    queries = sharegpt_queries(args.queries)
    sampling = SamplingConfig(temperature=0.0, max_tokens=args.max_tokens)
    vcfg = EngineConfig(model=model, backend="vllm", max_model_len=2048, num_cpus=1)
    hcfg = vcfg.model_copy(update={"backend": "hf"})
    print(
        f"model {model}; {len(queries)} ShareGPT queries; max_tokens {args.max_tokens}; "
        f"batch {args.batch_size}; greedy",
        flush=True,
    )

    pipe = run_pipeline(vcfg, queries, sampling, args.batch_size, args.concurrent)
    single = run_pipeline(vcfg, queries, sampling, args.batch_size, 1)
    direct = run_direct(vcfg, queries, sampling, args.batch_size)
    hf = run_direct(hcfg, queries[: args.hf_queries], sampling, 1)

    def rate(r):
        return r["rows"] / r["seconds"], r["tokens"] / r["seconds"]

    print(
        f"\n{'method':40} {'rows':>5} {'tokens':>7} {'seconds':>8} {'queries/s':>10} {'gen tok/s':>10}"
    )
    for name, r in (
        (f"Ray Data pipeline, {args.concurrent} batches in flight", pipe),
        ("Ray Data pipeline, 1 batch in flight", single),
        ("vLLM offline engine direct, per batch", direct),
        ("transformers generate, sequential", hf),
    ):
        q, t = rate(r)
        print(
            f"{name:40} {r['rows']:>5} {r['tokens']:>7} {r['seconds']:>8.2f} {q:>10.2f} {t:>10.1f}"
        )
    overhead = rate(direct)[1] / rate(pipe)[1] - 1
    overlap = rate(pipe)[1] / rate(single)[1]
    speedup = rate(pipe)[1] / rate(hf)[1]
    in_run = pipe["seconds"] / pipe["actor_busy_seconds"] - 1
    print(
        f"\npipeline vs. the engine alone (generated tokens/s): overhead {overhead * 100:+.1f}% "
        f"= {1 / (1 + overhead):.3f}x the engine (goal <= 5% overhead, >= 0.95x; "
        f"{'reached' if overhead <= 0.05 else 'NOT reached'}; actor start-up "
        f"{pipe['startup_seconds']:.1f}s excluded)"
    )
    print(
        f"{args.concurrent} batches in flight vs. 1: {overlap:.3f}x (what overlapping batches buy)"
    )
    print(
        f"same run, pipeline wall vs. the time the actor had a batch in hand: {in_run * 100:+.1f}% "
        "(insensitive to load drifting between runs)"
    )
    print(
        f"pipeline speed-up vs. sequential transformers generate: {speedup:.1f}x (generated tokens/s)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "pipeline": pipe,
                    "pipeline_one_batch": single,
                    "overlap_gain": overlap,
                    "direct": direct,
                    "hf_sequential": hf,
                    "overhead": overhead,
                    "overhead_in_run": in_run,
                    "speedup_vs_hf": speedup,
                    "model": model,
                    "queries": len(queries),
                    "max_tokens": args.max_tokens,
                    "batch_size": args.batch_size,
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
