"""Paired tests for "is method/round A better than B on the same items?".

Every comparison of the experiment is *paired*: the same items answered under two conditions
(two rounds of one model, or two models in one round). Pairing removes the between-item
variance that dominates at 50-200 items, so these tests are far more sensitive than comparing
two accuracies with unpaired intervals.

What each function computes, and the choices made (so a reader can check them by hand):

- :func:`mcnemar_exact` (binary scores): the exact McNemar test, a binomial test on the
  discordant pairs only: ``b`` items right under A and wrong under B, ``c`` the reverse. Under
  H0 each discordant pair goes either way with probability 1/2, so one-sided
  ``p = P(X >= b)`` with ``X ~ Bin(b + c, 1/2)`` (``scipy.stats.binomtest``).
- :func:`paired_diff_proportions` (binary effect size): the difference in proportions
  ``(b - c) / n`` with Newcombe's (1998) interval for paired data (his method 10: Wilson
  intervals of both marginals combined with the continuity-corrected phi correlation of the
  2x2 table; checked against a published worked example in the tests). It stays
  inside [-1, 1] and behaves at 0 and n discordant pairs, unlike the Wald interval.
- :func:`paired_mean_test` (continuous scores, the primary test): the mean paired difference
  and a *percentile bootstrap* 95% interval of it (items resampled with replacement, seeded).
  Its p-value is one of two, chosen in the experiment's config before any run:
  ``bootstrap`` (the default, as the project's pre-registered protocol names it): the share of
  bootstrap means <= 0 with the +1 correction, ``(1 + #{mean* <= 0}) / (1 + n_boot)``; it is
  the inversion of the percentile interval, fine at tens of items and optimistic at a handful.
  ``sign_flip``: a permutation test: under H0 (differences symmetric about 0) each
  difference's sign is exchangeable, so ``p = (1 + #{flipped mean >= observed}) /
  (1 + n_boot)``, exact (all ``2**n`` patterns) when ``2**n <= n_boot``; a real null test at
  any n.
- :func:`wilcoxon_signed_rank` (continuous, secondary): scipy's signed-rank test with
  ``zero_method="zsplit"``: zero differences (an answer carried over unchanged, or an equal
  score) stay in the ranking and their ranks are split between the two signs, so many
  unchanged items pull the statistic toward "no effect" instead of being dropped.
- :func:`holm` : the Holm-Bonferroni step-down adjustment over a family of p-values.

All one-sided tests here are of "A > B" (``alternative="greater"``); for "B > A" swap the
arguments.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from ptr_ray.errors import PtrRayValueError

Alternative = Literal["greater", "less", "two-sided"]
CONFIDENCE = 0.95
# Per-item scores or differences: a list, or the float arrays the analysis pairs them into.
Scores: TypeAlias = Sequence[float] | np.ndarray


class StatsError(PtrRayValueError):
    """Scores that cannot be compared as given (unequal lengths, non-binary for McNemar)."""


def _pair(a: Scores, b: Scores) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise StatsError(f"paired scores need two equal-length lists (got {x.shape} and {y.shape})")
    return x, y


def _check_alternative(alternative: str) -> None:
    if alternative not in ("greater", "less", "two-sided"):
        raise StatsError(f"alternative must be greater, less or two-sided (got {alternative!r})")


# ------------------------------------------------------------------------------ binary


@dataclass(frozen=True)
class Discordance:
    """The 2x2 table of paired binary scores: ``both`` right, ``b`` = A only, ``c`` = B only."""

    both: int
    b: int
    c: int
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.b + self.c + self.neither


def discordance(a: Scores, b: Scores) -> Discordance:
    """Count the four cells of paired 0/1 scores (A's score first)."""
    x, y = _pair(a, b)
    if not (np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all()):
        raise StatsError("McNemar needs 0/1 scores; use paired_mean_test for continuous ones")
    return Discordance(
        both=int(((x == 1) & (y == 1)).sum()),
        b=int(((x == 1) & (y == 0)).sum()),
        c=int(((x == 0) & (y == 1)).sum()),
        neither=int(((x == 0) & (y == 0)).sum()),
    )


@dataclass(frozen=True)
class McNemarResult:
    b: int  # pairs A right, B wrong
    c: int  # pairs A wrong, B right
    p_value: float
    alternative: str

    @property
    def statistic(self) -> float:
        """The number of discordant pairs won by A (the binomial test's statistic)."""
        return float(self.b)


def mcnemar_exact(b: int, c: int, alternative: Alternative = "greater") -> McNemarResult:
    """Exact McNemar test from the discordant counts; "greater" tests A better than B.

    No discordant pair at all means the data cannot tell A from B: p = 1.
    """
    from scipy.stats import binomtest

    _check_alternative(alternative)
    if b < 0 or c < 0:
        raise StatsError(f"discordant counts must be >= 0 (got b={b}, c={c})")
    if b + c == 0:
        return McNemarResult(b, c, 1.0, alternative)
    p = float(binomtest(b, b + c, 0.5, alternative=alternative).pvalue)
    return McNemarResult(b, c, min(1.0, p), alternative)


@dataclass(frozen=True)
class Effect:
    """A paired difference A - B with its 95% interval and how it was computed."""

    estimate: float
    ci_low: float
    ci_high: float
    method: str


def paired_diff_proportions(table: Discordance) -> Effect:
    """Difference in proportions ``p_A - p_B = (b - c) / n``, Newcombe's paired 95% interval
    (built on the report's 95% Wilson intervals of the two marginals)."""
    from ptr_ray.eval.stats import wilson

    n = table.n
    if n == 0:
        return Effect(0.0, -1.0, 1.0, "Newcombe paired (n=0)")
    p1 = (table.both + table.b) / n
    p2 = (table.both + table.c) / n
    l1, u1 = wilson(table.both + table.b, n)
    l2, u2 = wilson(table.both + table.c, n)
    # phi: correlation of the two scores, with Newcombe's continuity correction (a positive
    # cross-product is reduced by n/2, floored at 0); 0 when a margin is constant.
    margins = (
        (table.both + table.b)
        * (table.c + table.neither)
        * (table.both + table.c)
        * (table.b + table.neither)
    )
    cross = table.both * table.neither - table.b * table.c
    if not margins:
        phi = 0.0
    elif cross > n / 2:
        phi = (cross - n / 2) / math.sqrt(margins)
    elif cross >= 0:
        phi = 0.0
    else:
        phi = cross / math.sqrt(margins)
    diff = p1 - p2
    d_low = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    d_high = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return Effect(diff, max(-1.0, diff - d_low), min(1.0, diff + d_high), "Newcombe paired")


# -------------------------------------------------------------------------- continuous


ContinuousTest = Literal["bootstrap", "sign_flip"]


@dataclass(frozen=True)
class PairedMeanResult:
    mean_diff: float  # mean of A - B
    ci_low: float  # percentile bootstrap interval of the mean difference
    ci_high: float
    p_value: float
    method: str  # bootstrap | sign_flip: where the p-value comes from
    alternative: str
    n: int
    exact: bool  # sign_flip: every sign pattern enumerated

    @property
    def effect(self) -> Effect:
        return Effect(
            self.mean_diff,
            self.ci_low,
            self.ci_high,
            "mean paired difference, percentile bootstrap",
        )


def bootstrap_means(diffs: Scores, n_boot: int = 10000, seed: int = 0) -> np.ndarray:
    """Means of ``n_boot`` resamples of the paired differences (items drawn with replacement)."""
    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        return np.zeros(0)
    rng = np.random.default_rng(seed)
    return d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)


