"""MinHash signatures and LSH band keys for many queries at once, with numpy.

The near-duplicate rule of the build (``ptr_ray.datagen.prepare``) runs on Ray Data workers
over batches of thousands of rows, so the per-row Python work is cut to what cannot be
vectorised (splitting a query into word shingles and hashing each shingle); the permutations,
the minimum per row and the band keys are array operations over the whole batch.

The parameters are the ones ``datasketch`` uses (``num_perm``, ``seed``, ``shingle_size``,
``threshold``) and the bands x rows split is datasketch's optimum for the threshold
(:func:`lsh_params`), so the candidate rate per similarity is the same; the hash functions
are this module's own (a signature is not comparable with a datasketch ``MinHash``).

Pure numpy, no Ray: the Ray Data plan calls these functions inside its operators.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from ptr_ray.errors import PtrRayValueError
from ptr_ray.records import normalize_query

_PRIME = np.uint64((1 << 61) - 1)  # Mersenne prime of the universal hash (a*x + b) mod p
_MASK32 = np.uint64(0xFFFFFFFF)
_MAX_CELLS = 1 << 21  # shingles x permutations computed at once (16 MiB of uint64)

Sig: TypeAlias = npt.NDArray[np.uint32]
U64: TypeAlias = npt.NDArray[np.uint64]
I64: TypeAlias = npt.NDArray[np.int64]


def shingles(text: str, size: int) -> set[bytes]:
    """Word ``size``-grams of the normalized text (the whole text when it is shorter)."""
    words = normalize_query(text).split()
    if len(words) <= size:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i : i + size]).encode("utf-8") for i in range(len(words) - size + 1)}


@lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) minimising datasketch's equally weighted false-positive and
    false-negative areas for ``threshold`` (datasketch's own choice for ``MinHashLSH``)."""
    from datasketch.lsh import _optimal_param

    if not 0 < threshold <= 1:
        raise PtrRayValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
    bands, rows = _optimal_param(threshold, num_perm, 0.5, 0.5)
    return int(bands), int(rows)


@dataclass(frozen=True)
class MinHasher:
    """``num_perm`` universal hash permutations of 32-bit shingle hashes, seeded."""

    num_perm: int = 128
    seed: int = 1
    shingle_size: int = 3

    @property
    def _coeffs(self) -> tuple[U64, U64]:
        return _coefficients(self.num_perm, self.seed)

    def shingle_hashes(self, text: str) -> U64:
        """32-bit hashes of the text's word shingles (normalized as record ids are)."""
        grams = shingles(text, self.shingle_size)
        return np.fromiter(
            (int.from_bytes(hashlib.blake2b(g, digest_size=4).digest(), "little") for g in grams),
            dtype=np.uint64,
            count=len(grams),
        )

    def signatures(self, texts: Sequence[str]) -> Sig:
        """One ``num_perm`` signature per text, shape (len(texts), num_perm), uint32."""
        n = len(texts)
        out: Sig = np.empty((n, self.num_perm), dtype=np.uint32)
        if n == 0:
            return out
        hashes = [self.shingle_hashes(t) for t in texts]
        a, b = self._coeffs
        per_chunk = max(1, _MAX_CELLS // self.num_perm)
        start = 0
        while start < n:  # rows whose shingles fit one chunk of the (shingles x perms) table
            stop, cells = start, 0
            while stop < n and (stop == start or cells + hashes[stop].size <= per_chunk):
                cells += hashes[stop].size
                stop += 1
            flat = np.concatenate(hashes[start:stop])
            lengths = np.fromiter((h.size for h in hashes[start:stop]), np.int64, stop - start)
            # a < 2^31, x < 2^32, b < 2^61: a*x + b < 2^64, no uint64 wrap-around
            perm = ((flat[:, None] * a[None, :] + b[None, :]) % _PRIME) & _MASK32
            offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
            out[start:stop] = np.minimum.reduceat(perm, offsets, axis=0).astype(np.uint32)
            start = stop
        return out


@lru_cache(maxsize=16)
def _coefficients(num_perm: int, seed: int) -> tuple[U64, U64]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 1 << 31, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, int(_PRIME), size=num_perm, dtype=np.uint64)
    return a, b


def jaccard(sig_a: Sig, sig_b: Sig) -> npt.NDArray[np.float64]:
    """Estimated Jaccard similarity: the share of equal signature cells (row-wise)."""
    return np.mean(np.asarray(sig_a) == np.asarray(sig_b), axis=-1)


def mix64(x: U64) -> U64:
    """splitmix64's finaliser: spreads every input bit over the 64-bit key."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def band_keys(sigs: Sig, bands: int, rows: int) -> U64:
    """One 64-bit key per (text, band), shape (n, bands): equal keys = the same band values.

    The band index is mixed in, so band 0 of one text never meets band 1 of another. A key
    collision of different band values is possible (2^-64 per pair) and harmless: a collision
    only makes a candidate pair, which the signatures then confirm or not.
    """
    if bands * rows > sigs.shape[1]:
        raise PtrRayValueError(f"{bands} bands x {rows} rows > {sigs.shape[1]} permutations")
    n = sigs.shape[0]
    keys: U64 = np.empty((n, bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for band in range(bands):
            h = np.full(n, np.uint64(band + 1) * np.uint64(0x9E3779B97F4A7C15), dtype=np.uint64)
            for j in range(band * rows, (band + 1) * rows):
                h = mix64(h ^ sigs[:, j].astype(np.uint64))
            keys[:, band] = h
    return keys


def runs(keys: U64) -> tuple[I64, I64]:
    """(start, stop) of each run of >= 2 equal values in sorted ``keys``."""
    if keys.size < 2:
        empty: I64 = np.empty(0, dtype=np.int64)
        return empty, empty
    edges = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    starts = np.concatenate(([0], edges)).astype(np.int64)
    stops = np.concatenate((edges, [keys.size])).astype(np.int64)
    many = stops - starts >= 2
    return starts[many], stops[many]


def confirmed_pairs(sigs: Sig, threshold: float) -> list[tuple[int, int]]:
    """Index pairs (i < j) of one bucket's signatures whose estimated Jaccard >= threshold."""
    k = sigs.shape[0]
    out: list[tuple[int, int]] = []
    for i in range(k - 1):
        sim = jaccard(sigs[i + 1 :], sigs[i][None, :])
        out.extend((i, i + 1 + int(j)) for j in np.flatnonzero(sim >= threshold))
    return out


class UnionFind:
    """Disjoint sets over arbitrary hashable items (path halving, union by size).

    Used over confirmed near-duplicate edges only, so its size follows the number of
    near-duplicates, not the number of rows.
    """

    def __init__(self) -> None:
        self._parent: dict[int, int] = {}
        self._size: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self._parent
        if x not in parent:
            parent[x], self._size[x] = x, 1
            return x
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self._size[ra] < self._size[rb]:
            ra, rb = rb, ra
        self._parent[rb] = ra
        self._size[ra] += self._size[rb]

    def components(self) -> list[list[int]]:
        """Every set of two or more items, each sorted ascending."""
        groups: dict[int, list[int]] = {}
        for x in self._parent:
            groups.setdefault(self.find(x), []).append(x)
        return [sorted(g) for g in groups.values() if len(g) > 1]
