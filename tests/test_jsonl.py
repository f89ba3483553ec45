"""ptr_ray.jsonl: what every JSONL reader treats as a bad line, and what it reads anyway."""

from __future__ import annotations

import pytest

from ptr_ray.errors import PtrRayValueError
from ptr_ray.jsonl import MALFORMED_JSON, NOT_UTF8, BadLine, iter_lines, parse_line


def test_a_byte_order_mark_is_dropped_on_any_line():
    assert parse_line(b'\xef\xbb\xbf{"a": 1}\n') == {"a": 1}
    assert parse_line(b'{"a": 2}\r\n') == {"a": 2}


@pytest.mark.parametrize(
    ("raw", "reason", "detail"),
    [
        (b"[" * 100_000, MALFORMED_JSON, "nested too deeply"),
        (b'{"a": ' + b"1" * 5000 + b"}", MALFORMED_JSON, "digits"),
        (b'{"a": 1', MALFORMED_JSON, "column"),
        (b'{"a": "caf\xe9"}', NOT_UTF8, "0xe9"),
        ('{"a": 1}'.encode("utf-16"), NOT_UTF8, "UTF-16"),
    ],
    ids=["deep", "huge-int", "truncated", "latin-1", "utf-16"],
)
def test_every_bad_line_is_a_bad_line_and_nothing_else(raw, reason, detail):
    with pytest.raises(BadLine) as e:
        parse_line(raw)
    assert e.value.reason == reason and detail in e.value.detail
    assert isinstance(e.value, PtrRayValueError) and "\n" not in str(e.value)
    assert e.value.text  # kept for the rejects log


def test_iter_lines_skips_blank_lines_but_keeps_their_numbers(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"a": 1}\n\n  \n{"a": 2}')  # no newline at the end
    assert [(n, parse_line(raw)) for n, raw in iter_lines(p)] == [(1, {"a": 1}), (4, {"a": 2})]
