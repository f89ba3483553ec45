"""From evaluation results to hypothesis verdicts: pair items, test, adjust, decide.

A hypothesis compares two *arms* (a method in a round, e.g. ``ptr`` round 3 vs ``ptr`` round 1)
on one task and one metric. The items answered by both arms are paired by id; the test
follows from the metric:

- binary (0/1 scores: accuracy, exact, pass@1, match): exact McNemar on the discordant pairs,
  effect = difference in proportions with Newcombe's paired interval;
- continuous (similarity): paired bootstrap (or, if the config says so, sign-flip
  permutation) test of the mean paired difference (primary), effect = mean difference with a
  percentile bootstrap interval; Wilcoxon signed-rank (``zsplit``) as a secondary check.

Test semantics (fixed in the config before any number exists; see :mod:`ptr_ray.experiment.stats`):

- ``greater`` (A > B): one-sided test of A > B; *supported* if the adjusted p < alpha.
- ``at_most`` (A <= B): one-sided test of A > B; *refuted* if the adjusted p < alpha, else
  *not refuted* (absence of evidence against it, not evidence for it).
- ``at_least`` (A >= B): one-sided test of B > A; *refuted* if significant, else *not refuted*.

The multiplicity family is every (hypothesis, task) test of one analysis; Holm-Bonferroni
adjusts it (``correction: none`` leaves p-values as they are). The effect is always reported
as A - B whatever the tested direction, so its sign reads the same in every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from ptr_ray.errors import PtrRayValueError
from ptr_ray.eval.report import EvalReport, SummaryRow, TaskResult
from ptr_ray.experiment import stats

if TYPE_CHECKING:
    from ptr_ray.config import HypothesisConfig

# Metrics that are continuous by definition, even if a small sample happens to hold only 0/1.
CONTINUOUS_METRICS = frozenset({"similarity"})

RELATIONS = {
    # relation -> (tested direction, verdict if significant, verdict otherwise)
    "greater": ("a > b", "supported", "not supported"),
    "at_most": ("a > b", "refuted", "not refuted"),
    "at_least": ("b > a", "refuted", "not refuted"),
}

# What each relation means, in the words the report's protocol section prints.
SEMANTICS = {
    "greater": "A > B: one-sided test of A > B; *supported* if the adjusted p < alpha, "
    "else *not supported*.",
    "at_most": "A <= B: one-sided test of A > B; *refuted* if the adjusted p < alpha, else "
    "*not refuted* (absence of evidence against A <= B, not evidence for it; read "
    "the effect's interval).",
    "at_least": "A >= B: one-sided test of B > A; *refuted* if the adjusted p < alpha, else "
    "*not refuted* (absence of evidence, as above).",
}


class AnalysisError(PtrRayValueError):
    """A hypothesis that does not fit the results (unknown task, method, round or metric)."""


@dataclass
class VerdictRow:
    """One (hypothesis, task) test: the numbers a reader needs to check the verdict."""

    hypothesis: str
    statement: str
    relation: str
    task: str
    metric: str
    a: str  # "ptr r3"
    b: str
    kind: str  # binary | continuous
    n: int  # paired items
    unpaired: int  # items answered by one arm only (left out)
    mean_a: float
    mean_b: float
    test: str
    tested: str  # "a > b" or "b > a"
    statistic: float
    statistic_name: str
    p_raw: float | None
    effect: float  # A - B
    ci_low: float
    ci_high: float
    effect_method: str
    discordant_a: int | None = None  # binary: items right under A only
    discordant_b: int | None = None  # binary: items right under B only
    secondary: str = ""  # continuous: the Wilcoxon signed-rank check
    secondary_p: float | None = None
    p_adj: float | None = None
    verdict: str = ""


def arm_label(method: str, round_: int) -> str:
    return f"{method} r{round_}"


def _result(report: EvalReport, method: str, task: str) -> TaskResult:
    for r in report.results:
        if r.method == method and r.task == task:
            return r
    raise AnalysisError(
        f"no results for method {method!r} on task {task!r} "
        f"(methods: {', '.join(report.methods)}; tasks: {', '.join(report.tasks)})"
    )


def headline_metric(report: EvalReport, task: str) -> str:
    """The task's headline metric (first in its metric list)."""
    for r in report.results:
        if r.task == task:
            return r.metrics[0]
    raise AnalysisError(f"no results for task {task!r}; tasks: {', '.join(report.tasks)}")


def arm_scores(
    report: EvalReport, method: str, round_: int, task: str, metric: str
) -> dict[str, float]:
    """item id -> score of one arm (method, round) on one task and metric."""
    res = _result(report, method, task)
    if not 1 <= round_ <= res.rounds:
        raise AnalysisError(f"{method}/{task} has rounds 1..{res.rounds}, not {round_}")
    if metric not in res.metrics:
        raise AnalysisError(f"task {task!r} has metrics {res.metrics}, not {metric!r}")
    out = {}
    for it in res.items:
        if len(it.rounds) >= round_:
            out[it.id] = float(it.rounds[round_ - 1].values.get(metric, 0.0))
    return out


def paired_values(
    report: EvalReport, task: str, metric: str, a: tuple[str, int], b: tuple[str, int]
) -> tuple[list[str], np.ndarray, np.ndarray, int]:
    """Scores of the items both arms answered, in a stable id order; plus the unpaired count."""
    sa = arm_scores(report, a[0], a[1], task, metric)
    sb = arm_scores(report, b[0], b[1], task, metric)
    ids = sorted(set(sa) & set(sb))
    unpaired = len(set(sa) ^ set(sb))
    return (
        ids,
        np.array([sa[i] for i in ids], dtype=float),
        np.array([sb[i] for i in ids], dtype=float),
        unpaired,
    )


