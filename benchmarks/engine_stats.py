"""The cost of vLLM's engine stats exported to Ray's metrics (``engine.metrics``, default on).

    .venv/bin/python benchmarks/engine_stats.py [--model tiny|builtin:smollm2-135m] [--reps 3]

Two offline engines of the same model in one process under a local Ray instance (so the stats
really go to Ray's metrics, as in a build actor): one with ``metrics: false`` (vLLM computes no
stats), one with ``metrics: true`` (stats computed every step and recorded as role-labelled Ray
metrics). The same greedy workloads run on each, alternately, ``--reps`` times:

- batched: ``--batch`` prompts at once, ``--tokens`` new tokens each (a build's batch);
- single stream: ``--stream`` prompts one after the other (the per-step cost is largest
  relative to the step when a step carries one sequence).

Reported: generated tokens/s of each (median of the reps) and the ratio on/off (1.0 = free).
The tiny random model (``--model tiny``, the default: the fastest steps, so the worst case for
a per-step cost) or a packaged one. Absolute numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _prompts(n: int, tag: str) -> list[list[dict[str, str]]]:
    return [
        [{"role": "user", "content": f"{tag} {i}: list some facts about the number {i * 7}."}]
        for i in range(n)
    ]


def _timed(engine, convs, sampling, one_by_one: bool) -> tuple[float, int]:
    t0 = time.perf_counter()
    if one_by_one:
        gens = [g for c in convs for g in engine.generate([c], sampling)]
    else:
        gens = engine.generate(convs, sampling)
    dt = time.perf_counter() - t0
    return dt, sum(c.tokens for g in gens for c in g.completions)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="tiny (a random test model) or a source")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--stream", type=int, default=8)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    import ray

    from ptr_ray.config import EngineConfig, SamplingConfig
    from ptr_ray.engine.vllm import VLLMEngine
    from ptr_ray.runtime_env import apply_env, ray_env_vars

    apply_env(cpu=True)
    model = args.model
    if model == "tiny":
        from ptr_ray.testing import make_tiny_chat_model

        model = str(make_tiny_chat_model(tempfile.mkdtemp(prefix="ptr-bench-model-")))
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=tempfile.mkdtemp(prefix="ray-", dir="/tmp"),
        log_to_driver=False,
        runtime_env={"env_vars": ray_env_vars()},
    )
    base = dict(model=model, max_model_len=1024, max_num_seqs=max(args.batch, 8), kv_cache_gib=1)
    if args.model == "tiny":
        base["dtype"] = "float32"
    engines = {}
    try:
        for mode in ("off", "on"):
            t0 = time.time()
            engines[mode] = VLLMEngine(EngineConfig(**base, metrics=mode == "on"), role="bench")
            assert engines[mode].exports_metrics == (mode == "on")
            print(f"engine metrics={mode} ready in {time.time() - t0:.1f}s")
        sampling = SamplingConfig(max_tokens=args.tokens)
        for mode in engines:  # warm-up (first-call costs), not timed
            _timed(engines[mode], _prompts(4, "warm-up"), sampling, one_by_one=False)
        rates: dict[str, dict[str, list[float]]] = {
            w: {"off": [], "on": []} for w in ("batched", "stream")
        }
        for rep in range(args.reps):
            order = ("off", "on") if rep % 2 == 0 else ("on", "off")
            for mode in order:
                for work, n, one in (
                    ("batched", args.batch, False),
                    ("stream", args.stream, True),
                ):
                    # a different prompt set per rep: no prefix-cache reuse across reps
                    dt, toks = _timed(engines[mode], _prompts(n, f"r{rep}"), sampling, one)
                    rates[work][mode].append(toks / dt)
        result = {"model": args.model, "reps": args.reps, "tokens": args.tokens}
        for work, by_mode in rates.items():
            off, on = statistics.median(by_mode["off"]), statistics.median(by_mode["on"])
            result[work] = {"off_tok_s": off, "on_tok_s": on, "ratio_on_off": on / off}
            print(
                f"{work:8s}: stats off {off:8.1f} tok/s, on {on:8.1f} tok/s, "
                f"ratio on/off {on / off:.3f} (runs off {[round(x) for x in by_mode['off']]}, "
                f"on {[round(x) for x in by_mode['on']]})"
            )
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
    finally:
        for eng in engines.values():
            eng.close()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
