"""Math answers: find the answer a reply states, and decide whether it equals the gold one.

Kept apart from :mod:`ptr_ray.eval.metrics` because it is the one scorer with its own
machinery: number parsing (``#### 1,234`` == ``1234.0``), LaTeX normalization, and symbolic
equivalence through math-verify (on sympy) for MATH-style expressions, with a time limit per
comparison (math-verify's limits use signals, so off the main thread only normalized text is
compared, with a warning).
"""

from __future__ import annotations

import logging
import re
import threading
from fractions import Fraction
from functools import lru_cache
from typing import Any

log = logging.getLogger(__name__)


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
