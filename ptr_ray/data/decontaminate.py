"""N-gram decontamination: drop training queries that share a long word n-gram with an
evaluation question, so a fine-tuned model is never scored on questions it trained on.

The rule is the one GPT-3 and most later reports use: lower-cased word tokens, a default
n of 13; a reference text shorter than n words counts as one n-gram of its own length (if it
has at least ``min_words`` words), so short questions are protected too. Questions shorter
still ("What is 59 + 63?") are protected by an exact match: a query that *is* an eval question
(same words and symbols, case and spacing aside) is always dropped. N-grams are stored as a
sorted array of 64-bit hashes: the ~1.2M n-grams of every packaged eval set take ~10 MB.

An n-gram's hash is a polynomial rolling hash (mod 2^64) of its words' 64-bit hashes, mixed:
the prefix sums come from one cumulative sum and every n-gram of every size from two prefix
arrays, and a bit filter of the table's top bits spares most binary searches. The build checks
every query it reads, and this made the check ~4x cheaper than hashing each joined n-gram
(175 -> ~60 us per query here). A false match needs a 64-bit collision of the mixed hash.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from ptr_ray.data.benchmarks import words
from ptr_ray.data.minhash import mix64
from ptr_ray.errors import PtrRayValueError

_TOKEN = re.compile(r"\w+|[^\w\s]")
_BASE = 0x100000001B3  # odd multiplier of the rolling hash
_MASK = (1 << 64) - 1
_FILTER_BITS = 26


def exact_key(text: str) -> int:
    """Hash of a text's lower-cased words and symbols: "What is 59+63?" == "what is 59 + 63 ?",
    while "59 + 63" and "59 * 63" stay different problems."""
    return _hash(_TOKEN.findall(text.lower()))


def _hash(gram: list[str]) -> int:
    """A process-independent 64-bit hash (Python's ``hash`` is salted per process)."""
    return int.from_bytes(
        hashlib.blake2b(" ".join(gram).encode("utf-8"), digest_size=8).digest(), "little"
    )


@lru_cache(maxsize=1 << 18)
def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


_POWERS: list[npt.NDArray[np.uint64]] = [np.ones(1, np.uint64), np.ones(1, np.uint64)]


def _powers(n: int) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """(BASE^i, BASE^-i) mod 2^64 for i < n (BASE is odd, so it has an inverse mod 2^64)."""
    if _POWERS[0].size < n:
        size = max(n, 2 * _POWERS[0].size, 1024)
        up, down, inv = [1], [1], pow(_BASE, -1, 1 << 64)
        for _ in range(size - 1):
            up.append(up[-1] * _BASE & _MASK)
            down.append(down[-1] * inv & _MASK)
        _POWERS[:] = [np.array(up, np.uint64), np.array(down, np.uint64)]
    return _POWERS[0][:n], _POWERS[1][:n]


def _prefixes(toks: list[str]) -> npt.NDArray[np.uint64]:
    """P[0] = 0, P[i+1] = P[i] * BASE + hash(word i) (mod 2^64), i.e.
    P[i+1] = BASE^i * sum_{j<=i} hash(word j) * BASE^-j: one cumulative sum, no Python loop."""
    n = len(toks)
    h = np.fromiter((_word_hash(t) for t in toks), dtype=np.uint64, count=n)
    up, down = _powers(n)
    out: npt.NDArray[np.uint64] = np.zeros(n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        out[1:] = np.cumsum(h * down, dtype=np.uint64) * up
    return out


def _gram_hashes(prefix: npt.NDArray[np.uint64], sizes: Iterable[int]) -> npt.NDArray[np.uint64]:
    """The hash of every window of each size: P[i+size] - P[i] * BASE^size, mixed."""
    with np.errstate(over="ignore"):
        parts = [
            prefix[size:] - prefix[:-size] * np.uint64(pow(_BASE, size, 1 << 64))
            for size in sizes
            if size < prefix.size
        ]
    return mix64(np.concatenate(parts)) if parts else np.empty(0, dtype=np.uint64)


class NgramDecontaminator:
    """Membership test for "is, or shares an n-gram with, any reference text"."""

    def __init__(self, references: Iterable[str], n: int = 13, min_words: int = 8) -> None:
        if n < 1:
            raise PtrRayValueError(f"decontamination n-gram size must be >= 1, got {n}")
        self.n, self.min_words = n, min(min_words, n)
        hashes: list[npt.NDArray[np.uint64]] = []
        lengths: set[int] = set()
        self._exact: set[int] = set()
        self.num_references = 0
        for text in references:
            toks = words(text)
            self.num_references += 1
            if text.strip():
                self._exact.add(exact_key(text))
            if len(toks) >= n:
                hashes.append(_gram_hashes(_prefixes(toks), [n]))
                lengths.add(n)
            elif len(toks) >= self.min_words:
                hashes.append(_gram_hashes(_prefixes(toks), [len(toks)]))
                lengths.add(len(toks))
        self._table: npt.NDArray[np.uint64] = np.unique(
            np.concatenate(hashes) if hashes else np.empty(0, dtype=np.uint64)
        )
        self._lengths = sorted(lengths)
        # A 2^26-bit filter of the table's top bits (8 MB, ~1-2 % set): most of a query's
        # n-grams miss it, and only the few left are searched in the sorted table (3x faster).
        self._filter: npt.NDArray[np.uint8] = np.zeros(1 << (_FILTER_BITS - 3), dtype=np.uint8)
        top = self._table >> np.uint64(64 - _FILTER_BITS)
        np.bitwise_or.at(
            self._filter,
            (top >> np.uint64(3)).astype(np.intp),
            np.left_shift(np.uint8(1), (top & np.uint64(7)).astype(np.uint8)),
        )

    def __len__(self) -> int:
        return int(self._table.size)

    def _grams(self, toks: list[str]) -> npt.NDArray[np.uint64]:
        return _gram_hashes(_prefixes(toks), self._lengths)

    def contaminated(self, text: str) -> bool:
        """True when ``text`` is a reference or contains an n-gram of one."""
        return self.reason(text) is not None

    def reason(self, text: str) -> str | None:
        """Why ``text`` is contaminated (``"exact"`` or ``"ngram"``), or None when it is not."""
        if text.strip() and exact_key(text) in self._exact:
            return "exact"
        if self._table.size == 0:
            return None
        q = self._grams(words(text))
        top = q >> np.uint64(64 - _FILTER_BITS)
        bit = self._filter[(top >> np.uint64(3)).astype(np.intp)] >> (top & np.uint64(7)).astype(
            np.uint8
        )
        q = q[(bit & 1).astype(bool)]
        if q.size == 0:
            return None
        idx: npt.NDArray[np.intp] = np.searchsorted(self._table, q)
        idx[idx == self._table.size] = 0
        return "ngram" if bool(np.any(self._table[idx] == q)) else None
