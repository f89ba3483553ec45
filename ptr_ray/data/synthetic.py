"""A synthetic, exactly checked arithmetic task: seeded problems with integer answers.

Why: on 2 CPU cores the packaged real benchmarks are either out of reach of a 135M model
(GSM8K: 0 %) or multiple choice; a task whose items a small model sometimes gets right, whose
gold is an exact integer and of which any number of fresh items exist lets the CPU experiment
(docs/experiments/ptr_effect/PROTOCOL.md) measure round-over-round change. Everything it makes
is labelled *synthetic* wherever it is shown.

Problems come in five kinds: 2-digit addition ("What is 59 + 63?"), 1-digit x 2-digit
multiplication, 3-digit addition, a one-step and a two-step word problem ("Tom has 59 apples.
He buys 63 more and then gives away 7. How many apples does Tom have now?"). Each has a gold
integer and a short worked solution ("59 + 63 = 122. The answer is 122."), the wording the
eval's math prompt asks for.

Train and eval never share a problem, by construction: every problem has a *canonical form*
(its arithmetic, operands of ``+`` sorted, names and objects left out, so "What is 63 + 59?"
and "Tom has 59 apples. He buys 63 more." are the same problem), and a hash of that form
assigns it to ``eval`` or ``train`` once and for all. A generator draws from one seeded RNG
stream and keeps the problems of the requested split, without repeats; whatever the seeds, no
problem can be in both splits.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from ptr_ray.errors import PtrRayValueError

Split = Literal["eval", "train"]
SPLITS: tuple[Split, ...] = ("eval", "train")
KINDS = ("add2", "mul1x2", "add3", "word1", "word2")

TASK_NAME = "arith"
EVAL_SEED = 20261202  # the packaged eval items: fixed forever, so results stay comparable
EVAL_SIZE = 1000

_NAMES = [
    ("Tom", "he"),
    ("Anna", "she"),
    ("Ben", "he"),
    ("Maria", "she"),
    ("Sam", "he"),
    ("Lucy", "she"),
    ("Omar", "he"),
    ("Priya", "she"),
    ("Jack", "he"),
    ("Mei", "she"),
    ("Carlos", "he"),
    ("Sofia", "she"),
]
_OBJECTS = [
    "apples",
    "marbles",
    "stickers",
    "books",
    "pencils",
    "coins",
    "cards",
    "stamps",
    "shells",
    "cookies",
    "balloons",
    "toy cars",
]


class SyntheticError(PtrRayValueError):
    """A request the generator cannot satisfy (unknown split, more problems than exist)."""


@dataclass(frozen=True)
class Problem:
    """One arithmetic problem: the question, its gold integer and a worked solution."""

    kind: str
    question: str
    answer: int
    solution: str
    canonical: str  # the arithmetic alone: decides the split and what counts as a repeat

    @property
    def split(self) -> Split:
        return split_of(self.canonical)


def split_of(canonical: str) -> Split:
    """``eval`` or ``train`` for a canonical form: a stable hash, half the problems each."""
    digest = hashlib.sha256(f"ptr-ray-arith|{canonical}".encode()).digest()
    return "eval" if digest[0] % 2 == 0 else "train"


def _add_canonical(a: int, b: int) -> str:
    lo, hi = sorted((a, b))
    return f"{lo}+{hi}"


def _answer_line(n: int) -> str:
    return f"The answer is {n}."


def _add(rng: random.Random, lo: int, hi: int, kind: str) -> Problem:
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    return Problem(
        kind,
        f"What is {a} + {b}?",
        a + b,
        f"{a} + {b} = {a + b}. {_answer_line(a + b)}",
        _add_canonical(a, b),
    )


def _add2(rng: random.Random) -> Problem:
    return _add(rng, 10, 99, "add2")


def _add3(rng: random.Random) -> Problem:
    return _add(rng, 100, 999, "add3")


def _mul1x2(rng: random.Random) -> Problem:
    a, b = rng.randint(2, 9), rng.randint(10, 99)
    x, y = (a, b) if rng.random() < 0.5 else (b, a)
    return Problem(
        "mul1x2",
        f"What is {x} * {y}?",
        a * b,
        f"{x} * {y} = {a * b}. {_answer_line(a * b)}",
        f"{a}*{b}",
    )


def _who(rng: random.Random) -> tuple[str, str, str]:
    name, pronoun = rng.choice(_NAMES)
    return name, pronoun.capitalize(), rng.choice(_OBJECTS)


def _word1(rng: random.Random) -> Problem:
    name, he, obj = _who(rng)
    ask = f"How many {obj} does {name} have now?"
    a = rng.randint(10, 99)
    if rng.random() < 0.5:
        b = rng.randint(2, 99)
        return Problem(
            "word1",
            f"{name} has {a} {obj}. {he} buys {b} more. {ask}",
            a + b,
            f"{a} + {b} = {a + b}. {_answer_line(a + b)}",
            _add_canonical(a, b),
        )
    c = rng.randint(1, a - 1)
    return Problem(
        "word1",
        f"{name} has {a} {obj}. {he} gives away {c}. {ask}",
        a - c,
        f"{a} - {c} = {a - c}. {_answer_line(a - c)}",
        f"{a}-{c}",
    )


def _word2(rng: random.Random) -> Problem:
    name, he, obj = _who(rng)
    a, b = rng.randint(10, 99), rng.randint(2, 99)
    c = rng.randint(1, a + b - 1)
    s = a + b
    return Problem(
        "word2",
        f"{name} has {a} {obj}. {he} buys {b} more and then gives away {c}. "
        f"How many {obj} does {name} have now?",
        s - c,
        f"{a} + {b} = {s}. {s} - {c} = {s - c}. {_answer_line(s - c)}",
        f"({_add_canonical(a, b)})-{c}",
    )


_MAKERS: dict[str, Callable[[random.Random], Problem]] = {
    "add2": _add2,
    "mul1x2": _mul1x2,
    "add3": _add3,
    "word1": _word1,
    "word2": _word2,
}


def iter_problems(split: Split, seed: int) -> Iterator[Problem]:
    """Problems of ``split``, without repeats (by canonical form), from one seeded stream.

    Each draw picks a kind uniformly, then its numbers; a problem of the other split, or one
    already given, is skipped. A kind whose problems run out (there are only 720
    multiplications) is simply skipped from then on, by the same rule; the stream ends when
    no new problem has appeared for a long run of draws.
    """
    if split not in SPLITS:
        raise SyntheticError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    rng = random.Random(f"ptr-ray-arith|{seed}")
    seen: set[str] = set()
    misses = 0
    while misses < 100_000:
        p = _MAKERS[rng.choice(KINDS)](rng)
        if p.canonical in seen or split_of(p.canonical) != split:
            misses += 1
            continue
        misses = 0
        seen.add(p.canonical)
        yield p


def generate(split: Split, n: int, seed: int) -> list[Problem]:
    """The first ``n`` problems of ``split`` from the stream seeded by ``seed``."""
    out: list[Problem] = []
    for p in iter_problems(split, seed):
        if len(out) >= n:
            break
        out.append(p)
    if len(out) < n:
        raise SyntheticError(f"only {len(out)} distinct {split} problems exist; asked for {n}")
    return out


def eval_problems() -> list[Problem]:
    """The packaged ``arith`` eval items: the same :data:`EVAL_SIZE` problems in every run."""
    return generate("eval", EVAL_SIZE, EVAL_SEED)
