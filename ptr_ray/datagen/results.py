"""What a build produced: finished rows as dataset records, and the counts stats.json reports.

Split from :mod:`ptr_ray.datagen.dataflow` (which wires the Ray Data pipeline) because this is
the bookkeeping of its output: which engine ran which thought round, where the final answers
came from (the strong model or a source's references), the record each row becomes, and the
token/time totals over every generated row, written or rejected.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ptr_ray.config import BuildConfig, EngineConfig
from ptr_ray.records import Record


def weak_engines(cfg: BuildConfig) -> list[EngineConfig]:
    """The weak models a build uses, in turn order: thought t (0-based) comes from model
    ``t % len(models)``, so with fewer thoughts than models only the first ones are used. One
    actor pool holds one engine of each (:class:`ptr_ray.datagen.actors.WeakThoughts`)."""
    return list(cfg.weak.models[: min(cfg.weak.num_thoughts, len(cfg.weak.models))])


def weak_round_models(cfg: BuildConfig) -> list[str]:
    """The model of each thought, in order."""
    engines = weak_engines(cfg)
    return [engines[t % len(engines)].model for t in range(cfg.weak.num_thoughts)]


def reference_label(source: str) -> str:
    """What records and stats name as the strong model when answers are a source's references."""
    return f"references:{source}"


def strong_answers_label(cfg: BuildConfig, sources: set[str]) -> str:
    """Where the final answers came from, as stats.json and meta.json say it: the strong model,
    or ``references:<source>`` for each source (``strong.source=references``)."""
    if cfg.strong.source == "model":
        return cfg.strong.model.model
    return ",".join(reference_label(s) for s in sorted(sources)) or "references"


def to_record(row: dict[str, Any], cfg: BuildConfig, run_id: str) -> dict[str, Any]:
    """The dataset record (docs/design.md) of a finished pipeline row (validated by records.Record)."""
    ptr = row["kind"] == "ptr"
    references = cfg.strong.source == "references"
    from_reference = references or (
        not ptr and bool(row["ref_answer"]) and row["answer"] == row["ref_answer"]
    )
    weak_names = list(dict.fromkeys(e.model for e in weak_engines(cfg)))
    meta: dict[str, Any] = {"run": run_id}
    if ptr:
        meta.update(weak_tokens=row["weak_tokens"], weak_finish=row["weak_finish"])
        if not references:
            meta["icl_examples"] = row["icl_used"]
    if not from_reference:
        meta.update(strong_tokens=row["strong_tokens"], strong_finish=row["strong_finish"])
    else:
        meta["answer_from"] = "reference"
    if references:
        strong_model: str | None = reference_label(row["source"] or "")
    else:  # a plain SFT row keeping its source's answer names no strong model
        strong_model = None if from_reference else cfg.strong.model.model
    rec = Record(
        id=row["id"],
        query=row["query"],
        thoughts=row["thoughts"] if ptr else [],
        answer=row["answer"],
        kind=row["kind"],
        source=row["source"] or "",
        weak_model=",".join(weak_names) if ptr else None,
        strong_model=strong_model,
        consistency=row["consistency"],
        meta=meta,
    )
    return rec.model_dump(mode="json")


class Tally:
    """Token and time totals over every generated row (written or rejected)."""

    def __init__(self, cfg: BuildConfig) -> None:
        self.round_models = weak_round_models(cfg)
        self.tokens: dict[str, dict[str, dict[str, int]]] = defaultdict(
            lambda: defaultdict(lambda: {"prompt": 0, "generated": 0, "cached": 0, "calls": 0})
        )
        self.busy = {"weak": 0.0, "strong": 0.0, "consistency": 0.0}
        self.strong_model = cfg.strong.model.model
        self.judge_model = (cfg.consistency.judge or cfg.strong.model).model
        self.consistency: list[float] = []

    def add(self, row: dict[str, Any]) -> None:
        for t, n in enumerate(row["weak_tokens"]):
            model = self.round_models[t] if t < len(self.round_models) else "?"
            d = self.tokens["weak"][model]
            d["generated"] += n
            d["prompt"] += row["weak_prompt_tokens"][t]
            d["cached"] += row["weak_cached_tokens"][t]
            d["calls"] += 1
        if row["strong_tokens"]:
            d = self.tokens["strong"][self.strong_model]
            d["generated"] += row["strong_tokens"]
            d["prompt"] += row["strong_prompt_tokens"]
            d["cached"] += row["strong_cached_tokens"]
            d["calls"] += 1
        if row["judge_tokens"]:
            d = self.tokens["judge"][self.judge_model]
            d["generated"] += row["judge_tokens"]
            d["calls"] += 1
        self.busy["weak"] += row["t_weak"] or 0.0
        self.busy["strong"] += row["t_strong"] or 0.0
        self.busy["consistency"] += row["t_consistency"] or 0.0
        if row["consistency"] is not None:
            self.consistency.append(row["consistency"])

    def token_stats(self) -> dict[str, Any]:
        return {
            role: {m: dict(v) for m, v in by_model.items()}
            for role, by_model in self.tokens.items()
        }


def summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    v = sorted(values)
    return {
        "n": len(v),
        "mean": sum(v) / len(v),
        "min": v[0],
        "median": v[len(v) // 2],
        "max": v[-1],
    }
