"""Input rows through the build's read pass (datagen/prepare.py over data/queries.py): a line
that JSON cannot parse, however it fails, is a counted and logged rejection, never a crash; a
byte-order mark on row 1 is not a rejection."""

from __future__ import annotations

import json

import pytest

from ptr_ray.config import BuildConfig
from ptr_ray.datagen import output
from ptr_ray.datagen.prepare import prepare_candidates

Q1 = "How do I bake sourdough bread at home with a simple starter?"
Q2 = "Explain the difference between TCP and UDP for a video call app."


@pytest.mark.integration
def test_deep_nesting_non_utf8_and_bom_lines_in_a_build(ray_local, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(
        b"\xef\xbb\xbf"
        + json.dumps({"q": Q1}).encode()
        + b"\n"
        + b"[" * 100_000
        + b"\n"
        + b'{"q": "caf\xe9 au lait recipe for a cold winter morning?"}\n'
        + json.dumps({"q": Q2}).encode()
        + b"\n"
    )
    cfg = BuildConfig.model_validate(
        {
            "sources": [{"kind": "jsonl", "path": str(src), "field": "q"}],
            "clean": {"min_tokens": 3, "max_tokens": 120},
            "output": {"path": str(tmp_path / "out")},
            "decontaminate": {"enabled": False},
            "sft": {"fraction": 0.0},
        }
    )
    out = tmp_path / "out"
    out.mkdir()
    log = output.RejectLog(out, "r1", set())
    prep = prepare_candidates(cfg, lambda t: len(t.split()), output.Existing(), log)
    log.close()
    cands = sorted(prep.candidates.take_all(), key=lambda r: r["order"])
    assert [c["query"] for c in cands] == [Q1, Q2]
    assert log.counts == {"malformed_json": 1, "not_utf8": 1}
    assert prep.rows_in == prep.num_candidates + log.total == 4
    logged = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    deep = next(e for e in logged if e["reason"] == "malformed_json")
    assert deep["where"] == "in.jsonl:2" and "nested too deeply" in deep["detail"]
