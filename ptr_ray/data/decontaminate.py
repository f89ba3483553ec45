"""N-gram decontamination: drop training queries that share a long word n-gram with an
evaluation question, so a fine-tuned model is never scored on questions it trained on.

The rule is the one GPT-3 and most later reports use: lower-cased word tokens, a default
n of 13; a reference text shorter than n words counts as one n-gram of its own length (if it
has at least ``min_words`` words), so short questions are protected too. Questions shorter
still ("What is 59 + 63?") are protected by an exact match: a query that *is* an eval question
(same words and symbols, case and spacing aside) is always dropped. N-grams are stored as a
sorted array of 64-bit hashes: the ~1.2M n-grams of every packaged eval set take ~10 MB.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from ptr_ray.data.benchmarks import words
from ptr_ray.errors import PtrRayValueError

_TOKEN = re.compile(r"\w+|[^\w\s]")


def exact_key(text: str) -> int:
    """Hash of a text's lower-cased words and symbols: "What is 59+63?" == "what is 59 + 63 ?",
    while "59 + 63" and "59 * 63" stay different problems."""
    return _hash(_TOKEN.findall(text.lower()))


def _hash(gram: list[str]) -> int:
    """A process-independent 64-bit hash (Python's ``hash`` is salted per process)."""
    return int.from_bytes(
        hashlib.blake2b(" ".join(gram).encode("utf-8"), digest_size=8).digest(), "little"
    )


class NgramDecontaminator:
    """Membership test for "is, or shares an n-gram with, any reference text"."""

    def __init__(self, references: Iterable[str], n: int = 13, min_words: int = 8) -> None:
        if n < 1:
            raise PtrRayValueError(f"decontamination n-gram size must be >= 1, got {n}")
        self.n, self.min_words = n, min(min_words, n)
        hashes: list[int] = []
        lengths: set[int] = set()
        self._exact: set[int] = set()
        self.num_references = 0
        for text in references:
            toks = words(text)
            self.num_references += 1
            if text.strip():
                self._exact.add(exact_key(text))
            if len(toks) >= n:
                hashes.extend(_hash(toks[i : i + n]) for i in range(len(toks) - n + 1))
                lengths.add(n)
            elif len(toks) >= self.min_words:
                hashes.append(_hash(toks))
                lengths.add(len(toks))
        self._table: npt.NDArray[np.uint64] = np.unique(np.asarray(hashes, dtype=np.uint64))
        self._lengths = sorted(lengths)

    def __len__(self) -> int:
        return int(self._table.size)

    def _grams(self, toks: list[str]) -> list[int]:
        out: list[int] = []
        for size in self._lengths:
            out.extend(_hash(toks[i : i + size]) for i in range(len(toks) - size + 1))
        return out

    def contaminated(self, text: str) -> bool:
        """True when ``text`` is a reference or contains an n-gram of one."""
        return self.reason(text) is not None

    def reason(self, text: str) -> str | None:
        """Why ``text`` is contaminated (``"exact"`` or ``"ngram"``), or None when it is not."""
        if text.strip() and exact_key(text) in self._exact:
            return "exact"
        if self._table.size == 0:
            return None
        grams = self._grams(words(text))
        if not grams:
            return None
        q: npt.NDArray[np.uint64] = np.asarray(grams, dtype=np.uint64)
        idx: npt.NDArray[np.intp] = np.searchsorted(self._table, q)
        idx[idx == self._table.size] = 0
        return "ngram" if bool(np.any(self._table[idx] == q)) else None