def bootstrap_ci(
    diffs: Scores, n_boot: int = 10000, seed: int = 0, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of paired differences."""
    means = bootstrap_means(diffs, n_boot, seed)
    if means.size == 0:
        return (0.0, 0.0)
    return _percentile_interval(means, confidence)


def _percentile_interval(means: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` share of the bootstrap means (the percentile interval)."""
    tail = (1 - confidence) / 2 * 100
    bounds: npt.NDArray[np.float64] = np.percentile(means, [tail, 100 - tail])
    return (float(bounds[0]), float(bounds[1]))


def bootstrap_p(means: np.ndarray, alternative: Alternative = "greater") -> float:
    """One-sided bootstrap p of "mean > 0": the share of bootstrap means <= 0, with the +1
    correction ``(1 + #{mean* <= 0}) / (1 + n_boot)`` (never 0). Two-sided: twice the smaller
    tail, capped at 1. No resamples (no items): 1."""
    _check_alternative(alternative)
    if means.size == 0:
        return 1.0
    n = means.size
    p_greater = (1 + int((means <= 0).sum())) / (1 + n)
    p_less = (1 + int((means >= 0).sum())) / (1 + n)
    if alternative == "greater":
        return min(1.0, p_greater)
    if alternative == "less":
        return min(1.0, p_less)
    return min(1.0, 2 * min(p_greater, p_less))


def _tail_p(null_means: np.ndarray, observed: float, alternative: str, plus_one: bool) -> float:
    eps = 1e-12 * max(1.0, abs(observed))  # float noise must not flip a tie
    if alternative == "greater":
        hits = int((null_means >= observed - eps).sum())
    elif alternative == "less":
        hits = int((null_means <= observed + eps).sum())
    else:
        hits = int((np.abs(null_means) >= abs(observed) - eps).sum())
    extra = 1 if plus_one else 0
    return min(1.0, (hits + extra) / (null_means.size + extra))


def sign_flip_p(
    diffs: Scores, n_perm: int = 10000, seed: int = 0, alternative: Alternative = "greater"
) -> tuple[float, bool]:
    """Permutation p-value of the mean paired difference; returns (p, exact).

    Exact (all ``2**n`` sign patterns, the observed one included) when that is no more than
    ``n_perm``; otherwise ``n_perm`` random patterns with the +1 correction, which keeps the
    Monte Carlo p-value valid (never 0).
    """
    _check_alternative(alternative)
    d = np.asarray(diffs, dtype=float)
    if d.size == 0 or not np.any(d):
        return (1.0, True)
    observed = float(d.mean())
    if 2**d.size <= n_perm:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        return (_tail_p((signs * d).mean(axis=1), observed, alternative, plus_one=False), True)
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(n_perm, d.size))
    return (_tail_p((signs * d).mean(axis=1), observed, alternative, plus_one=True), False)


