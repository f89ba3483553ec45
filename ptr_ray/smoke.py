"""``ptr-ray smoke``: the quickest real check that the packaged models run through vLLM."""

from __future__ import annotations

import time

from ptr_ray.config import SmokeConfig
from ptr_ray.engine import make_engine


def run_smoke(cfg: SmokeConfig) -> list[str]:
    """Load each model in turn (one engine at a time fits a laptop), answer, report timings."""
    answers = []
    for source in cfg.models:
        t0 = time.time()
        engine = make_engine(cfg.engine.model_copy(update={"model": source}))
        t_load = time.time() - t0
        try:
            gen = engine.generate([[{"role": "user", "content": cfg.query}]], cfg.sampling)[0]
        finally:
            engine.close()
        c = gen.completions[0]
        answers.append(c.text)
        print(
            f"\n== {source} ({cfg.engine.backend}) load {t_load:.1f}s, generate {gen.latency_s:.2f}s, "
            f"{gen.prompt_tokens} prompt + {c.tokens} new tokens ({c.finish_reason})"
        )
        print(f"Q: {cfg.query}\nA: {c.text.strip()}")
    return answers
