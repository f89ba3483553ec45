"""``ptr-ray build-check``: is the strong model really stronger than the weak one?

PTR's construction only makes sense when the strong model's answers beat the weak model's
thoughts (the paper checks this with a Wilcoxon signed-rank test). This runs both models
greedily on the same labelled items (packaged GSM8K and ARC by default), scores each answer
0/1, reports accuracies with 95% Wilson intervals, and tests the paired per-item scores with
``scipy.stats.wilcoxon`` (one-sided: strong > weak).

The answer extraction here is deliberately small (final number; option letter); the
evaluation stage owns the full metrics.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any

from ptr_ray import prompts
from ptr_ray.config import BuildCheckConfig, EngineConfig, SamplingConfig

log = logging.getLogger(__name__)


class CheckFailed(ValueError):
    """The strong model is not significantly better (only with ``require_significant``)."""


# ------------------------------------------------------------------------- prompts + scoring

def question_prompt(item: Any) -> str:
    if item.choices:
        opts = "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(item.choices))
        return (f"{item.question}\n\n{opts}\n\nReply with the letter of the correct option first, "
                "as in 'The answer is B.', then explain briefly.")
    return (f"{item.question}\n\nSolve it step by step, then end with 'The answer is N.' where N "
            "is the final number.")


_NUM = r"-?\$?\d[\d,]*(?:\.\d+)?"


def _to_number(text: str) -> float | None:
    text = text.replace(",", "").replace("$", "").rstrip(".")
    try:
        return float(text)
    except ValueError:
        return None


def extract_number(text: str) -> float | None:
    """'The answer is N', else \\boxed{N}, else '#### N', else the last number."""
    for pat in (rf"answer is[:\s]*\**\s*({_NUM})", rf"\\boxed\{{\s*({_NUM})\s*\}}", rf"####\s*({_NUM})"):
        hits = re.findall(pat, text, flags=re.IGNORECASE)
        if hits:
            return _to_number(hits[-1])
    nums = re.findall(_NUM, text)
    return _to_number(nums[-1]) if nums else None


def extract_letter(text: str, n_choices: int) -> str | None:
    """The chosen option letter. A bare leading "A" is taken only when followed by option
    punctuation, so the article "A" in "A plant needs..." is not read as a choice."""
    letters = "ABCDEFGHIJ"[:n_choices]
    # Letters match upper case only ("the answer is a bit..." is not option A).
    pats = (
        rf"(?i:answer is)[:\s]*\**\s*\(?([{letters}])\b",
        rf"\\boxed\{{([{letters}])\}}",
        rf"^\s*\**\(?([{letters}])\)?\**\s*(?:[.):\n]|$)",
        rf"\(([{letters}])\)",
        rf"(?i:\boption)\s+([{letters}])\b",
    )
    for pat in pats:
        m = re.search(pat, text, flags=re.MULTILINE)
        if m:
            return m.group(1)
    return None


def score(item: Any, text: str) -> int:
    """1 if the response's answer matches the gold, else 0."""
    if item.choices:
        return int(extract_letter(text, len(item.choices)) == item.answer.strip().upper())
    got, gold = extract_number(text), _to_number(item.answer.strip())
    return int(got is not None and gold is not None and math.isclose(got, gold, rel_tol=0, abs_tol=1e-6))


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sane at 0 and n, unlike the normal one)."""
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def wilcoxon_greater(strong: list[int], weak: list[int]) -> dict[str, Any]:
    """One-sided Wilcoxon signed-rank test that strong's paired scores exceed weak's."""
    from scipy.stats import wilcoxon

    diffs = [s - w for s, w in zip(strong, weak, strict=True)]
    nonzero = sum(1 for d in diffs if d)
    if nonzero == 0:
        return {"statistic": None, "p_value": 1.0, "n_pairs": len(diffs), "n_discordant": 0,
                "note": "identical scores on every item: no evidence either way"}
    res = wilcoxon(strong, weak, alternative="greater", zero_method="wilcox")
    return {"statistic": float(res.statistic), "p_value": float(res.pvalue), "n_pairs": len(diffs),
            "n_discordant": nonzero}


# ---------------------------------------------------------------------------------- running

def answer_all(engine_cfg: EngineConfig, items: list[Any], sampling: SamplingConfig) -> tuple[list[str], float]:
    """One engine at a time (both rarely fit a laptop together); greedy answers to all items."""
    from ptr_ray.engine import make_engine

    engine = make_engine(engine_cfg)
    try:
        t0 = time.time()
        convs = [prompts.query_messages(question_prompt(it)) for it in items]
        gens = engine.generate(convs, sampling.model_copy(update={"n": 1}))
        return [g.text for g in gens], time.time() - t0
    finally:
        engine.close()


def run_check(cfg: BuildCheckConfig) -> dict[str, Any]:
    """Score both models; print and return (and optionally write) the report."""
    from ptr_ray.data.benchmarks import load_task

    items = [it for task in cfg.tasks for it in load_task(task, limit=cfg.limit, seed=cfg.seed)]
    log.info("build-check: %d items from %s", len(items), ", ".join(cfg.tasks))
    scores: dict[str, list[int]] = {}
    seconds: dict[str, float] = {}
    samples: dict[str, list[str]] = {}
    for role, eng in (("weak", cfg.weak), ("strong", cfg.strong)):
        texts, dt = answer_all(eng, items, cfg.sampling)
        scores[role] = [score(it, t) for it, t in zip(items, texts, strict=True)]
        seconds[role] = round(dt, 2)
        samples[role] = texts[:3]
    per_task: dict[str, Any] = {}
    for task in cfg.tasks:
        idx = [i for i, it in enumerate(items) if it.task == task]
        per_task[task] = {"n": len(idx)}
        for role in ("weak", "strong"):
            k = sum(scores[role][i] for i in idx)
            per_task[task][role] = {"accuracy": k / len(idx) if idx else 0.0,
                                    "ci95": wilson(k, len(idx))}
    overall = {role: {"accuracy": sum(s) / len(s), "ci95": wilson(sum(s), len(s))}
               for role, s in scores.items()}
    test = wilcoxon_greater(scores["strong"], scores["weak"])
    test["significant"] = test["p_value"] < cfg.alpha
    report = {
        "weak_model": cfg.weak.model, "strong_model": cfg.strong.model, "n": len(items),
        "tasks": per_task, "overall": overall, "wilcoxon": test, "alpha": cfg.alpha,
        "generate_seconds": seconds, "sample_answers": samples,
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
        cells = [f"{d[m]['accuracy']:.3f} [{d[m]['ci95'][0]:.2f}, {d[m]['ci95'][1]:.2f}]" for m in ("weak", "strong")]
        print(f"{task:16} {d['n']:>4}  {cells[0]:>24}  {cells[1]:>24}")
    t = r["wilcoxon"]
    verdict = "strong > weak (significant)" if t["significant"] else "not significant"
    stat = "n/a" if t["statistic"] is None else f"{t['statistic']:.1f}"
    print(f"Wilcoxon signed-rank (one-sided, strong > weak): W={stat}, p={t['p_value']:.4g}, "
          f"discordant pairs={t['n_discordant']}/{t['n_pairs']}: {verdict} at alpha={r['alpha']}")
