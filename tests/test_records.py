"""The dataset folder reader (ptr_ray.records): a bad shard is one DatasetError naming file and
line, whatever is wrong with it; a byte-order mark is not wrong."""

from __future__ import annotations

import json

import pytest

from ptr_ray.errors import PtrRayValueError
from ptr_ray.records import DatasetError, iter_file, read_records

ROW = {"id": "1", "query": "What is 2+2?", "thoughts": ["5"], "answer": "4"}


def _shard(tmp_path, content: bytes, name: str = "part-0.jsonl"):
    ds = tmp_path / "ds"
    (ds / "data").mkdir(parents=True, exist_ok=True)
    (ds / "data" / name).write_bytes(content)
    return ds


def test_dataset_error_is_a_ptr_ray_value_error():
    assert issubclass(DatasetError, PtrRayValueError) and issubclass(DatasetError, ValueError)


def test_bom_on_row_one_is_fine(tmp_path):
    ds = _shard(tmp_path, b"\xef\xbb\xbf" + json.dumps(ROW).encode() + b"\n")
    assert [r.answer for r in read_records(ds)] == ["4"]


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (b"[" * 100_000, ["part-0.jsonl:2", "not valid JSON", "nested too deeply"]),
        (b'{"id": "2", "query": "caf\xe9?", "answer": "x"}', ["part-0.jsonl:2", "UTF-8", "0xe9"]),
        (b'{"id": "2", "query": ', ["part-0.jsonl:2", "not valid JSON"]),
        (b"[1, 2]", ["part-0.jsonl:2", "JSON object"]),
    ],
    ids=["deep", "latin-1", "broken", "not-object"],
)
def test_a_bad_line_is_one_dataset_error_naming_file_and_line(tmp_path, bad, words):
    ds = _shard(tmp_path, json.dumps(ROW).encode() + b"\n" + bad + b"\n")
    with pytest.raises(DatasetError) as e:
        read_records(ds)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400
    for word in words:
        assert word in msg


def test_unreadable_meta_and_parquet_name_the_file(tmp_path):
    ds = _shard(tmp_path, json.dumps(ROW).encode() + b"\n")
    (ds / "meta.json").write_bytes(b"\xff{")
    with pytest.raises(DatasetError, match="meta.json: not a readable JSON file"):
        read_records(ds)
    bad = tmp_path / "x.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(DatasetError, match="x.parquet: not a readable Parquet file"):
        list(iter_file(bad))
