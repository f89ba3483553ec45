"""THE dataset record: the construction stage writes it, training reads it.

One JSON object per line (``*.jsonl``) or Parquet with the same columns, in a dataset folder
beside ``stats.json`` and ``meta.json`` (which holds :data:`FORMAT_VERSION`).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ptr_ray.config.base import one_line_error
from ptr_ray.errors import PtrRayValueError
from ptr_ray.jsonl import BadLine, iter_lines, parse_line

FORMAT_VERSION = 1
META_FILE = "meta.json"
STATS_FILE = "stats.json"


class DatasetError(PtrRayValueError):
    """A dataset folder or file that training cannot use; the message names file and problem."""


def normalize_query(text: str) -> str:
    """Normalization behind ids and exact dedupe: NFKC, case-folded, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", text).strip()


def record_id(query: str) -> str:
    """Stable id of a query: the same question gets the same id in every run and on every node."""
    return hashlib.sha256(normalize_query(query).encode("utf-8")).hexdigest()[:16]


class Record(BaseModel):
    """One training example: a query, the weak thoughts, the strong answer."""

    model_config = ConfigDict(extra="allow")

    id: str
    query: str = Field(min_length=1)
    thoughts: list[str] = Field(default_factory=list)
    answer: str = Field(min_length=1)
    kind: Literal["ptr", "sft"] = "ptr"
    source: str = ""
    weak_model: str | None = None
    strong_model: str | None = None
    consistency: float | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("answer", "query")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("is blank")
        return v


REQUIRED_COLUMNS = ("id", "query", "thoughts", "answer", "kind")


def data_files(folder: str | Path) -> list[Path]:
    """The record files of a dataset folder (rejects and stats excluded), in a stable order."""
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix in (".jsonl", ".parquet")
        and not p.name.startswith(("rejects", "."))
    )
    if not files:
        raise DatasetError(f"dataset folder {root} holds no .jsonl or .parquet record files")
    return files


def check_format_version(folder: str | Path) -> None:
    meta = Path(folder) / META_FILE
    if meta.is_file():
        try:
            data = json.loads(meta.read_bytes().decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise DatasetError(
                f"{meta}: not a readable JSON file ({type(e).__name__}); "
                "restore it or rebuild the dataset"
            ) from None
        version = data.get("format_version") if isinstance(data, dict) else None
        if version != FORMAT_VERSION:
            raise DatasetError(
                f"{meta}: dataset format version {version}, this ptr-ray reads version {FORMAT_VERSION}"
            )


def iter_file(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of one record file; DatasetError names the file (and line) of the first bad one.

    JSONL lines go through :mod:`ptr_ray.jsonl`: a byte-order mark is fine, while non-UTF-8
    bytes or JSON nested too deeply to parse are a bad row like any other malformed line.
    """
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DatasetError(f"{path}: not a readable Parquet file ({first})") from None
        missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
        if missing:
            raise DatasetError(f"{path}: missing columns {missing}")
        yield from table.to_pylist()
        return
    for n, raw in iter_lines(path):
        yield object_line(path, n, raw, "a record")


def object_line(path: Path, n: int, raw: bytes, what: str, hint: str = "") -> dict[str, Any]:
    """Line ``n`` of a JSONL file in a dataset folder, which must be a JSON object; anything
    else is a DatasetError naming ``path:n`` (``hint`` says what to do about it)."""
    suffix = f"; {hint}" if hint else ""
    try:
        row = parse_line(raw)
    except BadLine as e:
        raise DatasetError(f"{path}:{n}: {e}{suffix}") from None
    if not isinstance(row, dict):
        raise DatasetError(f"{path}:{n}: {what} must be a JSON object{suffix}")
    return row


def read_records(folder: str | Path) -> list[Record]:
    """Every record of a dataset folder, validated; DatasetError names the first bad file/row."""
    check_format_version(folder)
    out: list[Record] = []
    for path in data_files(folder):
        for n, row in enumerate(iter_file(path), 1):
            missing = [c for c in ("query", "answer") if c not in row]
            if missing:
                raise DatasetError(f"{path}: row {n} has no {', '.join(missing)} field")
            try:
                out.append(Record.model_validate(row))
            except ValidationError as e:
                raise DatasetError(f"{path}: row {n}: {one_line_error(e, noun='field')}") from None
    if not out:
        raise DatasetError(f"dataset folder {folder} has no records")
    return out
