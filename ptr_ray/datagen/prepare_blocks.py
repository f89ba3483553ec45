"""The preprocessing plan's per-block operators: pure functions over Arrow tables, no Ray.

:mod:`ptr_ray.datagen.prepare` runs them as Ray Data operators (and says how they fit
together); the tests also run them in one process. Each takes one block (or one hash partition)
and returns one, so none needs more memory than its block, except :func:`resolve_duplicates`,
whose input is the duplicate groups only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ptr_ray.config import BuildConfig
from ptr_ray.data.clean import Cleaner
from ptr_ray.data.decontaminate import NgramDecontaminator
from ptr_ray.data.minhash import MinHasher, UnionFind, band_keys, confirmed_pairs, runs
from ptr_ray.data.mix import is_sft
from ptr_ray.data.queries import read_source
from ptr_ray.records import record_id

ROW_BITS = 40  # order = source index << ROW_BITS | row index
BLOCK_ROWS = 4096  # rows per read block: the unit of parallel cleaning
KIND_ID, KIND_BAND = 0, 1

RAW_SCHEMA = pa.schema(
    [
        ("order", pa.int64()),
        ("source", pa.string()),
        ("where", pa.string()),
        ("query", pa.string()),
        ("answer", pa.string()),
        ("reason", pa.string()),  # a read rejection's reason
        ("detail", pa.string()),
        ("raw", pa.string()),
    ]
)
BASE_SCHEMA = pa.schema(
    [
        ("order", pa.int64()),
        ("source", pa.string()),
        ("where", pa.string()),
        ("query", pa.string()),  # cleaned when cleaning ran
        ("answer", pa.string()),
        ("id", pa.string()),
        ("stage", pa.string()),  # "read" | "clean" | None
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("raw", pa.string()),
        ("skip", pa.bool_()),
        ("contaminated", pa.string()),  # "exact" | "ngram" | None
        ("keys", pa.list_(pa.uint64())),  # [id key] + band keys (live rows; seeds: bands)
    ]
)
KEY_SCHEMA = pa.schema([("key", pa.uint64()), ("order", pa.int64()), ("kind", pa.int8())])
GROUP_SCHEMA = pa.schema([("kind", pa.int8()), ("members", pa.list_(pa.int64()))])
DECIDED_SCHEMA = pa.schema(
    [
        ("order", pa.int64()),
        ("bucket", pa.string()),  # "candidate" | "skip" | "reject"
        ("id", pa.string()),
        ("query", pa.string()),
        ("source", pa.string()),
        ("where", pa.string()),
        ("kind", pa.string()),  # "ptr" | "sft" (candidates)
        ("ref_answer", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("raw", pa.string()),
    ]
)
CANDIDATE_COLUMNS = ["order", "id", "query", "source", "kind", "ref_answer"]


@dataclass
class RowRules:
    """Everything a worker needs to judge one row alone; shipped once per worker (ray.put)."""

    cleaner: Cleaner
    done_ids: frozenset[str]
    hasher: MinHasher | None
    bands: int
    rows_per_band: int


def read_blocks(src_cfg: Any, index: int, seed: int) -> Iterator[pa.Table]:
    cols: dict[str, list[Any]] = {name: [] for name in RAW_SCHEMA.names}
    for n, row in enumerate(read_source(src_cfg, seed)):
        cols["order"].append((index << ROW_BITS) | n)
        cols["source"].append(row.source)
        cols["where"].append(row.where)
        cols["query"].append(row.query)
        cols["answer"].append(row.answer)
        cols["reason"].append(row.reason)
        cols["detail"].append(row.detail)
        cols["raw"].append(row.raw)
        if len(cols["order"]) >= BLOCK_ROWS:
            yield pa.table(cols, schema=RAW_SCHEMA)
            cols = {name: [] for name in RAW_SCHEMA.names}
    if cols["order"]:
        yield pa.table(cols, schema=RAW_SCHEMA)


def seed_blocks(queries: list[str]) -> Iterator[pa.Table]:
    """Raw blocks of queries an earlier run wrote: orders -len(queries)..-1, kept in order."""
    total = len(queries)
    for start in range(0, total, BLOCK_ROWS):
        part = queries[start : start + BLOCK_ROWS]
        n = len(part)
        yield pa.table(
            {
                "order": np.arange(start - total, start - total + n, dtype=np.int64),
                "source": [""] * n,
                "where": [""] * n,
                "query": part,
                "answer": [None] * n,
                "reason": [None] * n,
                "detail": [""] * n,
                "raw": [""] * n,
            },
            schema=RAW_SCHEMA,
        )


def clean_batch(rules: RowRules, index: NgramDecontaminator | None, table: pa.Table) -> pa.Table:
    """Clean, id, skip, contamination and LSH keys for each row of one raw block."""
    order = table.column("order").to_numpy()
    queries = table.column("query").to_pylist()
    reasons = table.column("reason").to_pylist()
    details = table.column("detail").to_pylist()
    n = len(queries)
    ids: list[str | None] = [None] * n
    stage: list[str | None] = [None] * n
    skip = [False] * n
    contaminated: list[str | None] = [None] * n
    live: list[int] = []
    to_clean = [i for i in range(n) if order[i] >= 0 and reasons[i] is None]
    cleaned = dict(zip(to_clean, rules.cleaner.many([queries[i] for i in to_clean]), strict=True))
    for i in range(n):
        if order[i] < 0:  # a written query: near-dedupe seed only
            live.append(i)
            continue
        if reasons[i] is not None:
            stage[i] = "read"
            continue
        res = cleaned[i]
        queries[i] = res.text or None
        ids[i] = record_id(res.text) if res.text else None
        if res.reason:
            stage[i], reasons[i] = "clean", res.reason
            details[i] = f"{res.tokens} tokens" if res.tokens else ""
            continue
        if ids[i] in rules.done_ids:
            skip[i] = True
            continue
        live.append(i)
        if index is not None:
            contaminated[i] = index.reason(queries[i])
    keys: list[list[int]] = [[] for _ in range(n)]
    if live:
        per_row = [[] if order[i] < 0 else [int(ids[i], 16)] for i in live]  # type: ignore[arg-type]
        if rules.hasher is not None:
            sigs = rules.hasher.signatures([queries[i] for i in live])
            bk = band_keys(sigs, rules.bands, rules.rows_per_band).tolist()
            per_row = [a + b for a, b in zip(per_row, bk, strict=True)]
        for i, k in zip(live, per_row, strict=True):
            keys[i] = k
    return pa.table(
        {
            "order": table.column("order"),
            "source": table.column("source"),
            "where": table.column("where"),
            "query": queries,
            "answer": table.column("answer"),
            "id": ids,
            "stage": stage,
            "reason": reasons,
            "detail": details,
            "raw": table.column("raw"),
            "skip": skip,
            "contaminated": contaminated,
            "keys": keys,
        },
        schema=BASE_SCHEMA,
    )


def explode_keys(table: pa.Table) -> pa.Table:
    """Ray Data map: one (key, order, kind) row per key of each row (the first key of a
    source row is its record id; seeds carry band keys only)."""
    keys = table.column("keys")
    lengths = pc.list_value_length(keys).fill_null(0).to_numpy(zero_copy_only=False)
    order: np.ndarray = np.repeat(table.column("order").to_numpy(), lengths)
    flat = pc.list_flatten(keys).to_numpy(zero_copy_only=False).astype(np.uint64)
    # position of each key inside its row's list: 0 = the record id (source rows only)
    starts: np.ndarray = np.repeat(np.cumsum(lengths) - lengths, lengths)
    pos = np.arange(flat.size) - starts
    kind = np.where((pos == 0) & (order >= 0), KIND_ID, KIND_BAND).astype(np.int8)
    return pa.table({"key": flat, "order": order, "kind": kind}, schema=KEY_SCHEMA)


def group_keys(table: pa.Table) -> pa.Table:
    """Ray Data map over one hash partition (every row of a key is in it): same-id groups and
    band buckets of two or more rows, members in read order."""
    key = table.column("key").to_numpy()
    order = table.column("order").to_numpy()
    kind = table.column("kind").to_numpy()
    idx = np.lexsort((order, key, kind))
    key, order, kind = key[idx], order[idx], kind[idx]
    out_kind: list[int] = []
    members: list[list[int]] = []
    split = int(np.searchsorted(kind, KIND_BAND))
    for k, lo, hi in ((KIND_ID, 0, split), (KIND_BAND, split, key.size)):
        starts, stops = runs(key[lo:hi])
        for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
            out_kind.append(k)
            members.append(order[lo + a : lo + b].tolist())
    return pa.table({"kind": out_kind, "members": members}, schema=GROUP_SCHEMA)


def resolve_duplicates(
    groups: list[tuple[int, list[int]]],
    signatures_of: Callable[[np.ndarray], dict[int, np.ndarray]],
    threshold: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(duplicate orders, near-duplicate orders), both sorted, from the key groups.

    ``signatures_of(orders)`` gives the MinHash signature of each listed row. Exact: all
    but the earliest row of a same-id group. Near: connected components of confirmed
    pairs among the remaining rows; all but the earliest of each, seeds (negative orders)
    never dropped.
    """
    dup: set[int] = set()
    for kind, members in groups:
        if kind == KIND_ID:
            dup.update(sorted(members)[1:])
    buckets: set[tuple[int, ...]] = set()
    if threshold is not None:
        for kind, members in groups:
            if kind == KIND_BAND:
                kept = tuple(sorted(m for m in members if m not in dup))
                if len(kept) > 1:
                    buckets.add(kept)
    near: list[int] = []
    if buckets:  # only filled when near-dedupe is on (a threshold is given)
        assert threshold is not None
        involved = np.unique(np.fromiter((m for b in buckets for m in b), dtype=np.int64))
        sigs = signatures_of(involved)
        uf = UnionFind()
        for bucket in buckets:
            stacked = np.stack([sigs[m] for m in bucket])
            for i, j in confirmed_pairs(stacked, threshold):
                uf.union(bucket[i], bucket[j])
        for comp in uf.components():
            near.extend(m for m in comp[1:] if m >= 0)
    return (
        np.array(sorted(dup), dtype=np.int64),
        np.array(sorted(near), dtype=np.int64),
    )


