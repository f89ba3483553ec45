"""A hand-made evaluation report whose discordant pairs, and so whose verdicts, are known."""

from __future__ import annotations

import pytest

from ptr_ray.eval.report import EvalReport, ItemResult, ItemRound, TaskResult


def task_result(
    method: str,
    task: str,
    by_round: list[list[float]],
    kind: str = "multiple_choice",
    metrics: tuple[str, ...] = ("accuracy",),
    ids: list[str] | None = None,
) -> TaskResult:
    """One method on one task; ``by_round[k][i]`` is item i's headline score in round k+1."""
    n = len(by_round[0])
    ids = ids or [f"{task}-{i}" for i in range(n)]
    items = []
    for i in range(n):
        rounds = []
        for k, scores in enumerate(by_round):
            values = {metrics[0]: float(scores[i])}
            if kind == "similarity":
                values["match"] = float(scores[i] >= 0.7)
            rounds.append(
                ItemRound(k + 1, f"{method} answer {i} round {k + 1}", None, values, 10, "stop")
            )
        items.append(ItemResult(ids[i], "gold", f"question {i}", rounds))
    return TaskResult(
        method, f"model-{method}", task, kind, list(metrics), len(by_round), items, "fp"
    )


# arc (binary, 12 items): PTR fixes 10 items from round 1 to round 3 and breaks none (b=10,
# c=0); base is unchanged across rounds (no discordant pair); IFT breaks 3 items (b=0, c=3).
ARC_PTR = [[0] * 10 + [1, 0], [0] * 5 + [1] * 5 + [1, 0], [1] * 10 + [1, 0]]
ARC_BASE = [[1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]] * 3
ARC_IFT = [[1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0], [1] * 2 + [0] * 10, [1] + [0] * 11]

# heldout (continuous similarity, 8 items): PTR gains 0.1 on every item by round 3.
SIM_R1 = [0.30, 0.40, 0.50, 0.35, 0.45, 0.55, 0.60, 0.25]
SIM_PTR = [SIM_R1, [s + 0.05 for s in SIM_R1], [s + 0.1 for s in SIM_R1]]
SIM_BASE = [SIM_R1, SIM_R1, [s - 0.02 for s in SIM_R1]]
SIM_IFT = [SIM_R1, SIM_R1, SIM_R1]


def make_report() -> EvalReport:
    sim = {"kind": "similarity", "metrics": ("similarity", "match")}
    return EvalReport(
        [
            task_result("base", "arc", ARC_BASE),
            task_result("ptr", "arc", ARC_PTR),
            task_result("ift", "arc", ARC_IFT),
            task_result("base", "heldout", SIM_BASE, **sim),  # type: ignore[arg-type]
            task_result("ptr", "heldout", SIM_PTR, **sim),  # type: ignore[arg-type]
            task_result("ift", "heldout", SIM_IFT, **sim),  # type: ignore[arg-type]
        ],
        rounds=3,
    )


@pytest.fixture
def report() -> EvalReport:
    return make_report()


@pytest.fixture
def make_task_result():
    """The helper above, for tests that build their own small reports."""
    return task_result
