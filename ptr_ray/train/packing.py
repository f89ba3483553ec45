"""Bin packing of episodes into ``max_length`` sequences, and micro-batches of sequences.

Works on lengths only (token counts); :mod:`ptr_ray.train.encode` turns the groups into
tensors. Every packer is deterministic (ties go to the lower index, no time limits), because
a resumed run must rebuild the same plan.

* :func:`pack` (data plan version 2, what training uses) keeps the packing with the fewest
  sequences among three: best-fit decreasing; :func:`pack_min_slack`, which opens a sequence
  with the longest episode left and fills the rest of it with the subset of the remaining
  episodes that fills it best (an exact subset-sum; Gupta and Ho's minimum bin slack); and
  :func:`pack_patterns`, the cutting-stock formulation solved by column generation and a small
  integer program (HiGHS through scipy). Best-fit alone leaves a sequence short whenever no
  single episode fits its gap; with episodes of a quarter to half of ``max_length`` (PTR
  episodes at 512 tokens) that costs 5-10 % of the capacity, which the other two recover.
* :func:`pack_best_fit` (version 1, the packer until December 2026): best-fit decreasing.
  Kept so a benchmark can measure both on the same episodes and a plan of version 1 can be
  rebuilt exactly (:data:`PLAN_VERSIONS`).

:func:`group_micro_batches` then puts sequences of similar length into the same micro-batch
(version 2; a micro-batch is padded to its longest row) and shuffles the micro-batches with
the epoch's seed, so the order of the data stays random.

Efficiency (:func:`plan_efficiency`): ``fill`` is real tokens / (sequences x max_length),
the share of the sequences' capacity that holds tokens; ``slots`` is real tokens / cells of
the micro-batch tensors (rows x longest row), what the forward pass computes on. A row is
never longer than ``max_length``, so ``slots >= fill``.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import deque
from collections.abc import Sequence
from typing import Any

from ptr_ray.errors import PtrRayValueError

#: The data plan a run is trained on (which episodes share a sequence and a micro-batch, in
#: which order). A checkpoint counts steps of its own plan, so a run written under another
#: version must not resume under this one (``train/resume.py`` refuses it).
PLAN_VERSION = 2
PLAN_VERSIONS = {
    1: "best-fit decreasing packing, micro-batches of random sequences",
    2: "fewest sequences of best-fit, minimum-slack and cutting-stock packing, "
    "micro-batches of similar-length sequences",
}


#: Largest distinct lengths x max_length for which :func:`pack` tries cutting-stock packing
#: (its knapsack table holds about that many bytes times log2 of the count per length; PTR
#: episodes at 512 tokens: ~1e5).
PATTERN_LIMIT = 8_000_000


class PackError(PtrRayValueError):
    """Lengths that cannot be packed (an episode longer than ``max_length``, a bad length)."""


def _check(lengths: Sequence[int], max_length: int) -> None:
    if max_length < 1:
        raise PackError(f"max_length must be >= 1, got {max_length}")
    for i, n in enumerate(lengths):
        if n > max_length:
            raise PackError(f"episode {i} of {n} tokens exceeds max_length={max_length}")
        if n < 1:
            raise PackError(f"episode {i} has {n} tokens; every episode has at least one")


def pack_best_fit(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Best-fit decreasing (plan version 1): groups of indices whose lengths sum to <= max_length.

    O(n log n) with a sorted list of remaining capacities.
    """
    _check(lengths, max_length)
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining capacity, bin id), sorted
    for i in order:
        n = lengths[i]
        j = bisect.bisect_left(free, (n, -1))
        if j < len(free):
            cap, b = free.pop(j)
            bins[b].append(i)
            bisect.insort(free, (cap - n, b))
        else:
            bins.append([i])
            bisect.insort(free, (max_length - n, len(bins) - 1))
    return bins


