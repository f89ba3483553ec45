"""``ptr-ray build-check``: is the strong model really stronger than the weak one?

PTR's construction only makes sense when the strong model's answers beat the weak model's
thoughts (the paper checks this with a Wilcoxon signed-rank test). This runs both models
greedily on the same labelled items (packaged GSM8K and ARC by default), scores each answer
0/1, reports accuracies with 95% Wilson intervals, and tests the paired per-item scores with
``scipy.stats.wilcoxon`` (one-sided: strong > weak).

Prompts, answer extraction and scoring are the evaluation's (:mod:`ptr_ray.eval.tasks`,
:mod:`ptr_ray.eval.metrics`), so "correct" means the same here as in ``ptr-ray eval``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from ptr_ray import prompts
from ptr_ray.config import BuildCheckConfig, EngineConfig, SamplingConfig
from ptr_ray.errors import PtrRayValueError
from ptr_ray.eval.metrics import score_batch
from ptr_ray.eval.stats import wilcoxon_greater, wilson
from ptr_ray.eval.tasks import EvalTask, packaged_task

log = logging.getLogger(__name__)


class CheckFailed(PtrRayValueError):
    """The strong model is not significantly better (only with ``require_significant``)."""


def check_metric(task: EvalTask) -> str:
    """The metric a task is checked on: the evaluation's headline metric, except that math is
    scored *flexible* (the stated answer, else the last number): the check compares raw model
    strength, not how well a model follows the answer format."""
    return "flexible" if task.kind == "math" else task.metric_names()[0]


def score_answers(task: EvalTask, texts: list[str]) -> list[int]:
    """0/1 per item, by the evaluation's own extraction and scoring rules."""
    metric = check_metric(task)
    return [int(s.values[metric] >= 1.0) for s in score_batch(task.kind, task.items, texts)]


def answer_all(
    engine_cfg: EngineConfig, queries: list[str], sampling: SamplingConfig
) -> tuple[list[str], float]:
    """One engine at a time (both rarely fit a laptop together); greedy answers to all queries."""
    from ptr_ray.engine import make_engine

    engine = make_engine(engine_cfg)
    try:
        t0 = time.time()
        convs = [prompts.query_messages(q) for q in queries]
        gens = engine.generate(convs, sampling.model_copy(update={"n": 1}))
        return [g.text for g in gens], time.time() - t0
    finally:
        engine.close()


def run_check(cfg: BuildCheckConfig) -> dict[str, Any]:
    """Score both models; print and return (and optionally write) the report."""
    tasks = [packaged_task(name, cfg.limit, cfg.seed) for name in cfg.tasks]
    queries = [t.prompt(it) for t in tasks for it in t.items]
    log.info("build-check: %d items from %s", len(queries), ", ".join(cfg.tasks))
    scores: dict[str, list[int]] = {}
    seconds: dict[str, float] = {}
    samples: dict[str, list[str]] = {}
    for role, eng in (("weak", cfg.weak), ("strong", cfg.strong)):
        texts, dt = answer_all(eng, queries, cfg.sampling)
        start, scores[role] = 0, []
        for t in tasks:
            scores[role] += score_answers(t, texts[start : start + len(t.items)])
            start += len(t.items)
        seconds[role] = round(dt, 2)
        samples[role] = texts[:3]
    items = [it for t in tasks for it in t.items]
    per_task: dict[str, Any] = {}
    for task in tasks:
        idx = [i for i, it in enumerate(items) if it.task == task.name]
        per_task[task.name] = {"n": len(idx), "metric": check_metric(task)}
        for role in ("weak", "strong"):
            k = sum(scores[role][i] for i in idx)
            per_task[task.name][role] = {
                "accuracy": k / len(idx) if idx else 0.0,
                "ci95": wilson(k, len(idx)),
            }
    overall = {
        role: {"accuracy": sum(s) / len(s), "ci95": wilson(sum(s), len(s))}
        for role, s in scores.items()
    }
    test = wilcoxon_greater(scores["strong"], scores["weak"])
    test["significant"] = test["p_value"] < cfg.alpha
    report = {
        "weak_model": cfg.weak.model,
        "strong_model": cfg.strong.model,
        "n": len(items),
        "tasks": per_task,
        "overall": overall,
        "wilcoxon": test,
        "alpha": cfg.alpha,
        "generate_seconds": seconds,
        "sample_answers": samples,
    }
    _print(report)
    if cfg.output:
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output).write_text(json.dumps(report, indent=2) + "\n")
    if cfg.require_significant and not test["significant"]:
        raise CheckFailed(
            f"strong model is not significantly better than weak (p={test['p_value']:.3g} >= {cfg.alpha})"
        )
    return report


def _print(r: dict[str, Any]) -> None:
    print(f"\nweak: {r['weak_model']}   strong: {r['strong_model']}   items: {r['n']}")
    print(f"{'task':16} {'n':>4}  {'weak acc [95% CI]':>24}  {'strong acc [95% CI]':>24}")
    rows = list(r["tasks"].items()) + [("overall", {"n": r["n"], **r["overall"]})]
    for task, d in rows:
        cells = [
            f"{d[m]['accuracy']:.3f} [{d[m]['ci95'][0]:.2f}, {d[m]['ci95'][1]:.2f}]"
            for m in ("weak", "strong")
        ]
        print(f"{task:16} {d['n']:>4}  {cells[0]:>24}  {cells[1]:>24}")
    t = r["wilcoxon"]
    verdict = "strong > weak (significant)" if t["significant"] else "not significant"
    stat = "n/a" if t["statistic"] is None else f"{t['statistic']:.1f}"
    print(
        f"Wilcoxon signed-rank (one-sided, strong > weak): W={stat}, p={t['p_value']:.4g}, "
        f"discordant pairs={t['n_discordant']}/{t['n_pairs']}: {verdict} at alpha={r['alpha']}"
    )