def signatures_from(
    tables: Iterable[pa.Table], orders: np.ndarray, hasher: MinHasher
) -> dict[int, np.ndarray]:
    """MinHash signatures of the rows ``orders`` names, found in base blocks read one by one."""
    out: dict[int, np.ndarray] = {}
    for table in tables:
        t = table.select(["order", "query"])
        mask = np.isin(t.column("order").to_numpy(), orders)
        if mask.any():
            picked = t.filter(pa.array(mask))
            sigs = hasher.signatures(picked.column("query").to_pylist())
            out.update(zip(picked.column("order").to_pylist(), sigs, strict=True))
    return out


def decide_batch(
    table: pa.Table,
    dup: np.ndarray,
    near: np.ndarray,
    sft_fraction: float,
    seed: int,
    ngram: int,
) -> pa.Table:
    """One bucket per source row of a base block, given the dedupe verdict."""
    table = table.filter(pc.greater_equal(table.column("order"), 0))
    order = table.column("order").to_numpy()
    is_dup = np.isin(order, dup)
    is_near = np.isin(order, near)
    ids = table.column("id").to_pylist()
    stages = table.column("stage").to_pylist()
    reasons = table.column("reason").to_pylist()
    details = table.column("detail").to_pylist()
    skips = table.column("skip").to_pylist()
    contam = table.column("contaminated").to_pylist()
    n = table.num_rows
    bucket: list[str] = ["reject"] * n
    kind: list[str | None] = [None] * n
    for i in range(n):
        if stages[i] is not None:
            continue
        if skips[i]:
            bucket[i] = "skip"
        elif is_dup[i]:
            stages[i], reasons[i], details[i] = "dedupe", "duplicate", ""
        elif is_near[i]:
            stages[i], reasons[i], details[i] = "dedupe", "near_duplicate", ""
        elif contam[i] is not None:
            stages[i], reasons[i] = "decontaminate", "contaminated"
            details[i] = (
                "is an eval question"
                if contam[i] == "exact"
                else f"shares a {ngram}-gram with an eval set"
            )
        else:
            bucket[i] = "candidate"
            kind[i] = "sft" if is_sft(ids[i], sft_fraction, seed) else "ptr"  # type: ignore[arg-type]
    return pa.table(
        {
            "order": table.column("order"),
            "bucket": bucket,
            "id": ids,
            "query": table.column("query"),
            "source": table.column("source"),
            "where": table.column("where"),
            "kind": kind,
            "ref_answer": table.column("answer"),
            "stage": stages,
            "reason": reasons,
            "detail": details,
            "raw": table.column("raw"),
        },
        schema=DECIDED_SCHEMA,
    )


