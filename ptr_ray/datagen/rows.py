"""The row that flows through the Ray Data pipeline, with one explicit Arrow schema.

Every stage takes a batch of these rows and returns the same columns, filled in further. An
explicit schema keeps blocks uniform (an all-empty ``thoughts`` batch would otherwise infer
``list<null>`` and clash with ``list<string>``). A row that a stage rejects keeps flowing with
``reject`` set, so the writer sees and logs every query: nothing leaves the pipeline unseen.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("query", pa.string()),
        ("source", pa.string()),
        ("kind", pa.string()),
        ("ref_answer", pa.string()),
        ("thoughts", pa.list_(pa.string())),
        ("weak_tokens", pa.list_(pa.int64())),  # generated tokens per thought round
        ("weak_prompt_tokens", pa.list_(pa.int64())),
        ("weak_cached_tokens", pa.list_(pa.int64())),
        ("weak_finish", pa.list_(pa.string())),
        ("answer", pa.string()),
        ("strong_tokens", pa.int64()),
        ("strong_prompt_tokens", pa.int64()),
        ("strong_cached_tokens", pa.int64()),
        ("strong_finish", pa.string()),
        ("icl_used", pa.int64()),
        ("consistency", pa.float64()),
        ("judge_tokens", pa.int64()),
        ("reject", pa.string()),
        ("reject_detail", pa.string()),
        ("t_weak", pa.float64()),  # this row's share of actor busy time, per stage
        ("t_strong", pa.float64()),
        ("t_consistency", pa.float64()),
    ]
)

_LISTS = {"thoughts", "weak_tokens", "weak_prompt_tokens", "weak_cached_tokens", "weak_finish"}
_ZERO = {
    "strong_tokens",
    "strong_prompt_tokens",
    "strong_cached_tokens",
    "icl_used",
    "judge_tokens",
    "t_weak",
    "t_strong",
    "t_consistency",
}


def new_row(**fields: Any) -> dict[str, Any]:
    """A row with every column present (lists empty, counters zero, the rest None)."""
    row: dict[str, Any] = {}
    for name in SCHEMA.names:
        row[name] = [] if name in _LISTS else 0 if name in _ZERO else None
    unknown = set(fields) - set(row)
    if unknown:
        raise KeyError(f"unknown row columns: {sorted(unknown)}")
    row.update(fields)
    return row


def to_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def share_time(rows: list[dict[str, Any]], column: str, seconds: float) -> None:
    """Spread a batch's wall time over its rows, so summing a column gives actor busy time."""
    if rows:
        each = seconds / len(rows)
        for r in rows:
            r[column] = float(r[column] or 0.0) + each


def from_candidates(table: pa.Table) -> pa.Table:
    """Ray Data map: prepared candidates (id, query, source, kind, ref_answer, ...) as pipeline
    rows with every other column at its starting value (:func:`new_row`'s defaults)."""
    n = table.num_rows
    cols: dict[str, Any] = {}
    for f in SCHEMA:
        if f.name in ("id", "query", "source", "kind", "ref_answer"):
            cols[f.name] = table.column(f.name).cast(f.type)
        elif f.name in _LISTS:
            cols[f.name] = pa.array([[]] * n, f.type)
        elif f.name in _ZERO:
            cols[f.name] = pa.array([0] * n, f.type)
        else:
            cols[f.name] = pa.nulls(n, f.type)
    return pa.table(cols, schema=SCHEMA)
