"""build-check's scoring (the evaluation's rules) and statistics (the model runs are in the
integration tests)."""

from __future__ import annotations

import pytest

from ptr_ray.data.benchmarks import BenchmarkItem
from ptr_ray.eval.build_check import check_metric, score_answers
from ptr_ray.eval.metrics import extract_choice, extract_math, to_number
from ptr_ray.eval.tasks import EvalTask


@pytest.mark.parametrize(
    "text,want",
    [
        ("The answer is B. Because...", "B"),
        ("A plant needs light to grow.", None),  # the article, not option A
        ("A. Water\nbecause", "A"),
        ("the answer is a bit unclear, maybe (C)", "C"),
        ("**D**", "D"),
        ("I pick option C.", "C"),
        ("\\boxed{B}", "B"),
        ("The answer is E", None),  # only 4 options
    ],
)
def test_extract_letter(text, want):
    assert extract_choice(text, 4) == want


def _number(text: str) -> float | None:
    """What build-check scores a math reply on: the flexible answer, as a number."""
    n = to_number(extract_math(text)[1])
    return None if n is None else float(n)


@pytest.mark.parametrize(
    "text,want",
    [
        ("so 3 + 4 = 7. The answer is 1,234.", 1234.0),
        ("First 12, then \\boxed{42}", 42.0),
        ("#### 7", 7.0),
        ("3 apples and 5 pears", 5.0),
        ("The answer is $18.50.", 18.5),
        ("no numbers", None),
    ],
)
def test_extract_number(text, want):
    assert _number(text) == want


def test_score_items():
    mc = EvalTask(
        "arc_challenge",
        "multiple_choice",
        [BenchmarkItem("1", "arc_challenge", "Q?", "C", ["a", "b", "c", "d"])],
    )
    math = EvalTask("gsm8k", "math", [BenchmarkItem("2", "gsm8k", "Q?", "72")])
    assert check_metric(mc) == "accuracy" and check_metric(math) == "flexible"
    assert score_answers(mc, ["The answer is C."]) == [1] and score_answers(
        mc, ["The answer is A."]
    ) == [0]
    assert score_answers(math, ["... The answer is 72."]) == [1]
    assert score_answers(math, ["The answer is 71"]) == [0]


def test_run_check_end_to_end_with_tiny_models(tiny_model_dir, tmp_path, capsys):
    from ptr_ray.config import BuildCheckConfig
    from ptr_ray.eval.build_check import CheckFailed, run_check

    eng = {"model": str(tiny_model_dir), "backend": "hf", "dtype": "float32", "max_model_len": 1024}
    cfg = BuildCheckConfig.model_validate(
        {
            "weak": eng,
            "strong": eng,
            "tasks": ["gsm8k", "arc_challenge"],
            "limit": 2,
            "sampling": {"max_tokens": 4},
            "output": str(tmp_path / "check.json"),
        }
    )
    report = run_check(cfg)
    assert report["n"] == 4 and set(report["tasks"]) == {"gsm8k", "arc_challenge"}
    assert (tmp_path / "check.json").is_file()
    assert "Wilcoxon signed-rank" in capsys.readouterr().out
    # a random model beats itself by nothing: not significant, and that can be made an error
    assert not report["wilcoxon"]["significant"]
    with pytest.raises(CheckFailed, match="not significantly better"):
        run_check(cfg.model_copy(update={"require_significant": True, "output": None}))


def test_partial_strong_section_keeps_strong_default():
    from ptr_ray.config import BuildCheckConfig, BuildConfig, load_config

    assert (
        load_config(BuildCheckConfig, None, ["strong.backend=hf"]).strong.model
        == "builtin:qwen2.5-coder-0.5b"
    )
    assert (
        load_config(BuildConfig, None, ["strong.model.backend=hf"]).strong.model.model
        == "builtin:qwen2.5-coder-0.5b"
    )
    assert load_config(BuildConfig, None, ["strong.model.model=/m"]).strong.model.model == "/m"
