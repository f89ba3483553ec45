"""The evaluation's statistics: Wilson and mean intervals, the build check's Wilcoxon test."""

from __future__ import annotations

import pytest

from ptr_ray.eval.stats import mean_ci, wilcoxon_greater, wilson


def test_wilson_known_values():
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson(20, 20)
    assert hi == 1.0 and lo == pytest.approx(0.8389, abs=1e-4)
    lo, hi = wilson(0, 20)
    assert lo == 0.0 and 0.1 < hi < 0.2
    lo, hi = wilson(10, 20)
    assert lo < 0.5 < hi


def test_wilson_without_trials_is_the_whole_interval():
    # Nothing observed, nothing known. (build-check's own copy used to answer (0.0, 0.0).)
    assert wilson(0, 0) == (0.0, 1.0)


def test_wilson_takes_a_float_sum_of_binary_scores():
    assert wilson(3.0, 4) == wilson(3, 4)
    lo, hi = wilson(1.0, 1)
    assert hi == 1.0 and 0.0 < lo < 1.0


def test_mean_ci():
    lo, hi = mean_ci([0.2, 0.4, 0.6])
    assert lo < 0.4 < hi and hi - 0.4 == pytest.approx(0.4 - lo)
    assert mean_ci([]) == (0.0, 0.0) and mean_ci([0.3]) == (0.3, 0.3)


def test_wilcoxon_direction_and_ties():
    strong = [1] * 15 + [0] * 5
    weak = [0] * 15 + [0] * 5
    r = wilcoxon_greater(strong, weak)
    assert r["p_value"] < 0.001 and r["n_discordant"] == 15
    assert wilcoxon_greater(weak, strong)["p_value"] > 0.99
    tie = wilcoxon_greater([1, 0, 1], [1, 0, 1])
    assert tie["p_value"] == 1.0 and tie["statistic"] is None
