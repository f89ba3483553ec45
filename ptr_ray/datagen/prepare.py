"""Stages 1-3 as a Ray Data plan: read, clean, dedupe, decontaminate, route to PTR or SFT.

Every row read ends in exactly one bucket: a candidate, a skip (its id was written by an
earlier run) or a counted rejection with its stage and reason. The driver holds no per-row
state: rows live in Ray's object store, rejections stream back to the driver only to be
written to ``rejects.jsonl`` and counted (the other rows come back as one count per block,
bucket and source), and the candidates stay a Ray dataset that the generation stage consumes.

The plan (``order`` = (source index, row index), the read order; written queries of an
earlier run come first with negative orders)::

    read (one task per source) ─► prepare_rows (clean, id, skip, MinHash band keys,
    n-gram check against the broadcast index) ─► materialize: *base*
    base ─► explode keys (record id + one key per LSH band) ─► hash-repartition by key
         ─► per partition: same-id groups and band buckets ─► materialize: *groups*
    groups + base ─► one task: exact duplicates, confirmed pairs, union-find ─► *verdict*
    base + verdict ─► decide (one bucket per row) ─► materialize: *decided*
    decided ─► per block: rejects + counts ─► driver;  decided ─► candidates (lazy)

**Exact duplicates**: rows grouped by record id (a hash partition by id); the earliest row of
a group is kept, every later one is a ``duplicate``.

**Near duplicates**: rows sharing an LSH band key are candidate pairs; each pair is confirmed
by the estimated Jaccard similarity of the two MinHash signatures (>= ``dedupe.threshold``),
so a banding collision alone never drops a query. The confirmed pairs form a graph; in each
connected component the earliest row is kept and the others are ``near_duplicate``. Queries
written by an earlier run join the graph as kept rows (they are the earliest), so a resumed
run never adds a near-copy of a written row. Only exact duplicates' *later* rows stay out of
the graph (their signature is their first row's). Compared with the old sequential rule (a
row is dropped when it is similar to an earlier *kept* row), components differ only for
chains: with A~B and B~C but A!~C, the sequential rule keeps A and C; components keep A only.

Precedence matches the sequential pass: read, clean, already written, duplicate, near
duplicate, contaminated; a contaminated row still counts as kept for near-dedupe (its
near-copies are ``near_duplicate``, as before).

Memory: the union-find task holds the groups and signatures of rows that share a key with
another row (duplicates and their firsts), never all rows; the driver holds a list of block
references and the counts. A small build (under :data:`SHUFFLE_FROM_KEY_ROWS` keys, ~20k
rows) skips the shuffle: the union-find task groups the keys itself, in well under a second.

The per-block operators are pure functions in :mod:`ptr_ray.datagen.prepare_blocks`; this
module wires them into Ray Data and holds the driver's side.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ptr_ray.config import BuildConfig
from ptr_ray.data.clean import Cleaner
from ptr_ray.data.decontaminate import NgramDecontaminator
from ptr_ray.data.minhash import MinHasher, lsh_params
from ptr_ray.data.queries import read_source
from ptr_ray.datagen.output import Existing, RejectLog
from ptr_ray.datagen.prepare_blocks import (
    RowRules,
    build_decontaminator,
    clean_batch,
    decide_batch,
    explode_keys,
    for_driver,
    group_keys,
    only_candidates,
    read_blocks,
    resolve_duplicates,
    seed_blocks,
    signatures_from,
)
from ptr_ray.errors import PtrRayError

log = logging.getLogger(__name__)

KEY_ROWS_PER_PARTITION = 1_000_000  # exploded (key, order) rows per shuffle partition
# Below this many (key, order) rows (~20k rows at 9 bands) one task groups the keys: starting a
# hash shuffle costs seconds, grouping 200k keys in numpy well under one.
SHUFFLE_FROM_KEY_ROWS = 200_000
REJECTS_PER_SLICE = 4096  # rejections turned into Python objects at a time, in the driver


@dataclass
class Prepared:
    """The preprocessing pass's result: candidates as a Ray dataset plus the counts.

    ``candidates`` is lazy over materialized blocks (columns :data:`CANDIDATE_COLUMNS`), or
    None when there are none. ``candidate_sources`` counts candidates per source label.
    """

    candidates: Any = None
    num_candidates: int = 0
    candidate_sources: dict[str, int] = field(default_factory=dict)
    rows_in: int = 0
    skipped_existing: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    decontamination_ngrams: int = 0


_shared: dict[str, Any] = {}


def _get(ref: Any) -> Any:
    """``ray.get`` once per worker process (a big index is deserialized once, not per batch)."""
    import ray

    key = ref.hex()
    if key not in _shared:
        if len(_shared) >= 8:  # a long-lived worker serves later builds: keep a few only
            _shared.clear()
        _shared[key] = ray.get(ref)
    return _shared[key]


class _Ref:
    """Holds an ObjectRef inside a task argument, so Ray does not resolve it per call."""

    def __init__(self, ref: Any) -> None:
        self.ref = ref


def _seed_read(holder: _Ref) -> Iterator[pa.Table]:
    import ray

    yield from seed_blocks(ray.get(holder.ref))


def _datasource(sources: list[Any], seed: int, seeds: _Ref | None, num_seeds: int):
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class QuerySources(Datasource):
        """One read task per configured source (a source is a sequential reader), plus one
        for the queries an earlier run wrote (near-dedupe seeds)."""

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, **_: Any) -> list[ReadTask]:
            def meta(rows: int | None) -> BlockMetadata:
                return BlockMetadata(
                    num_rows=rows, size_bytes=None, input_files=None, exec_stats=None
                )

            tasks = []
            if seeds is not None:
                tasks.append(ReadTask(lambda: _seed_read(seeds), meta(num_seeds)))
            for i, src in enumerate(sources):
                tasks.append(ReadTask(lambda src=src, i=i: read_blocks(src, i, seed), meta(None)))
            return tasks

    return QuerySources()


def prepare_rows(table: pa.Table, rules: _Ref, index: _Ref | None) -> pa.Table:
    """Ray Data map: a raw block -> a base block (see :func:`clean_batch`)."""
    return clean_batch(_get(rules.ref), _get(index.ref) if index else None, table)


def _resolve_task(
    group_refs: list[Any] | None,
    base_refs: list[Any],
    hasher: MinHasher | None,
    threshold: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The one Ray task of the plan that sees several blocks: its memory follows the
    duplicate groups, not the row count (base blocks are read one at a time, two columns).
    ``group_refs`` None: a small build, whose keys this task groups itself."""
    import ray

    if group_refs is None:
        keys = [explode_keys(ray.get(ref)) for ref in base_refs]
        tables = [group_keys(pa.concat_tables(keys))] if keys else []
    else:
        tables = [ray.get(ref) for ref in group_refs]
    groups: list[tuple[int, list[int]]] = []
    for t in tables:
        groups.extend(
            zip(t.column("kind").to_pylist(), t.column("members").to_pylist(), strict=True)
        )

    def signatures_of(orders: np.ndarray) -> dict[int, np.ndarray]:
        assert hasher is not None
        return signatures_from((ray.get(ref) for ref in base_refs), orders, hasher)

    return resolve_duplicates(groups, signatures_of, threshold)