def only_candidates(table: pa.Table) -> pa.Table:
    """Ray Data map: the candidate rows of a decided block (the generation stage's input)."""
    keep = pc.equal(table.column("bucket"), "candidate")
    return table.filter(keep).select(CANDIDATE_COLUMNS)


def for_driver(table: pa.Table) -> pa.Table:
    """Ray Data map: what the driver needs of a decided block: every rejection whole (column
    ``n`` = 1), and one row per (bucket, source) of the other rows with their count in ``n``.

    The counts are summed here, in the block's task, so what reaches the driver grows with
    the rejections only, not with every row read: the driver's memory then depends on how
    many rows a block rejects, not on the row count (the 1M-row benchmark)."""
    rejected = pc.equal(table.column("bucket"), "reject")
    heavy = ["id", "query", "where", "stage", "reason", "detail", "raw"]
    rej = table.filter(rejected).select(["bucket", "source", *heavy])
    rej = rej.append_column("n", pa.array(np.ones(rej.num_rows, dtype=np.int64)))
    rest = (
        table.filter(pc.invert(rejected))
        .select(["bucket", "source"])
        .group_by(["bucket", "source"], use_threads=False)
        .aggregate([([], "count_all")])
    )
    nulls = pa.nulls(rest.num_rows, pa.string())
    counts = pa.table(
        {
            "bucket": rest.column("bucket"),
            "source": rest.column("source"),
            **dict.fromkeys(heavy, nulls),
            "n": rest.column("count_all").cast(pa.int64()),
        }
    )
    return pa.concat_tables([rej.cast(counts.schema), counts])


def build_decontaminator(cfg: BuildConfig) -> NgramDecontaminator | None:
    if not cfg.decontaminate.enabled:
        return None
    from ptr_ray.data.benchmarks import decontamination_texts

    texts = decontamination_texts(cfg.decontaminate.tasks)
    return NgramDecontaminator(
        texts, n=cfg.decontaminate.ngram, min_words=cfg.decontaminate.min_words
    )
