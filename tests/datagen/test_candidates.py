"""Stages 1-3 in the driver: every row read is a candidate, a skip, or a counted rejection."""

from __future__ import annotations

import json

from ptr_ray.config import BuildConfig
from ptr_ray.data.benchmarks import load_task
from ptr_ray.datagen import output
from ptr_ray.datagen.candidates import prepare_candidates
from ptr_ray.records import record_id


def _words(text: str) -> int:
    return len(text.split())


def _cfg(tmp_path, rows: list, **over) -> BuildConfig:
    src = tmp_path / "in.jsonl"
    with open(src, "wb") as f:
        for r in rows:
            f.write(r if isinstance(r, bytes) else json.dumps(r).encode())
            f.write(b"\n")
    data = {
        "sources": [{"kind": "jsonl", "path": str(src), "field": "q", "answer_field": "a"}],
        "clean": {"min_tokens": 3, "max_tokens": 120},
        "output": {"path": str(tmp_path / "out")},
        "decontaminate": {"tasks": ["gsm8k"]},
    }
    data.update(over)
    return BuildConfig.model_validate(data)


def test_every_row_is_accounted_for(tmp_path):
    gsm = load_task("gsm8k", limit=1)[0].question
    rows = [
        {"q": "How do I bake sourdough bread at home with a simple starter?"},
        {"q": "how do I bake  sourdough bread at home with a simple starter?"},  # exact dup
        {"q": "How do I bake sourdough bread at home with a simple starter? thanks"},  # near dup
        {"q": "Solve: " + gsm},  # contaminated
        {"q": "hi"},  # too short
        {"q": " ".join(["word"] * 150)},  # too long
        {"q": "https://example.com/only-a-link"},  # empty after clean
        b"{not json",
        {"nope": 1},
        {"q": "Explain the difference between TCP and UDP for a video call app.", "a": "TCP is..."},
    ]
    cfg = _cfg(tmp_path, rows, sft={"fraction": 0.0}, dedupe={"threshold": 0.7})
    out = tmp_path / "out"
    out.mkdir()
    log = output.RejectLog(out, "r1", set())
    prep = prepare_candidates(cfg, _words, output.Existing(), log)
    log.close()
    assert prep.rows_in == len(rows)
    assert [c.query for c in prep.candidates] == [rows[0]["q"], rows[-1]["q"]]
    assert prep.candidates[1].ref_answer == "TCP is..."
    assert log.counts == {
        "duplicate": 1,
        "near_duplicate": 1,
        "contaminated": 1,
        "too_short": 1,
        "too_long": 1,
        "empty_after_clean": 1,
        "malformed_json": 1,
        "missing_field": 1,
    }
    assert prep.rows_in == len(prep.candidates) + log.total
    logged = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert {e["reason"] for e in logged} == set(log.counts)
    assert all(c.id == record_id(c.query) for c in prep.candidates)


def test_resume_skips_done_ids_and_near_copies_of_written_rows(tmp_path):
    q1 = "What are good habits for learning a new programming language quickly?"
    q2 = "Describe the water cycle for a ten year old student in simple words."
    q3 = "Compare electric cars and hybrid cars for a long daily commute."
    cfg = _cfg(
        tmp_path,
        [{"q": q1}, {"q": q2}, {"q": q3}, {"q": q1 + " please"}],
        sft={"fraction": 0.0},
        dedupe={"threshold": 0.7},
        decontaminate={"enabled": False},
    )
    existing = output.Existing(
        record_ids={record_id(q1)}, queries=[q1], final_reject_ids={record_id(q2)}
    )
    out = tmp_path / "out"
    out.mkdir()
    log = output.RejectLog(out, "r2", set())
    prep = prepare_candidates(cfg, _words, existing, log)
    assert [c.query for c in prep.candidates] == [q3]
    assert prep.skipped_existing == 2
    assert log.counts == {"near_duplicate": 1}


def test_sft_fraction_routes_queries(tmp_path):
    rows = [
        {"q": f"Question number {i} about a distinct topic {i * 7919} here?"} for i in range(40)
    ]
    cfg = _cfg(
        tmp_path,
        rows,
        sft={"fraction": 0.5},
        dedupe={"near": False},
        decontaminate={"enabled": False},
    )
    (tmp_path / "out").mkdir()
    prep = prepare_candidates(
        cfg, _words, output.Existing(), output.RejectLog(tmp_path / "out", "r", set())
    )
    kinds = [c.kind for c in prep.candidates]
    assert len(kinds) == 40 and 8 < kinds.count("sft") < 32


def test_synthetic_source_is_seeded_by_the_build_and_eval_questions_are_dropped(tmp_path):
    """A synthetic source draws training problems with the build's seed (its own if set); a
    query that *is* an ``arith`` eval question (4 words: below any n-gram) is still dropped."""
    from ptr_ray.data import synthetic

    eval_q = synthetic.eval_problems()[0].question
    cfg = _cfg(
        tmp_path,
        [{"q": eval_q, "a": "x"}],
        seed=4,
        dedupe={"near": False},
        sft={"fraction": 0.0},
        decontaminate={"tasks": ["arith"]},
    )
    cfg.sources.append(
        cfg.sources[0].model_copy(update={"kind": "synthetic", "path": None, "limit": 30})
    )
    (tmp_path / "out").mkdir()
    log = output.RejectLog(tmp_path / "out", "r", set())
    prep = prepare_candidates(cfg, _words, output.Existing(), log)
    log.close()
    train = synthetic.generate("train", 30, seed=4)
    assert [c.query for c in prep.candidates] == [p.question for p in train]
    assert [c.ref_answer for c in prep.candidates] == [p.solution for p in train]
    assert {c.source for c in prep.candidates} == {"synthetic"}
    assert log.counts == {"contaminated": 1}
    [entry] = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert entry["query"] == eval_q and entry["detail"] == "is an eval question"
