"""Paired tests against values computed by hand (or published worked examples)."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest

from ptr_ray.experiment.stats import (
    Discordance,
    StatsError,
    bootstrap_ci,
    bootstrap_p,
    discordance,
    holm,
    mcnemar_exact,
    paired_diff_proportions,
    paired_mean_test,
    sign_flip_p,
    wilcoxon_signed_rank,
)


def test_mcnemar_exact_one_and_two_sided():
    # b=8, c=2: P(X >= 8 | Bin(10, 1/2)) = (C(10,8) + C(10,9) + C(10,10)) / 2^10 = 56/1024.
    res = mcnemar_exact(8, 2, "greater")
    assert res.p_value == pytest.approx(56 / 1024)
    assert (res.b, res.c, res.statistic) == (8, 2, 8.0)
    assert mcnemar_exact(8, 2, "two-sided").p_value == pytest.approx(2 * 56 / 1024)
    # The other direction: P(X >= 2 | Bin(10, 1/2)) = 1 - 11/1024.
    assert mcnemar_exact(2, 8, "greater").p_value == pytest.approx(1 - 11 / 1024)
    assert mcnemar_exact(0, 0).p_value == 1.0
    with pytest.raises(StatsError):
        mcnemar_exact(1, 1, "bigger")  # type: ignore[arg-type]


def test_discordance_counts_the_four_cells():
    a = [1, 1, 1, 0, 0, 1]
    b = [1, 0, 0, 1, 0, 1]
    assert discordance(a, b) == Discordance(both=2, b=2, c=1, neither=1)
    with pytest.raises(StatsError, match="0/1"):
        discordance([0.5], [1])
    with pytest.raises(StatsError, match="equal-length"):
        discordance([1, 0], [1])


def test_newcombe_paired_interval_matches_published_example():
    # Cavo et al. (2012) table from Fagerland, Lydersen & Laake, "Statistical Analysis of
    # Contingency Tables", chapter 8: 59 / 6 / 16 / 80 -> -0.0621 (-0.1186 to -0.0046).
    eff = paired_diff_proportions(Discordance(both=59, b=6, c=16, neither=80))
    assert eff.estimate == pytest.approx(-10 / 161)
    assert eff.ci_low == pytest.approx(-0.1186, abs=5e-5)
    assert eff.ci_high == pytest.approx(-0.0046, abs=5e-5)
    # No discordant pair: the estimate is 0 and the interval still has width.
    eff = paired_diff_proportions(Discordance(both=5, b=0, c=0, neither=5))
    assert eff.estimate == 0 and eff.ci_low < 0 < eff.ci_high
    assert paired_diff_proportions(Discordance(0, 0, 0, 0)).ci_low == -1.0


def test_holm_hand_computed():
    # sorted: 0.01*3 = 0.03; 0.03*2 = 0.06; 0.04*1 = 0.04 -> running max 0.06.
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []
    # A test that could not run counts as p = 1 in the family (m stays 2).
    assert holm([0.01, None]) == pytest.approx([0.02, 1.0])


def test_sign_flip_exact_enumeration():
    # diffs (1, 2, 3): of the 8 sign patterns only (+,+,+) reaches the observed mean 2.
    p, exact = sign_flip_p([1.0, 2.0, 3.0], n_perm=10000)
    assert exact and p == pytest.approx(1 / 8)
    p, _ = sign_flip_p([1.0, 2.0, 3.0], alternative="two-sided")
    assert p == pytest.approx(2 / 8)
    assert sign_flip_p([0.0, 0.0]) == (1.0, True)


def test_sign_flip_monte_carlo_never_zero():
    d = np.full(40, 0.1)
    p, exact = sign_flip_p(d, n_perm=999, seed=1)
    assert not exact and p == pytest.approx(1 / 1000)


def test_bootstrap_ci_contains_true_difference_and_is_seeded():
    rng = np.random.default_rng(7)
    a = rng.normal(0.6, 0.15, 60)
    b = a - 0.1 + rng.normal(0, 0.05, 60)  # true mean difference a - b = 0.1
    for method in ("bootstrap", "sign_flip"):
        res = paired_mean_test(a, b, n_boot=5000, seed=3, method=method)  # type: ignore[arg-type]
        assert res.ci_low < 0.1 < res.ci_high
        assert res.ci_low < res.mean_diff < res.ci_high
        assert res.p_value < 0.001 and res.n == 60
        again = paired_mean_test(a, b, n_boot=5000, seed=3, method=method)  # type: ignore[arg-type]
        assert (again.ci_low, again.ci_high, again.p_value) == (
            res.ci_low,
            res.ci_high,
            res.p_value,
        )
        assert res.effect.estimate == res.mean_diff
        assert (res.ci_low, res.ci_high) == bootstrap_ci(a - b, 5000, 3)
        # The "A > B" test of the reverse comparison finds nothing.
        assert paired_mean_test(b, a, n_boot=2000, method=method).p_value > 0.5  # type: ignore[arg-type]
    assert bootstrap_ci([]) == (0.0, 0.0)


def test_bootstrap_p_counts_resampled_means_at_or_below_zero():
    means = np.array([-0.1, 0.0, 0.2, 0.3])  # 2 of 4 are <= 0, 3 of 4 are >= 0
    assert bootstrap_p(means, "greater") == pytest.approx((1 + 2) / (1 + 4))
    assert bootstrap_p(means, "less") == pytest.approx((1 + 3) / (1 + 4))
    assert bootstrap_p(means, "two-sided") == pytest.approx(1.0)
    assert bootstrap_p(np.zeros(0)) == 1.0
    # A constant positive difference: no resampled mean <= 0, p = 1 / (1 + n_boot).
    res = paired_mean_test([0.5] * 5, [0.4] * 5, n_boot=999, method="bootstrap")
    assert res.p_value == pytest.approx(1 / 1000) and res.method == "bootstrap"
    # No difference at all: every resampled mean is 0, p = 1 under either method.
    assert paired_mean_test([0.3] * 5, [0.3] * 5, n_boot=500).p_value == 1.0
    assert paired_mean_test([0.3] * 5, [0.3] * 5, method="sign_flip").p_value == 1.0
    with pytest.raises(StatsError, match="method"):
        paired_mean_test([1.0], [0.0], method="t")  # type: ignore[arg-type]


def test_wilcoxon_zsplit_and_degenerate_cases():
    from scipy.stats import wilcoxon

    a = [0.9, 0.8, 0.7, 0.6, 0.6, 0.5]
    b = [0.5, 0.5, 0.6, 0.6, 0.7, 0.2]
    res = wilcoxon_signed_rank(a, b)
    ref = wilcoxon(np.array(a) - np.array(b), zero_method="zsplit", alternative="greater")
    assert res.p_value == pytest.approx(ref.pvalue) and res.n == 6
    assert wilcoxon_signed_rank([0.3, 0.4], [0.3, 0.4]).p_value == 1.0


def test_binomial_helper_agrees_with_formula():
    # Guards the hand formula used above for any b, c.
    b, c = 6, 3
    p = sum(comb(b + c, k) for k in range(b, b + c + 1)) / 2 ** (b + c)
    assert mcnemar_exact(b, c).p_value == pytest.approx(p)