def decide(table: pa.Table, verdict: _Ref, sft_fraction: float, seed: int, ngram: int) -> pa.Table:
    """Ray Data map: a base block -> one bucket per source row (seeds leave here)."""
    dup, near = _get(verdict.ref)
    return decide_batch(table, dup, near, sft_fraction, seed, ngram)


def _index_task(cfg: BuildConfig) -> tuple[NgramDecontaminator | None, tuple[int, float]]:
    """The decontamination index, and (its n-grams, seconds to build it)."""
    t0 = time.perf_counter()
    d = build_decontaminator(cfg)
    return d, (len(d) if d is not None else 0, time.perf_counter() - t0)


def check_sources(cfg: BuildConfig) -> None:
    """Open every file source and read its first row here, so a missing or unreadable source
    is a one-line error before Ray starts (generated sources have nothing to open)."""
    for src in cfg.sources:
        if src.kind != "synthetic":
            next(iter(read_source(src, cfg.seed)), None)


def _own_error(e: BaseException) -> BaseException | None:
    """A ptr-ray error raised inside a Ray task (a missing source file...), to re-raise as is."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        inner = getattr(cur, "cause", None)  # a RayTaskError's original exception
        if isinstance(inner, BaseException):
            cur = inner
            continue
        if isinstance(cur, PtrRayError):
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


def prepare_candidates(
    cfg: BuildConfig,
    count_tokens: Callable[[str], int],
    existing: Existing,
    rejects: RejectLog,
) -> Prepared:
    """Run the plan of the module docstring on the connected Ray instance."""
    try:
        return _prepare(cfg, count_tokens, existing, rejects)
    except Exception as e:
        own = _own_error(e)
        if own is not None and own is not e:
            raise own from None
        raise


def _prepare(
    cfg: BuildConfig,
    count_tokens: Callable[[str], int],
    existing: Existing,
    rejects: RejectLog,
) -> Prepared:
    import ray

    out = Prepared()
    seconds = out.seconds
    index_ref = info_ref = None
    if cfg.decontaminate.enabled:
        # built in a task, while the sources are read: the eval sets never load in the driver
        index_ref, info_ref = ray.remote(_index_task).options(num_returns=2).remote(cfg)
    near = cfg.dedupe.near
    bands, rows_per_band = lsh_params(cfg.dedupe.threshold, cfg.dedupe.num_perm) if near else (0, 0)
    hasher = MinHasher(cfg.dedupe.num_perm, cfg.seed + 1, cfg.dedupe.shingle_size) if near else None
    cleaner = Cleaner(
        count_tokens,
        cfg.clean.min_tokens,
        cfg.clean.max_tokens,
        cfg.clean.strip_urls,
        cfg.clean.strip_images,
    )
    rules_ref = ray.put(
        RowRules(cleaner, frozenset(existing.done_ids), hasher, bands, rows_per_band)
    )
    seeds = _Ref(ray.put(list(existing.queries))) if near and existing.queries else None

    t1 = time.perf_counter()
    raw = ray.data.read_datasource(
        _datasource(cfg.sources, cfg.seed, seeds, len(existing.queries) if seeds else 0),
        # one block stream per read task: Ray would otherwise split each read's output into
        # tiny blocks to reach its default parallelism (~200 tasks for a few hundred rows)
        override_num_blocks=max(1, len(cfg.sources) + (1 if seeds else 0)),
    )
    base = raw.map_batches(
        prepare_rows,
        fn_kwargs={
            "rules": _Ref(rules_ref),
            "index": _Ref(index_ref) if index_ref is not None else None,
        },
        batch_size=None,
        batch_format="pyarrow",
    ).materialize()
    seconds["read_clean"] = time.perf_counter() - t1
    if info_ref is not None:
        out.decontamination_ngrams, seconds["decontaminate_index"] = ray.get(info_ref)

    t2 = time.perf_counter()
    key_rows = base.count() * (1 + bands)
    if key_rows >= SHUFFLE_FROM_KEY_ROWS:
        partitions = max(1, math.ceil(key_rows / KEY_ROWS_PER_PARTITION))
        groups = (
            base.map_batches(explode_keys, batch_size=None, batch_format="pyarrow")
            .repartition(partitions, keys=["key"])
            .map_batches(group_keys, batch_size=None, batch_format="pyarrow")
            .materialize()
        )
        group_refs = groups.to_arrow_refs()
    else:  # a small build: the resolving task groups the keys itself (no shuffle to start)
        groups, group_refs = None, None
    verdict = ray.remote(_resolve_task).remote(
        group_refs, base.to_arrow_refs(), hasher, cfg.dedupe.threshold if near else None
    )
    ray.wait([verdict])
    del groups
    seconds["dedupe"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    decided = base.map_batches(
        decide,
        fn_kwargs={
            "verdict": _Ref(verdict),
            "sft_fraction": cfg.sft.fraction,
            "seed": cfg.seed,
            "ngram": cfg.decontaminate.ngram,
        },
        batch_size=None,
        batch_format="pyarrow",
    ).materialize()
    del base
    for batch in decided.map_batches(
        for_driver, batch_size=None, batch_format="pyarrow"
    ).iter_batches(batch_size=None, batch_format="pyarrow"):
        _account(batch, out, rejects)
    rejects.flush()
    if out.num_candidates:
        out.candidates = decided.map_batches(
            only_candidates, batch_size=None, batch_format="pyarrow"
        )
    seconds["route"] = time.perf_counter() - t3
    log.info(
        "prepared %d queries from %d rows (%d already written, %d dropped)",
        out.num_candidates,
        out.rows_in,
        out.skipped_existing,
        rejects.total,
    )
    return out


def _account(batch: pa.Table, out: Prepared, rejects: RejectLog) -> None:
    """Count one block's rows (see ``for_driver``) and write its rejections."""
    bucket = batch.column("bucket")
    n = batch.column("n")
    out.rows_in += pc.sum(n).as_py() or 0
    out.skipped_existing += pc.sum(pc.filter(n, pc.equal(bucket, "skip"))).as_py() or 0
    for row in batch.filter(pc.equal(bucket, "candidate")).select(["source", "n"]).to_pylist():
        src = row["source"] or ""
        out.candidate_sources[src] = out.candidate_sources.get(src, 0) + row["n"]
        out.num_candidates += row["n"]
    # a few thousand rows as Python objects at a time, whatever the block's size
    for part in batch.filter(pc.equal(bucket, "reject")).to_batches(REJECTS_PER_SLICE):
        for row in part.to_pylist():
            rejects.add(
                row["stage"],
                row["reason"] or "unknown",
                source=row["source"] or "",
                where=row["where"] or "",
                id=row["id"],
                query=row["query"],
                detail=row["detail"] or "",
                raw=row["raw"] or "",
                remember=False,  # each row read is rejected at most once per run
            )
