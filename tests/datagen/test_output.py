"""The dataset folder: shard writing, resume scanning, torn-line repair, the rejects log."""

from __future__ import annotations

import json

import pytest

from ptr_ray.datagen import output
from ptr_ray.records import FORMAT_VERSION, DatasetError, read_records


def _rec(i: int) -> dict:
    return {"id": f"id{i}", "query": f"q{i}?", "thoughts": ["t"], "answer": f"a{i}", "kind": "ptr"}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_shards_are_readable_records(tmp_path, fmt):
    w = output.ShardWriter(tmp_path, "r1", fmt, rows_per_shard=2)
    w.write([_rec(0), _rec(1), _rec(2)])
    w.write([_rec(3), _rec(4)])
    w.close()
    assert w.rows == 5
    assert w.files == [f"part-r1-0000{k}.{fmt}" for k in range(3)]
    recs = read_records(tmp_path)
    assert sorted(r.id for r in recs) == [f"id{i}" for i in range(5)]
    ex = output.scan(tmp_path)
    assert ex.record_ids == {f"id{i}" for i in range(5)}
    assert sorted(ex.queries) == [f"q{i}?" for i in range(5)]


def test_scan_cuts_torn_last_line(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    p = d / "part-x-00000.jsonl"
    p.write_text(json.dumps(_rec(0)) + "\n" + json.dumps(_rec(1))[:20])
    ex = output.scan(tmp_path)
    assert ex.record_ids == {"id0"} and ex.repaired == [p.name]
    assert p.read_text().endswith("\n") and len(p.read_text().splitlines()) == 1


def test_scan_rejects_wrong_format_version(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"format_version": FORMAT_VERSION + 1}))
    with pytest.raises(DatasetError, match="format version"):
        output.scan(tmp_path)


def test_reject_log_counts_all_and_writes_new_only(tmp_path):
    log = output.RejectLog(tmp_path, "r1", known=set())
    log.add("read", "malformed_json", source="f", where="f:3", raw="{")
    log.add("generate", "low_consistency", id="abc", query="q", detail="0.1")
    log.add("generate", "generation_error", id="def", query="q2")
    log.close()
    ex = output.scan(tmp_path)
    assert ex.final_reject_ids == {"abc"}  # generation_error is retried, not final
    again = output.RejectLog(tmp_path, "r2", known=ex.reject_keys)
    again.add("read", "malformed_json", source="f", where="f:3", raw="{")
    again.add("read", "malformed_json", source="f", where="f:4", raw="{")
    again.close()
    assert again.counts == {"malformed_json": 2} and again.by_stage == {
        "read": {"malformed_json": 2}
    }
    lines = (tmp_path / output.REJECTS_FILE).read_text().splitlines()
    assert len(lines) == 4  # the repeat of f:3 was counted but not logged twice
    assert json.loads(lines[-1])["run"] == "r2"


def test_stats_keep_history_and_meta_accumulates(tmp_path):
    output.write_stats(tmp_path, {"run_id": "a", "rows_in": 1})
    output.write_stats(tmp_path, {"run_id": "b", "rows_in": 2})
    s = json.loads((tmp_path / "stats.json").read_text())
    assert s["run_id"] == "b" and [p["run_id"] for p in s["previous_runs"]] == ["a"]
    output.update_meta(tmp_path, "a", {"strong_model": "m", "run": {"rows_out": 1}})
    output.update_meta(tmp_path, "b", {"strong_model": "m", "run": {"rows_out": 0}})
    m = json.loads((tmp_path / "meta.json").read_text())
    assert m["format_version"] == FORMAT_VERSION and [r["run_id"] for r in m["runs"]] == ["a", "b"]


def _rejects(tmp_path, content: bytes):
    (tmp_path / output.REJECTS_FILE).write_bytes(content)


_REJECT = json.dumps({"stage": "generate", "reason": "low_consistency", "id": "abc"}).encode()


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (b'{"stage": "generate", "reas', ["not valid JSON"]),
        (b'{"stage": "caf\xe9"}', ["not valid UTF-8", "0xe9"]),
        (b"[" * 100_000, ["nested too deeply"]),
        (b'["generate", "low_consistency"]', ["must be a JSON object"]),
    ],
    ids=["malformed", "latin1", "deep", "not_object"],
)
def test_scan_corrupt_reject_line_is_dataset_error_naming_line(tmp_path, bad, words):
    _rejects(tmp_path, _REJECT + b"\n\n" + bad + b"\n" + _REJECT + b"\n")
    with pytest.raises(DatasetError) as info:
        output.scan(tmp_path)
    msg = str(info.value)
    assert f"{output.REJECTS_FILE}:3:" in msg and "\n" not in msg
    assert msg.startswith(str(tmp_path / output.REJECTS_FILE)) and "delete that line" in msg
    for word in words:
        assert word in msg


def test_scan_cuts_torn_last_reject_line_and_reads_bom(tmp_path):
    _rejects(tmp_path, b"\xef\xbb\xbf" + _REJECT + b"\n" + _REJECT[:15])
    ex = output.scan(tmp_path)
    assert ex.final_reject_ids == {"abc"} and ex.repaired == [output.REJECTS_FILE]
    assert (tmp_path / output.REJECTS_FILE).read_bytes().endswith(b"\n")


def test_reject_log_need_not_remember_this_runs_keys(tmp_path):
    """Preprocessing rejects each row read at most once per run: its keys are not kept (the
    driver's memory would grow with the rows), while earlier runs' keys still stop repeats."""
    old = output.RejectLog(tmp_path, "r1", known=set())
    old.add("read", "malformed_json", source="f", where="f:1")
    old.close()
    log = output.RejectLog(tmp_path, "r2", known=output.scan(tmp_path).reject_keys)
    known = set(log.known)
    log.add("read", "malformed_json", source="f", where="f:1", remember=False)
    log.add("read", "malformed_json", source="f", where="f:2", remember=False)
    log.add("generate", "low_consistency", id="a", query="q")
    log.close()
    assert log.known == known | {"low_consistency|a||"}
    assert log.counts == {"malformed_json": 2, "low_consistency": 1}
    assert len((tmp_path / output.REJECTS_FILE).read_text().splitlines()) == 3
