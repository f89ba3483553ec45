"""Report rows, files and the plot (the intervals themselves: test_stats.py)."""

from __future__ import annotations

import csv
import json

import pytest

from ptr_ray.eval.report import (
    EvalReport,
    ItemResult,
    ItemRound,
    TaskResult,
    markdown_table,
    write_report,
)


def _result(
    method: str,
    task: str,
    correct_by_round: list[list[int]],
    kind="multiple_choice",
    metrics=("accuracy",),
) -> TaskResult:
    n = len(correct_by_round[0])
    items = []
    for i in range(n):
        rounds = [
            ItemRound(
                k + 1,
                f"answer {i} r{k + 1}",
                "B",
                {metrics[0]: float(c[i])},
                tokens=10 + k,
                finish_reason="length" if i == 0 else "stop",
                prompt_tokens=100,
                cached_tokens=50 * k,
            )
            for k, c in enumerate(correct_by_round)
        ]
        items.append(ItemResult(f"{task}-{i}", "B", "q", rounds))
    return TaskResult(
        method,
        f"builtin:{method}",
        task,
        kind,
        list(metrics),
        len(correct_by_round),
        items,
        "fp",
        [1.0] * len(correct_by_round),
        3.0,
    )


@pytest.fixture
def report() -> EvalReport:
    return EvalReport(
        [
            _result("base", "arc_challenge", [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]]),
            _result("ptr", "arc_challenge", [[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]),
            _result(
                "base",
                "gsm8k",
                [[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 1]],
                kind="math",
                metrics=("exact", "flexible"),
            ),
        ],
        rounds=3,
        wall_s=12.0,
    )


def test_summary_counts(report):
    rows = [r for r in report.summary() if r.method == "base" and r.task == "arc_challenge"]
    assert [r.accuracy for r in rows] == [0.25, 0.5, 0.75]
    assert all(r.n == 4 and r.truncated == 1 for r in rows)
    assert [r.cached_frac for r in rows] == [0.0, 0.5, 1.0]
    assert report.accuracy("ptr", "arc_challenge") == [0.0, 0.25, 1.0]
    with pytest.raises(KeyError):
        report.accuracy("ift", "gsm8k")


def test_markdown_table(report):
    md = markdown_table(report)
    lines = md.splitlines()
    assert lines[0] == "| method | task | metric | n | round 1 | round 2 | round 3 | Δ r3−r1 |"
    assert (
        "| ptr | arc_challenge | accuracy | 4 | 0.000 [0.00, 0.49] | 0.250 [0.05, 0.70] "
        "| 1.000 [0.51, 1.00] | +1.000 |" in md
    )
    assert len(lines) == 2 + 4  # header, rule, arc x2, gsm8k exact + flexible


def test_write_report_files_and_roundtrip(report, tmp_path):
    paths = write_report(report, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["rounds"] == 3 and len(data["results"]) == 3
    back = TaskResult.from_dict(data["results"][0])
    assert back.summary() == report.results[0].summary()
    with open(paths["summary_csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * (1 + 1 + 2)  # rounds x (arc, arc, gsm8k exact+flexible)
    with open(paths["items_csv"]) as f:
        items = list(csv.DictReader(f))
    assert len(items) == 3 * 4 * 3 and items[0]["answer"] == "answer 0 r1"
    png = paths["plot"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "## Generation" in paths["markdown"].read_text()


def test_write_report_without_plot(report, tmp_path):
    paths = write_report(report, tmp_path, plot=False)
    assert "plot" not in paths and not (tmp_path / "accuracy_by_round.png").exists()
