"""Duplicate removal: exact (same normalized text = same record id) and near-duplicate
(MinHash + LSH over word shingles, with ``datasketch``).

ShareGPT holds many re-asked questions ("write a poem about..." with one word changed); training
on twenty copies of one question teaches little and skews the mix, so near-duplicates go too.
Both dedupers can be seeded with queries already written by an earlier run, so a resumed run
never adds a near-copy of a row it already has.

These are the sequential, one-process rule (each row against the rows kept before it). The
build itself runs the distributed rule of :mod:`ptr_ray.datagen.prepare` (same parameters;
:mod:`ptr_ray.data.minhash` signatures, connected components over confirmed pairs), which
differs only for chains of near-copies; :func:`shingles` is shared by both.
"""

from __future__ import annotations

from collections.abc import Iterable

from ptr_ray.errors import PtrRayValueError
from ptr_ray.records import normalize_query, record_id


class ExactDeduper:
    """Remembers record ids; ``seen(query)`` is True for a repeat of normalized text."""

    def __init__(self, existing_ids: Iterable[str] = ()) -> None:
        self.ids: set[str] = set(existing_ids)

    def add(self, query: str) -> bool:
        """Record the query; True when it was new."""
        rid = record_id(query)
        if rid in self.ids:
            return False
        self.ids.add(rid)
        return True


def shingles(text: str, size: int) -> set[bytes]:
    """Word ``size``-grams of the normalized text (the whole text when it is shorter)."""
    words = normalize_query(text).split()
    if len(words) <= size:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i : i + size]).encode("utf-8") for i in range(len(words) - size + 1)}


class NearDeduper:
    """MinHash-LSH near-duplicate detector: estimated Jaccard similarity >= ``threshold``.

    LSH answers "which earlier query is probably similar" in near-constant time per query, so
    the cost is linear in the number of queries rather than quadratic.
    """

    def __init__(
        self, threshold: float = 0.8, num_perm: int = 128, shingle_size: int = 3, seed: int = 1
    ) -> None:
        from datasketch import MinHashLSH

        if not 0 < threshold <= 1:
            raise PtrRayValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
        self.threshold, self.num_perm, self.shingle_size, self.seed = (
            threshold,
            num_perm,
            shingle_size,
            seed,
        )
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._sigs: dict[str, object] = {}

    def _minhash(self, text: str):
        from datasketch import MinHash

        mh = MinHash(num_perm=self.num_perm, seed=self.seed)
        mh.update_batch(list(shingles(text, self.shingle_size)))
        return mh

    def check_and_add(self, text: str) -> str | None:
        """The key of an earlier near-duplicate, or None (then the text is remembered)."""
        from datasketch import LeanMinHash

        mh = self._minhash(text)
        # LSH returns candidates; confirm each with the signature's Jaccard estimate so a
        # banding collision alone never drops a query.
        for key in self.lsh.query(mh):
            if mh.jaccard(self._sigs[key]) >= self.threshold:
                return str(key)
        key = f"q{len(self._sigs)}"
        lean = LeanMinHash(mh)
        self.lsh.insert(key, lean)
        self._sigs[key] = lean
        return None