def best_fill(room: int, available: dict[int, int]) -> dict[int, int]:
    """How many episodes of each length to put in ``room`` tokens: the largest total <= room.

    ``available`` maps a length to how many episodes of it are left. A bounded subset-sum,
    solved exactly with a bit set of reachable totals (bit t set: some choice sums to t); each
    length's count is split in powers of two, so the work grows with log(count), not count.
    Among equal totals it leans to longer episodes (short ones are kept to fill later gaps).
    It stops as soon as the room can be filled exactly.
    """
    if room <= 0:
        return {}
    items: list[tuple[int, int]] = []  # (length, how many), longer lengths first
    for n in sorted(available, reverse=True):
        c = min(available[n], room // n)
        k = 1
        while c > 0:
            take = min(k, c)
            items.append((n, take))
            c -= take
            k *= 2
    full = (1 << (room + 1)) - 1
    reach = 1
    before: list[int] = []  # reach before item j
    for n, k in items:
        before.append(reach)
        reach |= (reach << (n * k)) & full
        if reach >> room & 1:
            break
    t = reach.bit_length() - 1  # the largest reachable total
    out: dict[int, int] = {}
    for j in range(len(before) - 1, -1, -1):
        if before[j] >> t & 1:
            continue  # t was reachable without item j: prefer the longer ones before it
        n, k = items[j]
        out[n] = out.get(n, 0) + k
        t -= n * k
    return out


def pack_min_slack(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Minimum-slack packing (a candidate of :func:`pack`): groups of indices, each <= max_length.

    Each sequence starts with the longest episode left and takes the best fill of the rest
    (:func:`best_fill`). Episodes of the same length are taken in index order.
    """
    _check(lengths, max_length)
    left: dict[int, deque[int]] = {}
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        left.setdefault(lengths[i], deque()).append(i)
    sizes = sorted(left)  # distinct lengths still left, ascending

    def take(n: int) -> int:
        q = left[n]
        i = q.popleft()
        if not q:
            del left[n]
            sizes.pop(bisect.bisect_left(sizes, n))
        return i

    bins: list[list[int]] = []
    while sizes:
        top = sizes[-1]
        group = [take(top)]
        room = max_length - top
        fits = sizes[: bisect.bisect_right(sizes, room)]
        fill = best_fill(room, {n: len(left[n]) for n in fits})
        for n in sorted(fill, reverse=True):
            group.extend(take(n) for _ in range(fill[n]))
        bins.append(group)
    return bins


def _knapsack(values: Any, weights: Sequence[int], caps: Sequence[int], room: int) -> list[int]:
    """Counts a_t <= caps[t] with sum(weights[t] * a_t) <= room that maximise sum(values[t] * a_t)
    (a bounded knapsack, by dynamic programming over the room, counts split in powers of two)."""
    import numpy as np

    parts: list[tuple[int, int]] = []
    for t, (w, c) in enumerate(zip(weights, caps, strict=True)):
        c, k = min(c, room // w), 1
        while c > 0:
            parts.append((t, min(k, c)))
            c -= min(k, c)
            k *= 2
    best = np.zeros(room + 1)  # best[c]: the largest value within c tokens
    took: Any = np.zeros((len(parts), room + 1), dtype=bool)
    for j, (t, m) in enumerate(parts):
        w = weights[t] * m
        cand = np.full(room + 1, -np.inf)
        cand[w:] = best[: room + 1 - w] + values[t] * m
        took[j] = cand > best + 1e-12
        best = np.where(took[j], cand, best)
    counts = [0] * len(weights)
    c = room
    for j in range(len(parts) - 1, -1, -1):
        if took[j, c]:
            t, m = parts[j]
            counts[t] += m
            c -= weights[t] * m
    return counts


def pack_patterns(
    lengths: Sequence[int],
    max_length: int,
    start: Sequence[Sequence[int]],
    rounds: int = 60,
    node_limit: int = 1000,
) -> tuple[list[list[int]] | None, int]:
    """Cutting-stock packing: (groups, or None when no integer solution was found; a lower
    bound on the sequences any packing needs).

    Episodes of one length are interchangeable, so a sequence is a *pattern* (how many of each
    length) and a packing is how often each pattern is used (Gilmore and Gomory). Column
    generation: the LP relaxation over the patterns known so far (from ``start``, a feasible
    packing) gives each length a price; the pattern with the largest total price (a knapsack)
    joins while that price exceeds 1, for at most ``rounds`` rounds. An integer program over
    the patterns found then picks the packing (HiGHS, at most ``node_limit`` nodes). The work
    grows with the number of distinct lengths (<= max_length), not with the number of
    episodes. Deterministic: no time limits, HiGHS is deterministic for the same input.
    """
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, linprog, milp

    _check(lengths, max_length)
    if not lengths:
        return [], 0
    types = sorted(set(lengths), reverse=True)
    index = {n: t for t, n in enumerate(types)}
    need = np.zeros(len(types))
    for n in lengths:
        need[index[n]] += 1
    floor = min_sequences(lengths, max_length)
    patterns: list[list[int]] = []
    seen: set[tuple[int, ...]] = set()

    def add(counts: list[int]) -> bool:
        key = tuple(counts)
        if key in seen:
            return False
        seen.add(key)
        patterns.append(counts)
        return True

    for group in start:
        counts = [0] * len(types)
        for i in group:
            counts[index[lengths[i]]] += 1
        add(counts)
    for _ in range(rounds):
        a = np.array(patterns, dtype=float).T
        lp = linprog(np.ones(a.shape[1]), A_ub=-a, b_ub=-need, bounds=(0, None), method="highs")
        if lp.status != 0:
            return None, floor
        price = np.maximum(-lp.ineqlin.marginals, 0.0)
        counts = _knapsack(price, types, [int(x) for x in need], max_length)
        value = float(price @ np.array(counts, dtype=float))
        # Farley's bound: the full LP (all patterns) is at least lp.fun / value.
        floor = max(floor, math.ceil(lp.fun / max(value, 1.0) - 1e-6))
        if value <= 1 + 1e-9 or floor >= math.ceil(lp.fun - 1e-6) or not add(counts):
            break
    a = np.array(patterns, dtype=float).T
    res = milp(
        np.ones(a.shape[1]),
        constraints=LinearConstraint(a, lb=need, ub=np.inf),
        integrality=np.ones(a.shape[1]),
        bounds=Bounds(0, np.inf),
        options={"node_limit": node_limit},
    )
    if res.x is None:
        return None, floor
    use = np.rint(res.x).astype(int)
    if (a @ use < need - 0.5).any():
        return None, floor
    left: dict[int, deque[int]] = {n: deque() for n in types}
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        left[lengths[i]].append(i)
    bins: list[list[int]] = []
    for p, times in enumerate(use.tolist()):
        for _ in range(times):
            group = [
                left[n].popleft()
                for t, n in enumerate(types)
                for _ in range(min(patterns[p][t], len(left[n])))
            ]
            if group:  # a pattern used more often than needed leaves some copies empty
                bins.append(group)
    return bins, floor


def pack(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """The packing of plan version 2: the fewest sequences of best-fit decreasing, minimum
    slack and cutting-stock (in that order on ties; each later one runs only while the best so
    far is above the token lower bound, :func:`min_sequences`; cutting-stock only while
    distinct lengths x max_length <= :data:`PATTERN_LIMIT`, which bounds its memory and time)."""
    best = pack_best_fit(lengths, max_length)
    floor = min_sequences(lengths, max_length)
    if len(best) > floor:
        other = pack_min_slack(lengths, max_length)
        best = other if len(other) < len(best) else best
    if len(best) > floor and len(set(lengths)) * max_length <= PATTERN_LIMIT:
        bins, _ = pack_patterns(lengths, max_length, best)
        best = bins if bins is not None and len(bins) < len(best) else best
    return best


def group_micro_batches(
    sizes: Sequence[int], micro_batch_size: int, rng: random.Random, by_length: bool = True
) -> list[list[int]]:
    """Micro-batches of sequence indices, in a seeded random order.

    ``by_length`` (plan version 2): sequences of similar length share a micro-batch, since
    every row is padded to the micro-batch's longest; the micro-batches are then shuffled.
    Otherwise (version 1) the sequences are shuffled and cut in order.
    """
    if micro_batch_size < 1:
        raise PackError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    if by_length:
        order = sorted(range(len(sizes)), key=lambda k: (-sizes[k], k))
        groups = [order[i : i + micro_batch_size] for i in range(0, len(order), micro_batch_size)]
        rng.shuffle(groups)
        return groups
    order = list(range(len(sizes)))
    rng.shuffle(order)
    return [order[i : i + micro_batch_size] for i in range(0, len(order), micro_batch_size)]


def plan_groups(
    lengths: Sequence[int],
    max_length: int,
    micro_batch_size: int,
    packing: bool,
    rng: random.Random,
    version: int = PLAN_VERSION,
) -> list[list[list[int]]]:
    """Micro-batches -> rows -> episode indices, per plan ``version`` (see :data:`PLAN_VERSIONS`)."""
    if version not in PLAN_VERSIONS:
        raise PackError(f"unknown data plan version {version} (known: {sorted(PLAN_VERSIONS)})")
    if packing:
        packer = pack if version >= 2 else pack_best_fit
        seqs = packer(lengths, max_length)
    else:
        _check(lengths, max_length)
        seqs = [[i] for i in range(len(lengths))]
    sizes = [sum(lengths[i] for i in s) for s in seqs]
    groups = group_micro_batches(sizes, micro_batch_size, rng, by_length=version >= 2)
    return [[seqs[k] for k in g] for g in groups]


def plan_efficiency(
    lengths: Sequence[int], micro_batches: Sequence[Sequence[Sequence[int]]], max_length: int
) -> dict[str, float]:
    """``fill`` and ``slots`` (see the module docstring) of a plan's micro-batches."""
    tokens = cells = rows = 0
    for mb in micro_batches:
        widths = [sum(lengths[i] for i in row) for row in mb]
        tokens += sum(widths)
        cells += len(widths) * max(widths)
        rows += len(widths)
    return {
        "fill": tokens / (rows * max_length) if rows else 0.0,
        "slots": tokens / cells if cells else 0.0,
        "sequences": rows,
        "micro_batches": len(micro_batches),
        "tokens": tokens,
    }


def min_sequences(lengths: Sequence[int], max_length: int) -> int:
    """A lower bound on the sequences any packing needs: all tokens, and one per episode
    longer than half the capacity (no two of those share a sequence)."""
    total = sum(lengths)
    over_half = sum(1 for n in lengths if 2 * n > max_length)
    return max(-(-total // max_length), over_half)
