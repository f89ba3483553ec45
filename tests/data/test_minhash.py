"""Vectorised MinHash, LSH band keys and union-find (ptr_ray/data/minhash.py), no Ray."""

from __future__ import annotations

import numpy as np
import pytest

from ptr_ray.data.minhash import (
    MinHasher,
    UnionFind,
    band_keys,
    confirmed_pairs,
    jaccard,
    lsh_params,
    runs,
    shingles,
)
from ptr_ray.errors import PtrRayValueError

WORDS = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi".split()
)


def _text(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(WORDS, n))


def _true_jaccard(a: str, b: str, size: int = 3) -> float:
    sa, sb = shingles(a, size), shingles(b, size)
    return len(sa & sb) / len(sa | sb)


def test_signatures_are_deterministic_and_normalized():
    h = MinHasher(num_perm=64, seed=3)
    a = h.signatures(["How do I bake bread?", "how  do i BAKE bread?", "Something else entirely"])
    b = MinHasher(num_perm=64, seed=3).signatures(["How do I bake bread?"])
    assert a.shape == (3, 64) and a.dtype == np.uint32
    assert (a[0] == b[0]).all() and (a[0] == a[1]).all()  # same normalized text
    assert jaccard(a[0], a[2]) < 0.2
    assert not (MinHasher(num_perm=64, seed=4).signatures(["How do I bake bread?"]) == a[0]).all()
    assert MinHasher().signatures([]).shape == (0, 128)


def test_signature_estimates_jaccard():
    rng = np.random.default_rng(0)
    h = MinHasher(num_perm=256, seed=1)
    pairs = []
    for _ in range(40):
        base = _text(rng, 30).split()
        other = list(base)
        for i in rng.choice(30, rng.integers(0, 10), replace=False):
            other[i] = "changed"
        pairs.append((" ".join(base), " ".join(other)))
    sigs = h.signatures([t for p in pairs for t in p])
    est = jaccard(sigs[0::2], sigs[1::2])
    true = np.array([_true_jaccard(a, b) for a, b in pairs])
    assert np.abs(est - true).max() < 0.12  # 256 permutations: std <= 0.031


def test_chunking_does_not_change_signatures(monkeypatch):
    texts = [f"query number {i} " + "word " * (i % 50) for i in range(300)]
    whole = MinHasher(num_perm=32).signatures(texts)
    import ptr_ray.data.minhash as mh

    monkeypatch.setattr(mh, "_MAX_CELLS", 32 * 7)  # a handful of shingles per chunk
    assert (MinHasher(num_perm=32).signatures(texts) == whole).all()


def test_lsh_params_follow_datasketch():
    assert lsh_params(0.8, 128) == (9, 13)
    b, r = lsh_params(0.5, 128)
    assert b * r <= 128 and b > 9
    with pytest.raises(PtrRayValueError):
        lsh_params(0.0, 128)


def test_band_keys_equal_only_for_equal_bands():
    sigs = np.arange(24, dtype=np.uint32).reshape(2, 12)
    sigs[1, :4] = sigs[0, :4]  # band 0 equal, bands 1 and 2 differ
    keys = band_keys(sigs, 3, 4)
    assert keys.shape == (2, 3) and keys.dtype == np.uint64
    assert keys[0, 0] == keys[1, 0] and (keys[0, 1:] != keys[1, 1:]).all()
    same = np.tile(sigs[:1, :4], (1, 3))  # the same values in every band
    k = band_keys(same, 3, 4)
    assert len(set(k[0].tolist())) == 3  # the band index is part of the key
    with pytest.raises(PtrRayValueError):
        band_keys(sigs, 4, 4)


def test_runs_of_equal_sorted_keys():
    starts, stops = runs(np.array([1, 2, 2, 3, 4, 4, 4], dtype=np.uint64))
    assert starts.tolist() == [1, 4] and stops.tolist() == [3, 7]
    assert runs(np.array([5], dtype=np.uint64))[0].size == 0


def test_confirmed_pairs_use_the_threshold():
    sigs = np.array([[1, 2, 3, 4], [1, 2, 3, 9], [1, 9, 9, 9], [1, 2, 3, 4]], dtype=np.uint32)
    assert confirmed_pairs(sigs, 0.75) == [(0, 1), (0, 3), (1, 3)]
    assert confirmed_pairs(sigs, 1.0) == [(0, 3)]


def test_union_find_components():
    uf = UnionFind()
    for a, b in [(5, 3), (3, 9), (10, 11), (9, 5)]:
        uf.union(a, b)
    uf.find(42)  # a singleton is no component
    assert sorted(uf.components()) == [[3, 5, 9], [10, 11]]