def metric_kind(metric: str, *values: np.ndarray) -> str:
    """binary when every score is 0 or 1 (the rule the eval report's intervals follow)."""
    if metric in CONTINUOUS_METRICS:
        return "continuous"
    return "binary" if all(np.isin(v, (0.0, 1.0)).all() for v in values) else "continuous"


def hypothesis_tasks(h: HypothesisConfig, report: EvalReport) -> list[str]:
    """The tasks a hypothesis is tested on: ``all`` = every task of the report."""
    if h.task == "all":
        return report.tasks
    tasks = [h.task] if isinstance(h.task, str) else list(h.task)
    missing = [t for t in tasks if t not in report.tasks]
    if missing:
        raise AnalysisError(
            f"hypothesis {h.id}: task(s) {missing} not in the results ({', '.join(report.tasks)})"
        )
    return tasks


def run_test(
    h: HypothesisConfig,
    report: EvalReport,
    task: str,
    n_boot: int = 10000,
    seed: int = 0,
    continuous_test: stats.ContinuousTest = "bootstrap",
) -> VerdictRow:
    """Run the test of one hypothesis on one task (no adjustment, no verdict yet)."""
    if h.relation not in RELATIONS:
        raise AnalysisError(f"hypothesis {h.id}: unknown relation {h.relation!r}")
    metric = h.metric or headline_metric(report, task)
    arm_a, arm_b = (h.a.method, h.a.round), (h.b.method, h.b.round)
    _, xa, xb, unpaired = paired_values(report, task, metric, arm_a, arm_b)
    tested = RELATIONS[h.relation][0]
    kind = metric_kind(metric, xa, xb)
    # The tested side comes first: "b > a" swaps the arms for the one-sided test.
    first, second = (xa, xb) if tested == "a > b" else (xb, xa)
    # The fields every outcome of this test shares; each return below adds its own.
    row = partial(
        VerdictRow,
        hypothesis=h.id,
        statement=h.statement,
        relation=h.relation,
        task=task,
        metric=metric,
        a=arm_label(*arm_a),
        b=arm_label(*arm_b),
        kind=kind,
        n=len(xa),
        unpaired=unpaired,
        tested=tested,
        mean_a=float(xa.mean()) if len(xa) else float("nan"),
        mean_b=float(xb.mean()) if len(xb) else float("nan"),
    )
    if len(xa) == 0:
        return row(
            test="none (no paired items)",
            statistic=float("nan"),
            statistic_name="",
            p_raw=None,
            effect=float("nan"),
            ci_low=float("nan"),
            ci_high=float("nan"),
            effect_method="",
        )
    if kind == "binary":
        table = stats.discordance(xa, xb)
        won, lost = (table.b, table.c) if tested == "a > b" else (table.c, table.b)
        mc = stats.mcnemar_exact(won, lost, "greater")
        eff = stats.paired_diff_proportions(table)
        return row(
            test=f"exact McNemar, one-sided {tested}",
            statistic=mc.statistic,
            statistic_name="discordant pairs won by the tested side",
            p_raw=mc.p_value,
            effect=eff.estimate,
            ci_low=eff.ci_low,
            ci_high=eff.ci_high,
            effect_method=eff.method,
            discordant_a=table.b,
            discordant_b=table.c,
        )
    res = stats.paired_mean_test(first, second, n_boot, seed, "greater", continuous_test)
    ci = stats.bootstrap_ci(xa - xb, n_boot, seed)  # the effect is A - B in every row
    wil = stats.wilcoxon_signed_rank(first, second, "greater")
    if continuous_test == "bootstrap":
        name = f"paired bootstrap of the mean ({n_boot} resamples), one-sided {tested}"
    else:
        draws = "exact" if res.exact else f"{n_boot} draws"
        name = f"sign-flip permutation of the mean ({draws}), one-sided {tested}"
    return row(
        test=name,
        statistic=res.mean_diff,
        statistic_name="mean difference (tested side - other)",
        p_raw=res.p_value,
        effect=float((xa - xb).mean()),
        ci_low=ci[0],
        ci_high=ci[1],
        effect_method="mean paired difference, percentile bootstrap",
        secondary=f"Wilcoxon signed-rank (zsplit) p={wil.p_value:.4g}",
        secondary_p=wil.p_value,
    )


def decide(row: VerdictRow, alpha: float) -> str:
    """The verdict of one row from its adjusted p-value (see the module doc)."""
    if row.p_adj is None:
        return "no data"
    _, significant, otherwise = RELATIONS[row.relation]
    return significant if row.p_adj < alpha else otherwise


def analyse(
    report: EvalReport,
    hypotheses: Sequence[HypothesisConfig],
    alpha: float = 0.05,
    correction: str = "holm",
    n_boot: int = 10000,
    seed: int = 0,
    continuous_test: stats.ContinuousTest = "bootstrap",
) -> list[VerdictRow]:
    """Every (hypothesis, task) test, Holm-adjusted over the whole family, with verdicts."""
    rows = [
        run_test(h, report, task, n_boot, seed, continuous_test)
        for h in hypotheses
        for task in hypothesis_tasks(h, report)
    ]
    if correction == "holm":
        adjusted: list[float | None] = list(stats.holm([r.p_raw for r in rows]))
    elif correction == "none":
        adjusted = [r.p_raw for r in rows]
    else:
        raise AnalysisError(f"unknown correction {correction!r} (holm or none)")
    for row, p in zip(rows, adjusted, strict=True):
        row.p_adj = None if row.p_raw is None else p
        row.verdict = decide(row, alpha)
    return rows


def headline_rows(report: EvalReport) -> list[SummaryRow]:
    """Per task, method and round: n, the headline metric's mean and its 95% interval."""
    return [s for r in report.results for s in r.summary() if s.metric == r.metrics[0]]
