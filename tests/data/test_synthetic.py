"""The synthetic arithmetic task: exact answers, disjoint splits, the `arith` eval task, the
`synthetic` query source, and decontamination against it."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from pydantic import ValidationError

from ptr_ray.config import EvalConfig, QuerySourceConfig
from ptr_ray.data import benchmarks
from ptr_ray.data import synthetic as S
from ptr_ray.data.decontaminate import NgramDecontaminator
from ptr_ray.data.queries import QuerySourceError, read_source
from ptr_ray.eval.metrics import score_math
from ptr_ray.eval.tasks import MATH_INSTRUCTION, load_tasks


def _check_solution(p: S.Problem) -> None:
    """Every step of the worked solution is true arithmetic, and it ends with the gold."""
    steps = re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)\.", p.solution)
    assert steps, p.solution
    for a, op, b, r in steps:
        a_, b_, r_ = int(a), int(b), int(r)
        assert {"+": a_ + b_, "-": a_ - b_, "*": a_ * b_}[op] == r_, p.solution
    assert int(steps[-1][3]) == p.answer
    assert p.solution.endswith(f"The answer is {p.answer}.")


def test_examples_of_every_kind_are_exact():
    problems = S.generate("train", 400, seed=1)
    assert Counter(p.kind for p in problems).keys() == set(S.KINDS)
    for p in problems:
        _check_solution(p)
        assert p.answer > 0 and p.question.endswith("?")
    add2 = next(p for p in problems if p.kind == "add2")
    assert re.fullmatch(r"What is \d\d \+ \d\d\?", add2.question)
    word2 = next(p for p in problems if p.kind == "word2")
    assert re.fullmatch(
        r"\w+ has \d+ [\w ]+\. (He|She) buys \d+ more and then gives away \d+\. "
        r"How many [\w ]+ does \w+ have now\?",
        word2.question,
    )
    assert re.fullmatch(r"\d+ \+ \d+ = \d+\. \d+ - \d+ = \d+\. The answer is \d+\.", word2.solution)


def test_seeded_and_without_repeats():
    a, b = S.generate("train", 300, seed=7), S.generate("train", 300, seed=7)
    assert a == b
    assert a != S.generate("train", 300, seed=8)
    assert len({p.canonical for p in a}) == 300
    assert S.generate("train", 50, seed=7) == a[:50]  # a longer draw extends a shorter one


def test_train_and_eval_are_disjoint_by_construction():
    eval_canon = {p.canonical for p in S.eval_problems()}
    eval_questions = {p.question for p in S.eval_problems()}
    for seed in (0, 1, S.EVAL_SEED):  # even the eval split's own seed gives other problems
        train = S.generate("train", 1500, seed)
        assert all(p.split == "train" for p in train)
        assert not eval_canon & {p.canonical for p in train}
        assert not eval_questions & {p.question for p in train}
    assert all(p.split == "eval" for p in S.eval_problems())


def test_canonical_form_ignores_operand_order_and_wording():
    """ "What is 63 + 59?" and "Tom has 59 apples. He buys 63 more." are one problem: one split."""
    seen: dict[str, S.Split] = {}
    for p in S.generate("train", 2000, 3) + S.eval_problems():
        assert seen.setdefault(p.canonical, p.split) == p.split
    assert S.split_of("59+63") in S.SPLITS
    with pytest.raises(S.SyntheticError, match="unknown split"):
        S.generate("test", 1, 0)  # type: ignore[arg-type]


def test_asking_for_more_than_exist_is_an_error(monkeypatch):
    monkeypatch.setattr(S, "KINDS", ("mul1x2",))  # only 720 multiplications exist, half per split
    with pytest.raises(S.SyntheticError, match="distinct train problems"):
        S.generate("train", 1000, 0)


def test_arith_is_a_packaged_math_task():
    items = benchmarks.load_task("arith")
    assert len(items) == S.EVAL_SIZE >= 300
    assert len({i.id for i in items}) == len(items)
    assert benchmarks.display_name("arith") == "arith (synthetic)"
    assert benchmarks.display_name("gsm8k") == "gsm8k"
    [task] = load_tasks(EvalConfig(tasks=["arith"], limit=20, seed=3))
    assert task.kind == "math" and task.source == "synthetic"
    assert "synthetic" in task.display_name
    assert len(task.items) == 20
    assert [i.id for i in task.items] == [
        i.id for i in load_tasks(EvalConfig(tasks=["arith"], limit=20, seed=3))[0].items
    ]
    item = task.items[0]
    assert task.prompt(item) == f"{item.question}\n\n{MATH_INSTRUCTION}"
    # the existing numeric math path scores it: the worked solution is right, a wrong number not
    solution = item.meta["solution"]
    assert score_math(item, solution).values["exact"] == 1.0
    assert score_math(item, f"The answer is {int(item.answer) + 1}.").values["exact"] == 0.0


def test_synthetic_query_source_gives_training_problems_with_references():
    cfg = QuerySourceConfig(kind="synthetic", limit=40)
    rows = list(read_source(cfg, seed=5))
    assert len(rows) == 40 and all(r.ok and r.source == "synthetic" for r in rows)
    assert [r.query for r in rows] == [p.question for p in S.generate("train", 40, 5)]
    assert all(r.answer and r.answer.endswith(f"The answer is {r.extra['gold']}.") for r in rows)
    own_seed = list(
        read_source(QuerySourceConfig(kind="synthetic", limit=40, seed=6, name="ar"), seed=5)
    )
    assert [r.query for r in own_seed] == [p.question for p in S.generate("train", 40, 6)]
    assert own_seed[0].source == "ar"
    assert cfg.has_references
    assert not QuerySourceConfig(kind="jsonl", path="q.jsonl").has_references
    assert QuerySourceConfig(kind="jsonl", path="q.jsonl", answer_field="a").has_references
    with pytest.raises(ValidationError, match="needs a limit"):
        QuerySourceConfig(kind="synthetic")


def test_synthetic_source_beyond_supply_is_a_source_error(monkeypatch):
    monkeypatch.setattr(S, "KINDS", ("mul1x2",))
    with pytest.raises(QuerySourceError, match="synthetic"):
        list(read_source(QuerySourceConfig(kind="synthetic", limit=1000)))


def test_decontamination_protects_arith():
    """Short eval questions are below any n-gram size: an exact match still drops them."""
    assert "arith" in benchmarks.DECONTAMINATION_TASKS
    d = NgramDecontaminator(benchmarks.decontamination_texts(["arith"]))
    for p in S.eval_problems()[:200]:
        assert d.reason(p.question) == "exact"
        assert d.contaminated("  " + p.question.upper().replace(" + ", "+") + " ")
    train = S.generate("train", 1000, 0)
    flagged = [p for p in train if d.contaminated(p.question)]
    # only a long word problem can share a 13-gram with an eval item (same name, object and
    # last number): rare, and it is dropped as the rule says, never by an exact match
    assert len(flagged) < 10 and all(p.kind == "word2" for p in flagged)
    assert all(d.reason(p.question) == "ngram" for p in flagged)
    q = next(p.question for p in S.eval_problems() if p.kind == "add2")
    assert not d.contaminated(q.replace("+", "*"))  # a different problem, not the same words
