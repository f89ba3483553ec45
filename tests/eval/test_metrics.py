"""Answer extraction and scoring on the strings small models really write."""

from __future__ import annotations

from fractions import Fraction

import pytest

from ptr_ray.data.benchmarks import BenchmarkItem
from ptr_ray.eval.metrics import (
    extract_choice,
    extract_code,
    extract_math,
    math_equal,
    normalize_math,
    score_batch,
    score_choice,
    score_exact,
    score_math,
    symbolic_equal,
    to_number,
)

OPTS = ["water", "light", "soil", "air"]


@pytest.mark.parametrize(
    "text,want",
    [
        ("The answer is (C).", "C"),
        ("The answer is C because soil holds water.", "C"),
        ("The answer is A because plants need water.", "A"),  # mid-sentence capital A: the letter
        ("**Answer: B**\nBecause light is needed.", "B"),
        ("Answer:D", "D"),
        ("The correct option is D.", "D"),
        ("Option B is correct.", "B"),
        ("\\boxed{C}", "C"),
        ("C) soil", "C"),
        ("(B) light", "B"),
        ("D", "D"),
        ("A.", "A"),
        ("B\nLight drives photosynthesis.", "B"),
        # explicit statements win over an earlier option text
        ("Plants need water, so the answer is (C).", "C"),
    ],
)
def test_choice_extraction(text, want):
    assert extract_choice(text, 4, OPTS) == want


def test_article_a_is_not_an_answer():
    # SmolLM2 opens ~70% of replies with the article "A"; it must not score as option A.
    assert extract_choice("A plant needs light to grow.", 4, OPTS) == "B"  # option text
    assert extract_choice("A plant grows toward the window.", 4, OPTS) is None
    assert extract_choice("A good question. I think B.", 4, OPTS) == "B"
    assert extract_choice("Sure! A plant grows. The answer is D.", 4, OPTS) == "D"


def test_first_option_wins_and_letters_out_of_range_ignored():
    assert extract_choice("Either light or water; I would pick light.", 4, OPTS) == "B"
    assert extract_choice("The answer is E.", 4, OPTS) is None
    assert extract_choice("The answer is E.", 5, OPTS + ["fire"]) == "E"
    assert extract_choice("", 4, OPTS) is None
    # a longer option text at the same position beats the shorter one it contains
    assert extract_choice("black cat, surely", 2, ["cat", "black cat"]) == "B"


def test_score_choice_compares_gold():
    item = BenchmarkItem("x", "arc", "q", "B", OPTS)
    assert score_choice(item, "The answer is (B).").values == {"accuracy": 1.0}
    s = score_choice(item, "A plant grows toward the window.")
    assert s.extracted is None and s.values["accuracy"] == 0.0


@pytest.mark.parametrize(
    "text,strict,flexible",
    [
        ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72", "72"),
        ("#### 1,234", "1,234", "1,234"),
        ("So 5 + 5 = 10 and we add 2. The answer is 12.", "12", "12"),
        ("The answer is $\\boxed{18}$.", "18", "18"),
        ("Total: \\boxed{1,234}", "1,234", "1,234"),
        ("The answer is 18 dollars.", "18", "18"),
        ("The answer is: $1,234.50", "$1,234.50", "$1,234.50"),
        ("She has 3 apples and buys 7 more, 10 in all", None, "10"),
        ("no numbers here", None, None),
        ("The answer is 5. Wait, recount: the answer is 6.", "6", "6"),  # the last statement wins
        ("The final answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}", "\\frac{1}{2}"),
        ("The answer is (3, \\frac{\\pi}{2}).", "(3, \\frac{\\pi}{2})", "(3, \\frac{\\pi}{2})"),
    ],
)
def test_math_extraction(text, strict, flexible):
    assert extract_math(text) == (strict, flexible)


def test_math_equality():
    assert math_equal("1,234", "1234")
    assert math_equal("1234.0", "1234")
    assert math_equal("$12.50", "12.5")
    assert math_equal("\\dfrac{1}{2}", "\\frac{1}{2}")
    assert math_equal("0.5", "\\frac12")
    assert math_equal("(3,\\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)")
    assert math_equal("x = 5", "5")
    assert not math_equal("72.5", "72")
    assert not math_equal(None, "72")
    assert to_number("50%") == 50
    assert to_number("-3/4") == Fraction(-3, 4)
    assert to_number("twelve") is None
    assert normalize_math("\\text{(C)}") == "(C)"


@pytest.mark.parametrize(
    "pred,gold",
    [
        ("0.5", "\\frac{1}{2}"),
        ("\\frac{1}{2}", "0.5"),
        ("\\sqrt{2}/2", "\\frac{\\sqrt2}{2}"),
        ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}"),
        ("2\\sqrt{3}", "\\sqrt{12}"),
        ("10", "10\\%"),
        ("[1,2)", "[1, 2)"),
        ("(-\\infty, 3]", "\\left(-\\infty,3\\right]"),
        ("x(x+2)", "x^2+2x"),
        ("\\{2,1\\}", "\\{1,2\\}"),
        ("Evelyn", "\\text{Evelyn}"),
    ],
)
def test_math_style_answers_equivalent(pred, gold):
    assert math_equal(pred, gold)


