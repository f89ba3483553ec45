"""Cross-run paired comparison (the experiment log's one-factor ablations)."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import pytest

from ptr_ray.experiment import compare as cmp

FIELDS = ["instruction", "method", "task", "item_id", "round", "exact", "similarity"]


def _items(path: Path, rows: list[dict[str, object]]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({"instruction": 1, "round": 1, "similarity": "", **r})
    return path


def _run(path: Path, exact: list[int], method: str = "ptr") -> Path:
    rows = [
        {"method": method, "task": "arc", "item_id": f"q{i}", "exact": v}
        for i, v in enumerate(exact)
    ]
    # rows of other methods/rounds must not leak into the selection
    rows += [{"method": "ift", "task": "arc", "item_id": "q0", "exact": 1, "round": 2}]
    return _items(path, rows)


def test_binary_comparison_is_mcnemar_on_the_discordant_items(tmp_path):
    # A right on 9 items B got wrong, B right on 1 item A got wrong, 10 ties
    a = _run(tmp_path / "a.csv.gz", [1] * 9 + [0] + [1] * 5 + [0] * 5)
    b = _run(tmp_path / "b.csv", [0] * 9 + [1] + [1] * 5 + [0] * 5)
    sa = cmp.load_scores(a, "ptr", "arc", 1, "exact")
    sb = cmp.load_scores(b, "ptr", "arc", 1, "exact")
    r = cmp.compare(sa, sb, "arc", "exact", "two-sided")
    assert (r.n, r.a_only, r.b_only) == (20, 9, 1)
    assert r.mean_a == pytest.approx(14 / 20) and r.mean_b == pytest.approx(6 / 20)
    assert r.effect == pytest.approx(0.4)
    # exact two-sided binomial: P(X >= 9 or X <= 1 | n=10, 1/2) = 22/1024
    assert r.p_value == pytest.approx(22 / 1024)
    assert r.ci_low < 0.4 < r.ci_high


def test_continuous_scores_use_the_paired_bootstrap(tmp_path):
    a = {f"q{i}": 0.5 + 0.01 * i for i in range(30)}
    b = {f"q{i}": 0.4 + 0.01 * i for i in range(30)}
    r = cmp.compare(a, b, "heldout", "similarity", "greater", n_boot=2000)
    assert r.test == "paired bootstrap" and r.effect == pytest.approx(0.1)
    assert r.p_value < 0.01 and r.a_only is None


def test_different_items_are_an_error_not_a_silent_drop(tmp_path):
    with pytest.raises(cmp.CompareError, match="different items"):
        cmp.compare({"q1": 1.0, "q2": 0.0}, {"q1": 1.0, "q3": 0.0}, "arc", "exact")


def test_missing_rows_and_columns_are_clear_errors(tmp_path):
    a = _run(tmp_path / "a.csv", [1, 0])
    with pytest.raises(cmp.CompareError, match="no rows for method=base"):
        cmp.load_scores(a, "base", "arc", 1, "exact")
    with pytest.raises(cmp.CompareError, match="no column 'accuracy'"):
        cmp.load_scores(a, "ptr", "arc", 1, "accuracy")
    with pytest.raises(cmp.CompareError, match="no such items file"):
        cmp.load_scores(tmp_path / "nope.csv", "ptr", "arc", 1, "exact")


def test_main_prints_json_and_exits_2_on_errors(tmp_path, capsys):
    a = _run(tmp_path / "a.csv", [1, 1, 0])
    b = _run(tmp_path / "b.csv", [0, 1, 0])
    assert cmp.main([str(a), str(b), "--task", "arc"]) == 0
    assert '"a_only": 1' in capsys.readouterr().out
    assert cmp.main([str(a), str(b), "--task", "nope"]) == 2


def test_main_picks_the_tasks_headline_metric(tmp_path, capsys):
    rows = [
        {"method": "ptr", "task": "arc", "item_id": "q0", "exact": "", "similarity": 0.5},
        {"method": "ptr", "task": "arc", "item_id": "q1", "exact": "", "similarity": 0.7},
    ]
    a = _items(tmp_path / "a.csv", rows)
    assert cmp.main([str(a), str(a), "--task", "arc"]) == 0
    assert '"metric": "similarity"' in capsys.readouterr().out
