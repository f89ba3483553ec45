"""Compare two experiment runs item by item (the one-factor ablations of the experiment log).

An ablation changes one factor and re-runs the experiment; its question is about the *same*
items scored by two different models ("does PTR trained with ``confidence=final`` answer more
ARC-Easy items than PTR trained with ``all_turns``?"). Both runs evaluate the same seeded items,
so the comparison is paired: exact McNemar for 0/1 scores, a paired bootstrap for continuous
ones, with the effect and its 95% interval — the same tests the protocol uses inside one run.

    python -m ptr_ray.experiment.compare RUN_A/items.csv RUN_B/items.csv.gz \\
        --task arc_easy --method ptr --round 1 --alternative two-sided

Items are matched on ``item_id``; an item present in only one run is an error, not a silent
drop (it would mean the runs did not evaluate the same items).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ptr_ray.experiment.stats import (
    Alternative,
    discordance,
    mcnemar_exact,
    paired_diff_proportions,
    paired_mean_test,
)
from ptr_ray.experiment.stats import (
    StatsError as CompareError,
)

__all__ = ["CompareError", "Comparison", "compare", "load_scores"]


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of one (method, task, round, metric) across two runs (A - B)."""

    task: str
    metric: str
    n: int
    mean_a: float
    mean_b: float
    effect: float
    ci_low: float
    ci_high: float
    test: str
    p_value: float
    a_only: int | None  # items A got right and B wrong (binary metrics)
    b_only: int | None


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path), encoding="utf-8")
    return open(path, encoding="utf-8")  # noqa: SIM115 - closed by the caller's with


def load_scores(
    path: str | Path, method: str, task: str, round_: int, metric: str, instruction: int = 1
) -> dict[str, float]:
    """``item_id -> score`` of one (instruction, method, task, round) from an ``items.csv``."""
    path = Path(path)
    if not path.is_file():
        raise CompareError(f"{path}: no such items file (an experiment run writes items.csv)")
    scores: dict[str, float] = {}
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        if metric not in (reader.fieldnames or []):
            raise CompareError(f"{path}: no column {metric!r} (columns: {reader.fieldnames})")
        for row in reader:
            if (
                row["method"] == method
                and row["task"] == task
                and int(row["round"]) == round_
                and int(row["instruction"]) == instruction
            ):
                if row[metric] == "":
                    raise CompareError(f"{path}: item {row['item_id']} has no {metric} score")
                scores[row["item_id"]] = float(row[metric])
    if not scores:
        raise CompareError(
            f"{path}: no rows for method={method} task={task} round={round_} "
            f"instruction={instruction}"
        )
    return scores


HEADLINES = ("exact", "accuracy", "similarity")


def _headline(path: str | Path, task: str) -> str:
    """The first of :data:`HEADLINES` that the task's rows score (how the report picks it)."""
    with _open_text(Path(path)) as f:
        for row in csv.DictReader(f):
            if row.get("task") == task:
                for m in HEADLINES:
                    if row.get(m):
                        return m
    return "exact"


def compare(
    a: dict[str, float],
    b: dict[str, float],
    task: str,
    metric: str,
    alternative: Alternative = "two-sided",
    n_boot: int = 10000,
    seed: int = 0,
) -> Comparison:
    """Paired test of A against B on the items both scored (they must be the same items)."""
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise CompareError(
            f"the runs scored different items ({len(only_a)} only in A, e.g. {only_a[:3]}; "
            f"{len(only_b)} only in B, e.g. {only_b[:3]}): not a paired comparison"
        )
    ids = sorted(a)
    x, y = [a[i] for i in ids], [b[i] for i in ids]
    n = len(ids)
    binary = all(v in (0.0, 1.0) for v in x + y)
    if binary:
        table = discordance(x, y)
        test = mcnemar_exact(table.b, table.c, alternative)
        eff = paired_diff_proportions(table)
        return Comparison(
            task, metric, n, sum(x) / n, sum(y) / n, eff.estimate, eff.ci_low, eff.ci_high,
            "exact McNemar", test.p_value, table.b, table.c,
        )  # fmt: skip
    res = paired_mean_test(x, y, n_boot=n_boot, seed=seed, alternative=alternative)
    return Comparison(
        task, metric, n, sum(x) / n, sum(y) / n, res.mean_diff, res.ci_low, res.ci_high,
        "paired bootstrap", res.p_value, None, None,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("items_a", help="items.csv(.gz) of run A")
    p.add_argument("items_b", help="items.csv(.gz) of run B")
    p.add_argument("--task", required=True)
    p.add_argument("--method", default="ptr", help="method in run A (and B unless --method-b)")
    p.add_argument("--method-b", default=None)
    p.add_argument("--round", type=int, default=1, dest="round_")
    p.add_argument("--metric", default=None, help="default: the task's headline metric")
    p.add_argument("--instruction", type=int, default=1)
    p.add_argument("--alternative", default="two-sided", choices=["greater", "less", "two-sided"])
    args = p.parse_args(argv)
    metric = args.metric or _headline(args.items_a, args.task)
    try:
        a = load_scores(args.items_a, args.method, args.task, args.round_, metric, args.instruction)
        b = load_scores(
            args.items_b,
            args.method_b or args.method,
            args.task,
            args.round_,
            metric,
            args.instruction,
        )
        result = compare(a, b, args.task, metric, args.alternative)
    except CompareError as e:
        print(f"error: {e}")
        return 2
    print(json.dumps(asdict(result), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