@pytest.mark.parametrize(
    "pred,gold",
    [
        ("(1,2]", "[1,2)"),  # open and closed ends differ
        ("(-\\infty, 3)", "(-\\infty,3]"),
        ("2\\sqrt{3}", "\\sqrt{13}"),
        ("0.33", "\\frac{1}{3}"),
        ("3.14159", "\\pi"),
        ("Bob", "\\text{Evelyn}"),
        ("8\\times 9", "72"),  # a numeric gold is compared as a number only (GSM8K)
    ],
)
def test_math_style_answers_not_equivalent(pred, gold):
    assert not math_equal(pred, gold)


def test_symbolic_check_falls_back_to_text_off_the_main_thread():
    import threading

    got: list[object] = []
    t = threading.Thread(
        target=lambda: got.extend(
            [
                symbolic_equal("\\sqrt{2}/2", "\\frac{\\sqrt2}{2}"),
                math_equal("\\sqrt{2}/2", "\\frac{\\sqrt2}{2}"),
                math_equal("\\dfrac{\\sqrt2}{2}", "\\frac{\\sqrt2}{2}"),
            ]
        )
    )
    t.start()
    t.join()
    assert got == [None, False, True]


def test_math500_item_scored_symbolically():
    item = BenchmarkItem("m", "math500", "q", "\\frac{\\sqrt{2}}{2}")
    s = score_math(item, "So the answer is $\\boxed{\\sqrt{2}/2}$.")
    assert s.extracted == "\\sqrt{2}/2" and s.values == {"exact": 1.0, "flexible": 1.0}


def test_exact_and_flexible_differ():
    item = BenchmarkItem("g", "gsm8k", "q", "72")
    s = score_math(item, "48 + 24 = 72")
    assert s.values == {"exact": 0.0, "flexible": 1.0}
    s = score_math(item, "The answer is 72.")
    assert s.values == {"exact": 1.0, "flexible": 1.0} and s.extracted == "72"
    s = score_math(item, "#### 1,234")
    assert s.values == {"exact": 0.0, "flexible": 0.0}


def test_exact_metric_normalizes():
    item = BenchmarkItem("c", "mine", "Capital of France?", "Paris")
    assert score_exact(item, "The answer is: Paris.").values["exact"] == 1.0
    assert score_exact(item, "paris").values["exact"] == 1.0
    assert score_exact(item, "The answer is London.").values["exact"] == 0.0


def test_extract_code_prefers_block_with_entry_point():
    text = "Here:\n```python\nimport os\n```\nand\n```python\ndef add(a, b):\n    return a + b\n```"
    assert "def add" in extract_code(text, "add")
    assert extract_code("```\nx = 1\n```", None).strip() == "x = 1"
    assert extract_code("    return a + b", "add") == "    return a + b"


HE_ITEM = BenchmarkItem(
    "HumanEval/x",
    "humaneval",
    "q",
    "",
    meta={
        "prompt": "from typing import List\n\n\ndef add(a: int, b: int) -> int:\n"
        '    """Add two numbers."""\n',
        "entry_point": "add",
        "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
    },
)


@pytest.mark.slow
def test_code_pass_fail_timeout_and_body_only():
    answers = [
        "```python\ndef add(a: int, b: int) -> int:\n    return a + b\n```",  # passes
        "```python\ndef add(a, b):\n    return a - b\n```",  # fails
        "```python\ndef add(a, b):\n    while True:\n        pass\n```",  # times out
        "    return a + b\n",  # body only: passes
        "```python\nimport os\ndef add(a, b):\n    os.system('true')\n    return a + b\n```",  # guarded
    ]
    scores = score_batch("code", [HE_ITEM] * len(answers), answers, code_timeout_s=2.0)
    assert [s.values["pass@1"] for s in scores] == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert "timed out" in scores[2].detail
    assert scores[1].detail.startswith("failed")


@pytest.mark.slow
def test_similarity_ranks_paraphrase_above_unrelated():
    ref = BenchmarkItem("s", "sum", "Summarize.", "The cat sat on the mat all afternoon.")
    scores = score_batch(
        "similarity",
        [ref, ref, ref],
        [
            "A cat spent the afternoon sitting on a mat.",
            "Stock markets fell sharply on Monday.",
            "",
        ],
        similarity_threshold=0.6,
    )
    sims = [s.values["similarity"] for s in scores]
    assert sims[0] > 0.6 > sims[1]
    assert [s.values["match"] for s in scores] == [1.0, 0.0, 0.0]


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown metric kind"):
        score_batch("bleu", [], [])
