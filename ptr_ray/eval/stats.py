"""The statistics the evaluation reports: intervals on accuracies and the build check's test.

At 20-60 items one item moves accuracy by several points, so every accuracy carries a 95%
interval: Wilson for 0/1 metrics (sane at 0/n and n/n, unlike the normal interval), a
normal interval for continuous scores (similarity). The build check asks whether the strong
model's paired per-item scores beat the weak model's with a one-sided Wilcoxon signed-rank
test, as the paper does. scipy computes; this module fixes the conventions (the n = 0
answer, what a tie-only sample means).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Z95 = 1.959963984540054  # the two-sided 95% normal quantile


def wilson(k: float, n: int) -> tuple[float, float]:
    """95% Wilson score interval of ``k`` successes in ``n`` trials.

    ``k`` may be a float sum of 0/1 scores; it is rounded to the integer it holds. With no
    trials nothing is known: the answer is the whole interval ``(0.0, 1.0)``.
    """
    if n <= 0:
        return (0.0, 1.0)
    from scipy.stats import binomtest

    hits = int(round(k))
    ci = binomtest(hits, n).proportion_ci(confidence_level=0.95, method="wilson")
    p = hits / n
    # The interval always holds the observed proportion (guards float noise at 0/n and n/n).
    return (max(0.0, min(p, float(ci.low))), min(1.0, max(p, float(ci.high))))


def mean_ci(values: Sequence[float], z: float = Z95) -> tuple[float, float]:
    """Normal-approximation 95% interval of a mean (for continuous scores such as similarity).

    No values: ``(0.0, 0.0)``; one value: the point itself (no spread to estimate).
    """
    n = len(values)
    if n == 0:
        return (0.0, 0.0)
    m = sum(values) / n
    if n == 1:
        return (m, m)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return (m - z * sd / math.sqrt(n), m + z * sd / math.sqrt(n))


def wilcoxon_greater(strong: Sequence[float], weak: Sequence[float]) -> dict[str, Any]:
    """One-sided Wilcoxon signed-rank test that ``strong``'s paired scores exceed ``weak``'s.

    Pairs with equal scores carry no evidence and are dropped (``zero_method="wilcox"``); when
    every pair is tied scipy cannot test at all, so the answer is p = 1 with no statistic.
    """
    from scipy.stats import wilcoxon

    diffs = [s - w for s, w in zip(strong, weak, strict=True)]
    nonzero = sum(1 for d in diffs if d)
    if nonzero == 0:
        return {
            "statistic": None,
            "p_value": 1.0,
            "n_pairs": len(diffs),
            "n_discordant": 0,
            "note": "identical scores on every item: no evidence either way",
        }
    res = wilcoxon(strong, weak, alternative="greater", zero_method="wilcox")
    return {
        "statistic": float(res.statistic),
        "p_value": float(res.pvalue),
        "n_pairs": len(diffs),
        "n_discordant": nonzero,
    }
