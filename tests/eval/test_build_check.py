"""build-check's small scorer and statistics (the model runs are in the integration tests)."""

from __future__ import annotations

import pytest

from ptr_ray.eval.build_check import extract_letter, extract_number, score, wilcoxon_greater, wilson
from ptr_ray.data.benchmarks import BenchmarkItem


@pytest.mark.parametrize("text,want", [
    ("The answer is B. Because...", "B"),
    ("A plant needs light to grow.", None),  # the article, not option A
    ("A. Water\nbecause", "A"),
    ("the answer is a bit unclear, maybe (C)", "C"),
    ("**D**", "D"),
    ("I pick option C.", "C"),
    ("\\boxed{B}", "B"),
    ("The answer is E", None),  # only 4 options
])
def test_extract_letter(text, want):
    assert extract_letter(text, 4) == want


@pytest.mark.parametrize("text,want", [
    ("so 3 + 4 = 7. The answer is 1,234.", 1234.0),
    ("First 12, then \\boxed{42}", 42.0),
    ("#### 7", 7.0),
    ("3 apples and 5 pears", 5.0),
    ("The answer is $18.50.", 18.5),
    ("no numbers", None),
])
def test_extract_number(text, want):
    assert extract_number(text) == want


def test_score_items():
    mc = BenchmarkItem("1", "arc_challenge", "Q?", "C", ["a", "b", "c", "d"])
    math = BenchmarkItem("2", "gsm8k", "Q?", "72")
    assert score(mc, "The answer is C.") == 1 and score(mc, "The answer is A.") == 0
    assert score(math, "... The answer is 72.") == 1 and score(math, "The answer is 71") == 0


def test_wilson_interval():
    lo, hi = wilson(0, 20)
    assert lo == 0.0 and 0.1 < hi < 0.2
    lo, hi = wilson(10, 20)
    assert lo < 0.5 < hi
    assert wilson(0, 0) == (0.0, 0.0)


def test_wilcoxon_direction_and_ties():
    strong = [1] * 15 + [0] * 5
    weak = [0] * 15 + [0] * 5
    r = wilcoxon_greater(strong, weak)
    assert r["p_value"] < 0.001 and r["n_discordant"] == 15
    assert wilcoxon_greater(weak, strong)["p_value"] > 0.99
    tie = wilcoxon_greater([1, 0, 1], [1, 0, 1])
    assert tie["p_value"] == 1.0 and tie["statistic"] is None


def test_run_check_end_to_end_with_tiny_models(tiny_model_dir, tmp_path, capsys):
    from ptr_ray.eval.build_check import CheckFailed, run_check
    from ptr_ray.config import BuildCheckConfig

    eng = {"model": str(tiny_model_dir), "backend": "hf", "dtype": "float32", "max_model_len": 1024}
    cfg = BuildCheckConfig.model_validate({
        "weak": eng, "strong": eng, "tasks": ["gsm8k", "arc_challenge"], "limit": 2,
        "sampling": {"max_tokens": 4}, "output": str(tmp_path / "check.json"),
    })
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

    assert load_config(BuildCheckConfig, None, ["strong.backend=hf"]).strong.model == "builtin:qwen2.5-coder-0.5b"
    assert load_config(BuildConfig, None, ["strong.model.backend=hf"]).strong.model.model == "builtin:qwen2.5-coder-0.5b"
    assert load_config(BuildConfig, None, ["strong.model.model=/m"]).strong.model.model == "/m"
