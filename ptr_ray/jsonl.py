"""How ptr-ray reads JSON Lines input: one line at a time, one bad line costs only that line.

Every reader of user-supplied ``.jsonl`` files (query sources, dataset shards, custom eval
tasks) goes through :func:`iter_lines` and :func:`parse_line`, so they agree on what a
malformed line is:

- lines are read as bytes and decoded as UTF-8 one by one, so a stray Latin-1 byte is a bad
  *line* (the caller knows which), never a ``UnicodeDecodeError`` that names no file;
- a UTF-8 byte-order mark at the start of a line is dropped (``utf-8-sig``): editors on Windows
  write one before row 1, and ``cat a.jsonl b.jsonl`` can put one in the middle;
- anything ``json.loads`` refuses is a bad line, including what it refuses with something other
  than ``JSONDecodeError``: a ``RecursionError`` for deeply nested input (a line of 100,000
  ``[``) and a ``ValueError`` for an integer over Python's digit limit.

A caller decides what a bad line means: the build counts it as a rejected row, the dataset
reader stops with a one-line error naming file and line (see docs/design.md, "The dataset
record").
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ptr_ray.errors import PtrRayValueError

__all__ = ["MALFORMED_JSON", "NOT_UTF8", "BadLine", "iter_lines", "parse_line"]

NOT_UTF8 = "not_utf8"
MALFORMED_JSON = "malformed_json"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class BadLine(PtrRayValueError):
    """One line that is not a JSON value; ``reason`` is ``not_utf8`` or ``malformed_json``."""

    def __init__(self, reason: str, detail: str, text: str) -> None:
        super().__init__(
            f"{'not valid UTF-8' if reason == NOT_UTF8 else 'not valid JSON'} ({detail})"
        )
        self.reason = reason
        self.detail = detail
        self.text = text  # the line as text (undecodable bytes replaced), for reject logs


def iter_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """``(line number, raw bytes)`` of each non-blank line; numbering counts blank lines too."""
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                yield n, line


def parse_line(raw: bytes) -> Any:
    """The JSON value of one line; :class:`BadLine` (never another exception) if there is none."""
    if raw.startswith(_UTF16_BOMS):
        text = raw.decode("utf-8", "replace")
        raise BadLine(NOT_UTF8, "UTF-16 byte-order mark; save the file as UTF-8", text)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        text = raw.decode("utf-8", "replace")
        bad = bytes(e.object[e.start : e.start + 1]).hex()
        raise BadLine(NOT_UTF8, f"byte 0x{bad} at offset {e.start} ({e.reason})", text) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadLine(MALFORMED_JSON, f"{e.msg} at column {e.colno}", text) from None
    except RecursionError:
        raise BadLine(MALFORMED_JSON, "nested too deeply", text) from None
    except ValueError as e:  # e.g. an integer longer than sys.get_int_max_str_digits()
        raise BadLine(MALFORMED_JSON, str(e).splitlines()[0], text) from None