def paired_mean_test(
    a: Scores,
    b: Scores,
    n_boot: int = 10000,
    seed: int = 0,
    alternative: Alternative = "greater",
    method: ContinuousTest = "bootstrap",
) -> PairedMeanResult:
    """Mean of A - B, its bootstrap 95% interval and a p-value (see the module doc): from the
    same bootstrap resamples, or from ``n_boot`` sign flips (``method="sign_flip"``)."""
    _check_alternative(alternative)
    if method not in ("bootstrap", "sign_flip"):
        raise StatsError(f"method must be bootstrap or sign_flip (got {method!r})")
    x, y = _pair(a, b)
    d = x - y
    if d.size == 0:
        return PairedMeanResult(0.0, 0.0, 0.0, 1.0, method, alternative, 0, True)
    means = bootstrap_means(d, n_boot, seed)
    lo, hi = _percentile_interval(means, CONFIDENCE)
    if method == "bootstrap":
        p, exact = bootstrap_p(means, alternative), False
    else:
        p, exact = sign_flip_p(d, n_boot, seed + 1, alternative)
    return PairedMeanResult(float(d.mean()), lo, hi, p, method, alternative, int(d.size), exact)


@dataclass(frozen=True)
class WilcoxonResult:
    statistic: float  # scipy's statistic (sum of positive ranks for one-sided tests)
    p_value: float
    alternative: str
    n: int


def wilcoxon_signed_rank(
    a: Scores, b: Scores, alternative: Alternative = "greater"
) -> WilcoxonResult:
    """Wilcoxon signed-rank test of A - B, ``zero_method="zsplit"`` (see module doc)."""
    from scipy.stats import wilcoxon

    _check_alternative(alternative)
    x, y = _pair(a, b)
    d = x - y
    if d.size == 0 or not np.any(d):  # no difference at all: nothing to rank
        return WilcoxonResult(0.0, 1.0, alternative, int(d.size))
    res = wilcoxon(d, zero_method="zsplit", alternative=alternative)
    p = float(res.pvalue)
    return WilcoxonResult(
        float(res.statistic), 1.0 if math.isnan(p) else min(1.0, p), alternative, int(d.size)
    )


# ------------------------------------------------------------------------- multiplicity


def holm(p_values: Sequence[float | None]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order.

    Sorted ascending, the i-th smallest (1-based) is multiplied by ``m - i + 1``, then made
    monotone (a running maximum) and capped at 1. A test that could not run (``None`` or NaN,
    e.g. no paired items) still counts in the family as p = 1, so dropping it cannot make the
    other tests look stronger.
    """
    ps = [1.0 if p is None or math.isnan(p) else float(p) for p in p_values]
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adjusted[i] = running
    return adjusted
