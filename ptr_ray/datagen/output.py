"""The dataset folder: sharded record files, the rejects log, meta.json, stats.json.

Layout::

    OUT/meta.json            format version, models, runs
    OUT/stats.json           the latest run's counts and timings (+ earlier runs)
    OUT/config.yaml          the resolved config of the latest run
    OUT/rejects.jsonl        one line per dropped row: stage, reason, detail, where
    OUT/data/part-RUN-00000.jsonl (or .parquet)

Resuming: the ids in the record files, plus the ids rejected by a *final* decision (a row that
was generated and then filtered), are done; a re-run skips them. Rows rejected for a
transient reason (``generation_error``) are retried. JSONL shards are appended and flushed
per batch, so a killed run keeps what it wrote; a torn last line is cut off on the next run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ptr_ray.fsutil import write_json_atomic
from ptr_ray.jsonl import iter_lines
from ptr_ray.records import (
    FORMAT_VERSION,
    META_FILE,
    STATS_FILE,
    check_format_version,
    iter_file,
    object_line,
)

log = logging.getLogger(__name__)

REJECTS_FILE = "rejects.jsonl"
DATA_DIR = "data"
RETRYABLE = frozenset({"generation_error"})


@dataclass
class Existing:
    """What earlier runs left in the output folder."""

    record_ids: set[str] = field(default_factory=set)
    queries: list[str] = field(default_factory=list)
    final_reject_ids: set[str] = field(default_factory=set)
    reject_keys: set[str] = field(default_factory=set)
    repaired: list[str] = field(default_factory=list)

    @property
    def done_ids(self) -> set[str]:
        return self.record_ids | self.final_reject_ids


def reject_key(entry: dict[str, Any]) -> str:
    """Identity of a rejection: the query id when known, else where the row was read."""
    return (
        f"{entry.get('reason')}|{entry.get('id') or ''}|{entry.get('source')}|{entry.get('where')}"
    )


def _repair_jsonl(path: Path) -> bool:
    """Cut a torn last line (a run killed mid-write); True if the file was changed."""
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return False
        cut = data.rfind(b"\n") + 1
        f.truncate(cut)
        return True


_FIX_REJECT = "fix or delete that line (a deleted rejection's row is only tried again)"


def _reject_entry(path: Path, n: int, raw: bytes) -> dict[str, Any]:
    """One line of rejects.jsonl; a line that is not a JSON object is a DatasetError naming
    ``rejects.jsonl:<line>`` (only a torn *last* line is a killed run's, cut off before)."""
    return object_line(path, n, raw, "a rejection", _FIX_REJECT)


def scan(folder: Path) -> Existing:
    """Read an output folder left by earlier runs (nothing there: an empty result)."""
    ex = Existing()
    if not folder.exists():
        return ex
    if (folder / META_FILE).is_file():
        check_format_version(folder)
    data = folder / DATA_DIR
    for path in sorted(data.glob("*.jsonl")) if data.is_dir() else []:
        if _repair_jsonl(path):
            ex.repaired.append(path.name)
            log.warning("%s ended in a torn line (killed run?); cut it off", path)
        for row in iter_file(path):  # DatasetError names file and line
            ex.record_ids.add(row["id"])
            ex.queries.append(row["query"])
    for path in sorted(data.glob("*.parquet")) if data.is_dir() else []:
        import pyarrow.parquet as pq

        t = pq.read_table(path, columns=["id", "query"])
        ex.record_ids.update(t.column("id").to_pylist())
        ex.queries.extend(t.column("query").to_pylist())
    rej = folder / REJECTS_FILE
    if rej.is_file():
        if _repair_jsonl(rej):
            ex.repaired.append(rej.name)
            log.warning("%s ended in a torn line (killed run?); cut it off", rej)
        for n, raw in iter_lines(rej):
            entry = _reject_entry(rej, n, raw)
            ex.reject_keys.add(reject_key(entry))
            if (
                entry.get("stage") == "generate"
                and entry.get("id")
                and entry.get("reason") not in RETRYABLE
            ):
                ex.final_reject_ids.add(entry["id"])
    return ex


class RejectLog:
    """Counts every dropped row by reason; appends each one not logged before to rejects.jsonl."""

    def __init__(self, folder: Path, run_id: str, known: set[str]) -> None:
        self.path = folder / REJECTS_FILE
        self.run_id = run_id
        self.known = set(known)
        self.counts: dict[str, int] = {}
        self.by_stage: dict[str, dict[str, int]] = {}
        self._f = open(self.path, "a", encoding="utf-8")

    def add(
        self,
        stage: str,
        reason: str,
        *,
        source: str = "",
        where: str = "",
        id: str | None = None,
        query: str | None = None,
        detail: str = "",
        raw: str = "",
        remember: bool = True,
        **extra: Any,
    ) -> None:
        """Count the rejection and log it unless an earlier run (or, with ``remember``, this
        one) logged it. ``remember=False`` is for stages that see each input row once per run
        (preprocessing): their keys cannot repeat within the run, and keeping them would make
        the driver's memory grow with the rows read."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        st = self.by_stage.setdefault(stage, {})
        st[reason] = st.get(reason, 0) + 1
        entry = {
            "stage": stage,
            "reason": reason,
            "detail": detail,
            "source": source,
            "where": where,
            "id": id,
            "query": query,
            "raw": raw or None,
            "run": self.run_id,
            **extra,
        }
        key = reject_key(entry)
        if key in self.known:
            return  # logged by an earlier run already; still counted for this run's stats
        if remember:
            self.known.add(key)
        self._f.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class ShardWriter:
    """Writes records into ``data/part-RUN-NNNNN.{jsonl,parquet}``, ``rows_per_shard`` each.

    JSONL rows are appended and flushed per batch (fsync'd on shard close); Parquet shards are
    buffered and written to a temporary name, then renamed, so a file is whole or absent.
    """

    def __init__(self, folder: Path, run_id: str, fmt: str, rows_per_shard: int) -> None:
        self.dir = folder / DATA_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run_id, self.fmt, self.rows_per_shard = run_id, fmt, rows_per_shard
        self.shard = 0
        self.in_shard = 0
        self.rows = 0
        self.files: list[str] = []
        self._f: TextIO | None = None
        self._buf: list[dict[str, Any]] = []

    def _path(self) -> Path:
        return self.dir / f"part-{self.run_id}-{self.shard:05d}.{self.fmt}"

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        for rec in records:
            if self.fmt == "jsonl":
                if self._f is None:
                    p = self._path()
                    self._f = open(p, "a", encoding="utf-8")
                    self.files.append(p.name)
                self._f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            else:
                self._buf.append(rec)
            self.in_shard += 1
            self.rows += 1
            if self.in_shard >= self.rows_per_shard:
                self._close_shard()
        if self._f is not None:
            self._f.flush()

    def _close_shard(self) -> None:
        if self.fmt == "jsonl" and self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None
        elif self._buf:
            import pyarrow as pa
            import pyarrow.parquet as pq

            p = self._path()
            table = pa.Table.from_pylist(self._buf)
            tmp = p.with_name("." + p.name + ".tmp")
            pq.write_table(table, tmp)
            os.replace(tmp, p)
            self.files.append(p.name)
            self._buf = []
        if self.in_shard:
            self.shard += 1
        self.in_shard = 0

    def close(self) -> None:
        self._close_shard()


def update_meta(folder: Path, run_id: str, info: dict[str, Any]) -> None:
    path = folder / META_FILE
    meta: dict[str, Any] = (
        json.loads(path.read_text())
        if path.is_file()
        else {
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "runs": [],
        }
    )
    meta["format_version"] = FORMAT_VERSION
    meta.update({k: v for k, v in info.items() if k != "run"})
    meta["runs"] = [*meta.get("runs", []), {"run_id": run_id, **info.get("run", {})}]
    meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json_atomic(path, meta)


def write_stats(folder: Path, stats: dict[str, Any]) -> None:
    """Latest run at the top level; earlier runs' stats kept under ``previous_runs``."""
    path = folder / STATS_FILE
    previous: list[dict[str, Any]] = []
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            previous = old.pop("previous_runs", [])
            if old.get("run_id") and old.get("run_id") != stats.get("run_id"):
                previous.append(old)
        except json.JSONDecodeError:
            log.warning("%s is not valid JSON; starting its history afresh", path)
    write_json_atomic(path, {**stats, "previous_runs": previous})
