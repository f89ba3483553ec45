"""Answer extraction and scoring: the metrics of the paper's evaluation.

- multiple choice: *first-option match*: the first option the answer commits to, found by
  explicit statements first ("The answer is (C)", "Answer: C", ``\\boxed{C}``), then a leading
  letter, then the earliest option letter or option text. The article "A" ("A plant needs
  light") is never taken for option A: small models answer "A" that way most of the time.
- math: the answer stated after "answer is", ``####`` or in ``\\boxed{}`` (the last one stated),
  compared numerically when both sides are numbers (``#### 1,234`` == ``1234.0``), else as
  normalized LaTeX, else (MATH-style expressions) symbolically with math-verify
  (``\\frac{\\sqrt2}{2}`` == ``\\sqrt{2}/2``; :mod:`ptr_ray.eval.math_answers`). *exact* needs a statement; *flexible* falls
  back to the last number in the reply (lm-eval-harness's strict/flexible split for GSM8K).
- code: pass@1 by running HumanEval's own tests against the reply in the code sandbox
  (:mod:`ptr_ray.eval.sandbox`: namespaces, limits, a judge process the program cannot
  forge), each program under a timeout.
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ptr_ray.config.eval import SandboxConfig
from ptr_ray.data.benchmarks import LETTERS, BenchmarkItem
from ptr_ray.errors import PtrRayValueError

# Math answers live in their own module; re-exported here, where callers look for scorers.
from ptr_ray.eval.math_answers import extract_math as extract_math
from ptr_ray.eval.math_answers import math_equal as math_equal
from ptr_ray.eval.math_answers import normalize_math as normalize_math
from ptr_ray.eval.math_answers import symbolic_equal as symbolic_equal
from ptr_ray.eval.math_answers import to_number as to_number

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
        hit = re.search(rf"(?<![a-z0-9]){re.escape(o)}(?![a-z0-9])", low)
        if hit:
            cands.append((hit.start(), -len(o), LETTERS[i]))
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
    items: Sequence[BenchmarkItem],
    answers: Sequence[str],
    timeout_s: float,
    sandbox: SandboxConfig | None = None,
) -> list[Score]:
    """pass@1 of each reply with HumanEval's tests, run in the code sandbox
    (:mod:`ptr_ray.eval.sandbox`), placed where ``sandbox.schedule`` says."""
    from ptr_ray.eval.sandbox_ray import run_scheduled

    jobs = []
    for item, ans in zip(items, answers, strict=True):
        problem = {
            "task_id": item.id,
            "prompt": item.meta["prompt"],
            "test": item.meta["test"],
            "entry_point": item.meta["entry_point"],
        }
        jobs.append((problem, humaneval_program(item, ans)))
    results = run_scheduled(jobs, timeout_s, sandbox or SandboxConfig())
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
    sandbox: SandboxConfig | None = None,
) -> list[Score]:
    """Score one round's answers for a task of the given kind."""
    if kind == "multiple_choice":
        return [score_choice(i, a) for i, a in zip(items, answers, strict=True)]
    if kind == "math":
        return [score_math(i, a) for i, a in zip(items, answers, strict=True)]
    if kind == "exact":
        return [score_exact(i, a) for i, a in zip(items, answers, strict=True)]
    if kind == "code":
        return score_code(items, answers, code_timeout_s, sandbox)
    if kind == "similarity":
        return score_similarity(items, answers, similarity_threshold)
    raise MetricError(f"unknown metric kind {kind!r}; known: {', '.join(METRICS)}")
