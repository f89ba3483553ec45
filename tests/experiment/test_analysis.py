"""Hypothesis tests on a hand-made report: known discordant pairs, known p-values, known verdicts."""

from __future__ import annotations

import pytest

from ptr_ray.config import HypothesisConfig
from ptr_ray.config.experiment import default_hypotheses
from ptr_ray.eval.report import EvalReport
from ptr_ray.experiment.analysis import (
    AnalysisError,
    analyse,
    headline_rows,
    metric_kind,
    paired_values,
)


def hyp(id_: str, a: tuple[str, int], b: tuple[str, int], rel: str, **kw) -> HypothesisConfig:
    return HypothesisConfig.model_validate(
        {
            "id": id_,
            "statement": f"{a} {rel} {b}",
            "relation": rel,
            "a": {"method": a[0], "round": a[1]},
            "b": {"method": b[0], "round": b[1]},
            **kw,
        }
    )


def _row(rows, h, task):
    (row,) = [r for r in rows if r.hypothesis == h and r.task == task]
    return row


def test_default_hypotheses_on_known_report(report):
    rows = analyse(report, default_hypotheses(), alpha=0.05, n_boot=2000, seed=0)
    assert len(rows) == 8  # 4 hypotheses x 2 tasks: one Holm family

    h1 = _row(rows, "H1", "arc")
    assert (h1.kind, h1.n, h1.discordant_a, h1.discordant_b) == ("binary", 12, 10, 0)
    assert h1.p_raw == pytest.approx(1 / 1024)  # P(X >= 10 | Bin(10, 1/2))
    assert h1.p_adj == pytest.approx(7 / 1024)  # second smallest of 8: times 7
    assert h1.effect == pytest.approx(10 / 12) and h1.ci_low > 0
    assert h1.verdict == "supported"

    h1s = _row(rows, "H1", "heldout")
    assert h1s.kind == "continuous" and h1s.metric == "similarity"
    assert h1s.p_raw == pytest.approx(1 / 2001)  # no resampled mean <= 0: (1 + 0) / (1 + 2000)
    assert h1s.p_adj == pytest.approx(8 / 2001)  # smallest of 8: times 8
    assert h1s.effect == pytest.approx(0.1) and h1s.ci_low == pytest.approx(0.1)
    assert h1s.verdict == "supported" and "Wilcoxon" in h1s.secondary
    assert h1s.test.startswith("paired bootstrap")

    h2 = _row(rows, "H2", "arc")  # base unchanged: nothing against "r3 at most r1"
    assert (h2.discordant_a, h2.discordant_b, h2.p_raw) == (0, 0, 1.0)
    assert h2.verdict == "not refuted"
    h3 = _row(rows, "H3", "arc")  # IFT breaks 3 items: r3 > r1 is not shown
    assert (h3.discordant_a, h3.discordant_b) == (0, 3)
    assert h3.effect == pytest.approx(-3 / 12) and h3.verdict == "not refuted"
    h4 = _row(rows, "H4", "arc")  # "ptr r3 >= ift r3": tests ift r3 > ptr r3, which fails
    assert h4.tested == "b > a" and (h4.discordant_a, h4.discordant_b) == (10, 0)
    assert h4.statistic == 0 and h4.p_raw == 1.0
    assert h4.effect == pytest.approx(10 / 12)  # always A - B
    assert h4.verdict == "not refuted"


def test_sign_flip_option_for_continuous_scores(report):
    rows = analyse(report, default_hypotheses(), n_boot=2000, continuous_test="sign_flip")
    h1s = _row(rows, "H1", "heldout")
    assert h1s.p_raw == pytest.approx(1 / 256)  # exact: only the observed sign pattern
    assert "sign-flip" in h1s.test and "exact" in h1s.test
    assert _row(rows, "H2", "heldout").p_raw == 1.0  # base r3 is lower: nothing for r3 > r1


def test_refuted_verdicts_and_no_correction(report):
    hs = [
        hyp("R1", ("ptr", 3), ("ptr", 1), "at_most"),  # PTR clearly improves: refuted
        hyp("R2", ("ift", 3), ("ptr", 3), "at_least", task="arc"),  # PTR beats IFT: refuted
        hyp("R3", ("ift", 3), ("ift", 1), "greater", task=["arc"]),
    ]
    rows = analyse(report, hs, correction="none", n_boot=2000)
    assert [r.verdict for r in rows] == ["refuted", "refuted", "refuted", "not supported"]
    r2 = _row(rows, "R2", "arc")
    assert r2.tested == "b > a" and r2.p_raw == pytest.approx(1 / 1024)
    assert r2.p_adj == r2.p_raw  # correction none
    assert r2.effect == pytest.approx(-10 / 12)


def test_pairing_by_id_counts_unpaired_items(make_task_result):
    task_result = make_task_result
    base = task_result("base", "t", [[1, 0, 1], [1, 1, 1]], ids=["a", "b", "c"])
    ptr = task_result("ptr", "t", [[1, 0, 1], [0, 1, 1]], ids=["b", "c", "d"])
    rep = EvalReport([base, ptr], rounds=2)
    ids, xa, xb, unpaired = paired_values(rep, "t", "accuracy", ("base", 2), ("ptr", 2))
    assert ids == ["b", "c"] and list(xa) == [1, 1] and list(xb) == [0, 1] and unpaired == 2
    rows = analyse(rep, [hyp("X", ("base", 2), ("ptr", 2), "greater")], n_boot=200)
    assert rows[0].n == 2 and rows[0].unpaired == 2


def test_errors_name_what_is_missing(report):
    with pytest.raises(AnalysisError, match="not in the results"):
        analyse(report, [hyp("X", ("ptr", 3), ("ptr", 1), "greater", task="gsm8k")])
    with pytest.raises(AnalysisError, match="rounds 1..3"):
        analyse(report, [hyp("X", ("ptr", 4), ("ptr", 1), "greater")])
    with pytest.raises(AnalysisError, match="metrics"):
        analyse(report, [hyp("X", ("ptr", 3), ("ptr", 1), "greater", task="arc", metric="f1")])
    with pytest.raises(AnalysisError, match="correction"):
        analyse(report, [], correction="bonferroni")


def test_metric_kind_and_headline_rows(report):
    import numpy as np

    assert metric_kind("accuracy", np.array([0.0, 1.0])) == "binary"
    assert metric_kind("similarity", np.array([0.0, 1.0])) == "continuous"
    assert metric_kind("exact", np.array([0.5])) == "continuous"
    rows = headline_rows(report)
    ptr_arc = [r for r in rows if r.method == "ptr" and r.task == "arc"]
    assert [r.accuracy for r in ptr_arc] == pytest.approx([1 / 12, 6 / 12, 11 / 12])
    assert all(r.n == 12 for r in ptr_arc)
