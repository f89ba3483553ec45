"""Dataset-construction throughput: Ray Data pipeline vs. the same engine alone vs. HF generate.

    .venv/bin/python benchmarks/build_throughput.py [--model builtin:smollm2-135m] [--queries 32]

One run, same prompts (packaged ShareGPT queries), same model, same sampling (greedy), the
weak-thought stage (one round) in three ways:

1. Ray Data: ``map_batches(WeakThoughts)`` on an actor pool of one vLLM actor, the way
   ``ptr-ray build`` runs it. Timed from the moment the actor's engine is ready (engine
   start-up is paid once per run by every method and would hide the orchestration cost),
   to the last row back in the driver.
2. Direct: the same ``VLLMEngine`` in this process, over the same batches.
   Ratio 1/2 - 1 = Ray Data's orchestration overhead (goal <= 5 %). A second figure from the
   pipeline run alone, wall time after start-up vs. the actor's time inside ``generate``,
   measures the same overhead without comparing two runs (robust on a shared machine).
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


def run_pipeline(engine_cfg, queries, sampling, batch_size):
    import pyarrow as pa
    import ray

    from ptr_ray.config import PromptConfig
    from ptr_ray.datagen.actors import WeakThoughts
    from ptr_ray.datagen.rows import new_row, to_table

    class TimedWeak(WeakThoughts):
        """Adds the time its engine became ready, so start-up can be left out."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.ready_at = time.time()

        def __call__(self, batch):
            t = super().__call__(batch)
            return t.append_column("ready_at", pa.array([self.ready_at] * t.num_rows, pa.float64()))

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
            compute=ray.data.ActorPoolStrategy(size=1),
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
    busy = sum(r["t_weak"] for r in out)  # time the actor spent inside generate calls
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

    engine = make_engine(engine_cfg)
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

    pipe = run_pipeline(vcfg, queries, sampling, args.batch_size)
    direct = run_direct(vcfg, queries, sampling, args.batch_size)
    hf = run_direct(hcfg, queries[: args.hf_queries], sampling, 1)

    def rate(r):
        return r["rows"] / r["seconds"], r["tokens"] / r["seconds"]

    print(
        f"\n{'method':34} {'rows':>5} {'tokens':>7} {'seconds':>8} {'queries/s':>10} {'gen tok/s':>10}"
    )
    for name, r in (
        ("Ray Data pipeline (vLLM actor)", pipe),
        ("vLLM engine direct", direct),
        ("transformers generate, sequential", hf),
    ):
        q, t = rate(r)
        print(
            f"{name:34} {r['rows']:>5} {r['tokens']:>7} {r['seconds']:>8.2f} {q:>10.2f} {t:>10.1f}"
        )
    overhead = rate(direct)[1] / rate(pipe)[1] - 1
    speedup = rate(pipe)[1] / rate(hf)[1]
    in_run = pipe["seconds"] / pipe["actor_busy_seconds"] - 1
    print(
        f"\nRay Data orchestration overhead vs. direct engine: {overhead * 100:+.1f}% "
        f"(goal <= 5%; actor start-up {pipe['startup_seconds']:.1f}s excluded)"
    )
    print(
        f"same run, pipeline wall vs. the actor's time inside generate: {in_run * 100:+.1f}% "
        "(insensitive to load drifting between the two runs)"
    )
    print(
        f"pipeline speed-up vs. sequential transformers generate: {speedup:.1f}x (generated tokens/s)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "pipeline": pipe,
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
