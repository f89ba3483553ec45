"""Query readers: every input row becomes a query or a counted rejection with its reason."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ptr_ray.config import QuerySourceConfig
from ptr_ray.data import queries as Q


def _write_lines(path, lines: list[bytes]) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_jsonl_rows_and_every_rejection_reason(tmp_path):
    p = tmp_path / "q.jsonl"
    _write_lines(
        p,
        [
            json.dumps({"prompt": {"text": "What is 2+2?"}, "ref": "4"}).encode(),
            b'{"prompt": {"text": "broken"',
            '{"prompt": {"text": "caf\xe9"}}'.encode("latin-1"),  # not UTF-8
            json.dumps({"other": 1}).encode(),
            json.dumps({"prompt": {"text": 5}}).encode(),
            json.dumps({"prompt": {"text": "   "}}).encode(),
            json.dumps([1, 2]).encode(),
            b"",
            json.dumps({"prompt": {"text": "Second question?"}}).encode(),
        ],
    )
    rows = list(Q.read_jsonl(p, "prompt.text", answer_field="ref"))
    reasons = [r.reason for r in rows]
    assert reasons == [
        None,
        "malformed_json",
        "not_utf8",
        "missing_field",
        "not_a_string",
        "empty_query",
        "not_an_object",
        None,
    ]
    assert rows[0].query == "What is 2+2?" and rows[0].answer == "4"
    assert rows[-1].answer is None
    assert rows[1].where == "q.jsonl:2" and rows[1].raw.startswith('{"prompt"')
    assert rows[-1].where == "q.jsonl:9"  # blank line 8 is skipped, numbering stays true


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(Q.QuerySourceError, match="not found"):
        list(Q.read_jsonl(tmp_path / "nope.jsonl"))


def test_parquet_file_and_folder(tmp_path):
    pq.write_table(pa.table({"q": ["one?", None, "three?"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"q": ["four?"]}), tmp_path / "b.parquet")
    rows = list(Q.read_parquet(tmp_path, "q"))
    assert [r.query for r in rows] == ["one?", None, "three?", "four?"]
    assert rows[1].reason == "not_a_string"
    assert rows[3].where == "b.parquet#0"


def test_hf_disk_folder_with_splits(tmp_path):
    table = pa.table({"question": ["alpha?", "beta?"]})
    for split in ("train", "test"):
        d = tmp_path / split
        d.mkdir()
        with pa.OSFile(str(d / "data-00000-of-00001.arrow"), "wb") as sink:
            with pa.ipc.new_stream(sink, table.schema) as w:
                w.write_table(table)
    with pytest.raises(Q.QuerySourceError, match="set split"):
        list(Q.read_hf_disk(tmp_path, "question"))
    rows = list(Q.read_hf_disk(tmp_path, "question", split="test"))
    assert [r.query for r in rows] == ["alpha?", "beta?"]
    assert [r.query for r in Q.read_hf_disk(tmp_path / "train", "question")] == ["alpha?", "beta?"]


def test_json_array_stream_handles_truncation(tmp_path):
    p = tmp_path / "arr.json"
    p.write_text('[\n {"a": 1},\n {"a": 2}, {"a": "x\\"y"},\n {"a": 4, "b": [1, 2')
    items = list(Q.iter_json_array(p, chunk_chars=8))  # tiny chunks: exercise refills
    assert [o for _, o, _ in items[:3]] == [{"a": 1}, {"a": 2}, {"a": 'x"y'}]
    assert items[3][1] is None and items[3][2].startswith('{"a": 4')
    p.write_text('[{"a": 1}, {"a": 2}]')
    assert [o for _, o, _ in Q.iter_json_array(p)] == [{"a": 1}, {"a": 2}]


def test_sharegpt_first_turn_queries(tmp_path):
    p = tmp_path / "sg.json"
    recs = [
        {
            "id": "abc_0",
            "conversations": [
                {"from": "human", "value": "First question?"},
                {"from": "gpt", "value": "answer"},
            ],
        },
        {"id": "abc_1", "conversations": [{"from": "human", "value": "continuation"}]},
        {
            "id": "def_0",
            "conversations": [
                {"from": "system", "value": "sys"},
                {"from": "human", "value": "Second?"},
            ],
        },
        {"id": "ghi", "conversations": [{"from": "gpt", "value": "no human"}]},
    ]
    p.write_text(json.dumps(recs)[:-40])  # cut inside the last record
    rows = list(Q.read_sharegpt(p))
    assert [(r.query, r.reason) for r in rows] == [
        ("First question?", None),
        (None, "not_first_turn"),
        ("Second?", None),
        (None, "truncated_record"),
    ]


def test_packaged_sharegpt_reads_lazily():
    rows = list(Q.read_source(QuerySourceConfig(kind="sharegpt", limit=50)))
    assert len(rows) == 50
    ok = [r for r in rows if r.ok]
    assert ok and all(r.query.strip() for r in ok)
    assert {r.reason for r in rows if not r.ok} <= {
        "not_first_turn",
        "missing_field",
        "empty_query",
    }


def test_source_limit_and_path_required(tmp_path):
    p = tmp_path / "q.jsonl"
    _write_lines(p, [json.dumps({"query": f"q{i}?"}).encode() for i in range(10)])
    cfg = QuerySourceConfig(kind="jsonl", path=str(p), limit=3)
    assert [r.query for r in Q.read_source(cfg)] == ["q0?", "q1?", "q2?"]
    with pytest.raises(Q.QuerySourceError, match="needs a path"):
        list(Q.read_source(QuerySourceConfig(kind="jsonl")))


def test_jsonl_deep_nesting_and_huge_ints_are_counted_malformed_rows(tmp_path):
    p = tmp_path / "q.jsonl"
    _write_lines(
        p,
        [
            b"[" * 100_000,  # json.loads raises RecursionError on this
            b'{"query": ' + b"9" * 5000 + b"}",  # and ValueError (int digit limit) on this
            json.dumps({"query": "still read?"}).encode(),
        ],
    )
    rows = list(Q.read_jsonl(p))
    assert [(r.reason, r.where) for r in rows] == [
        ("malformed_json", "q.jsonl:1"),
        ("malformed_json", "q.jsonl:2"),
        (None, "q.jsonl:3"),
    ]
    assert rows[0].detail == "nested too deeply" and len(rows[0].raw) < 400
    assert rows[2].query == "still read?"


def test_jsonl_bom_on_row_one_is_not_malformed(tmp_path):
    p = tmp_path / "q.jsonl"
    _write_lines(p, [b"\xef\xbb\xbf" + json.dumps({"query": "first?"}).encode()])
    assert [(r.query, r.reason) for r in Q.read_jsonl(p)] == [("first?", None)]


def test_json_array_bom_non_utf8_and_deep_nesting(tmp_path):
    p = tmp_path / "arr.json"
    p.write_bytes(b'\xef\xbb\xbf[{"a": 1}]')
    assert [o for _, o, _ in Q.iter_json_array(p)] == [{"a": 1}]
    p.write_bytes(b'[{"a": "caf\xe9"}]')
    with pytest.raises(Q.QuerySourceError, match=r"arr\.json is not UTF-8"):
        list(Q.iter_json_array(p))
    p.write_bytes(b'[{"a": 1}, ' + b"[" * 100_000 + b"]")
    with pytest.raises(Q.QuerySourceError, match=r"arr\.json: element 1 .*\(nested too deeply\)"):
        list(Q.iter_json_array(p))


def test_corrupt_parquet_and_arrow_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 but not really")
    with pytest.raises(Q.QuerySourceError, match=r"bad\.parquet: not a readable Parquet file"):
        list(Q.read_parquet(bad, "q"))
    d = tmp_path / "hf"
    d.mkdir()
    (d / "data-00000-of-00001.arrow").write_bytes(b"garbage")
    with pytest.raises(Q.QuerySourceError, match=r"data-00000-of-00001\.arrow: not a readable"):
        list(Q.read_hf_disk(d, "q"))


def test_a_folder_given_as_jsonl_is_a_clear_error(tmp_path):
    with pytest.raises(Q.QuerySourceError, match="is a folder"):
        list(Q.read_jsonl(tmp_path))
