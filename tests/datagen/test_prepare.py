"""Stages 1-3 (datagen/prepare.py, prepare_blocks.py): every row read is a candidate, a skip, or a counted
rejection; exact and near dedupe, decontamination and routing as a Ray Data plan.

The unit tests run the plan's operators in this process on one partition (no Ray); the
integration tests run the plan on a local Ray instance and compare it with a sequential
pure-Python reference (the old driver loop's rule), which differs only for chains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from ptr_ray.config import BuildConfig
from ptr_ray.data.benchmarks import load_task
from ptr_ray.data.clean import Cleaner
from ptr_ray.data.decontaminate import NgramDecontaminator
from ptr_ray.data.minhash import MinHasher, jaccard, lsh_params
from ptr_ray.data.mix import is_sft
from ptr_ray.data.queries import read_source
from ptr_ray.datagen import output
from ptr_ray.datagen.prepare import prepare_candidates
from ptr_ray.datagen.prepare_blocks import (
    RowRules,
    clean_batch,
    decide_batch,
    explode_keys,
    for_driver,
    group_keys,
    read_blocks,
    resolve_duplicates,
    seed_blocks,
    signatures_from,
)
from ptr_ray.records import record_id


def _words(text: str) -> int:
    return len(text.split())


def _write(path: Path, rows: list) -> None:
    with open(path, "wb") as f:
        for r in rows:
            f.write(r if isinstance(r, bytes) else json.dumps(r).encode())
            f.write(b"\n")


def _cfg(tmp_path, rows: list, **over) -> BuildConfig:
    src = tmp_path / "in.jsonl"
    _write(src, rows)
    data = {
        "sources": [{"kind": "jsonl", "path": str(src), "field": "q", "answer_field": "a"}],
        "clean": {"min_tokens": 3, "max_tokens": 120},
        "output": {"path": str(tmp_path / "out")},
        "decontaminate": {"tasks": ["gsm8k"]},
    }
    data.update(over)
    return BuildConfig.model_validate(data)


def _candidates(prep) -> list[dict]:
    """The candidate rows in read order (the dataset's block order is not read order)."""
    if prep.candidates is None:
        return []
    return sorted(prep.candidates.take_all(), key=lambda r: r["order"])


def _index(cfg: BuildConfig) -> NgramDecontaminator | None:
    from ptr_ray.data.benchmarks import decontamination_texts

    if not cfg.decontaminate.enabled:
        return None
    return NgramDecontaminator(
        decontamination_texts(cfg.decontaminate.tasks),
        n=cfg.decontaminate.ngram,
        min_words=cfg.decontaminate.min_words,
    )


def _in_process(cfg: BuildConfig, existing: output.Existing, index=None) -> pa.Table:
    """The plan's operators in this process, every row in one partition: the decided table."""
    near = cfg.dedupe.near
    bands, rows = lsh_params(cfg.dedupe.threshold, cfg.dedupe.num_perm) if near else (0, 0)
    hasher = MinHasher(cfg.dedupe.num_perm, cfg.seed + 1, cfg.dedupe.shingle_size) if near else None
    rules = RowRules(
        Cleaner(_words, cfg.clean.min_tokens, cfg.clean.max_tokens),
        frozenset(existing.done_ids),
        hasher,
        bands,
        rows,
    )
    raw = list(seed_blocks(existing.queries)) if near else []
    for i, src in enumerate(cfg.sources):
        raw.extend(read_blocks(src, i, cfg.seed))
    base = [clean_batch(rules, index, t) for t in raw]
    keys = pa.concat_tables(explode_keys(t) for t in base)
    groups = group_keys(keys)
    members = list(
        zip(groups.column("kind").to_pylist(), groups.column("members").to_pylist(), strict=True)
    )
    dup, near_rows = resolve_duplicates(
        members,
        lambda orders: signatures_from(base, orders, hasher),  # type: ignore[arg-type]
        cfg.dedupe.threshold if near else None,
    )
    decided = [
        decide_batch(t, dup, near_rows, cfg.sft.fraction, cfg.seed, cfg.decontaminate.ngram)
        for t in base
    ]
    return pa.concat_tables(decided).sort_by("order")


def _verdicts(table: pa.Table) -> list[str]:
    """Each row's bucket or rejection reason, in read order."""
    return [
        r["reason"] if r["bucket"] == "reject" else r["bucket"]
        for r in table.select(["bucket", "reason"]).to_pylist()
    ]


# -- the chain: A~B, B~C, A!~C ---------------------------------------------------------------

_CHAIN_WORDS = [f"w{i}" for i in range(30)]


def _chain() -> tuple[str, str, str]:
    a = list(_CHAIN_WORDS)
    b = list(a)
    b[27:29] = ["x1", "x2"]  # two adjacent words changed near the end
    c = list(b)
    c[1:3] = ["y1", "y2"]  # and two near the start
    return " ".join(a), " ".join(b), " ".join(c)


def test_chain_is_one_component_where_the_greedy_rule_kept_two(tmp_path):
    a, b, c = _chain()
    sigs = MinHasher(128, 1, 3).signatures([a, b, c])
    j = jaccard(sigs[[0, 1, 0]], sigs[[1, 2, 2]])
    assert j[0] >= 0.7 and j[1] >= 0.7 and j[2] < 0.7  # the data really is a chain
    cfg = _cfg(
        tmp_path,
        [{"q": a}, {"q": b}, {"q": c}],
        dedupe={"threshold": 0.7},
        decontaminate={"enabled": False},
        sft={"fraction": 0.0},
    )
    # greedy (the old driver loop) kept A and C; components keep A only
    assert _verdicts(_in_process(cfg, output.Existing())) == [
        "candidate",
        "near_duplicate",
        "near_duplicate",
    ]


def test_exact_copies_stay_out_of_the_graph_and_precedence_holds(tmp_path):
    gsm = load_task("gsm8k", limit=1)[0].question
    q = "How do I bake sourdough bread at home with a simple starter and some flour?"
    rows = [
        {"q": "Solve: " + gsm},  # contaminated, but kept for near-dedupe
        {"q": "Solve: " + gsm + " thanks"},  # near copy of a contaminated row
        {"q": q},
        {"q": q.upper()},  # exact copy (same id)
        {"q": q.upper()},  # again
        {"q": q + " please"},  # near copy
        {"q": "hi"},
    ]
    cfg = _cfg(tmp_path, rows, dedupe={"threshold": 0.7}, sft={"fraction": 0.0})
    decided = _in_process(cfg, output.Existing(), _index(cfg))
    assert _verdicts(decided) == [
        "contaminated",
        "near_duplicate",
        "candidate",
        "duplicate",
        "duplicate",
        "near_duplicate",
        "too_short",
    ]
    row = decided.to_pylist()[0]
    assert row["stage"] == "decontaminate" and "13-gram" in row["detail"]


def test_written_queries_seed_near_dedupe_and_are_never_output(tmp_path):
    q1 = "What are good habits for learning a new programming language quickly?"
    q2 = "Describe the water cycle for a ten year old student in simple words."
    cfg = _cfg(
        tmp_path,
        [{"q": q1}, {"q": q2 + " please"}, {"q": q1 + " thanks"}],
        dedupe={"threshold": 0.7},
        decontaminate={"enabled": False},
        sft={"fraction": 0.0},
    )
    existing = output.Existing(record_ids={record_id(q1), record_id(q2)}, queries=[q1, q2])
    decided = _in_process(cfg, existing)
    assert decided.column("order").to_pylist() == [0, 1, 2]  # seeds are not rows
    assert _verdicts(decided) == ["skip", "near_duplicate", "near_duplicate"]


def test_near_dedupe_off_keeps_exact_dedupe(tmp_path):
    q = "Explain the difference between TCP and UDP for a video call app."
    cfg = _cfg(
        tmp_path,
        [{"q": q}, {"q": q + " now"}, {"q": q.lower()}],
        dedupe={"near": False},
        decontaminate={"enabled": False},
        sft={"fraction": 0.0},
    )
    assert _verdicts(_in_process(cfg, output.Existing())) == [
        "candidate",
        "candidate",
        "duplicate",
    ]


def test_the_driver_gets_rejections_whole_and_the_other_rows_as_counts(tmp_path):
    q = "Explain the difference between TCP and UDP for a video call app."
    rows = [{"q": q}, {"q": q.lower()}, {"q": "hi"}, {"q": q + " today, please"}, {"q": q + "?"}]
    written = "How do I bake sourdough bread at home with a simple starter?"
    cfg = _cfg(tmp_path, [*rows, {"q": written}], decontaminate={"enabled": False})
    existing = output.Existing(record_ids={record_id(written)}, queries=[written])
    decided = _in_process(cfg, existing)
    sent = for_driver(decided)
    rejected = sent.filter(pc.equal(sent.column("bucket"), "reject"))
    verdicts = _verdicts(decided)
    assert rejected.num_rows == len(verdicts) - verdicts.count("candidate") - verdicts.count("skip")
    assert set(rejected.column("n").to_pylist()) == {1}
    assert None not in rejected.column("query").to_pylist()
    others = sent.filter(pc.invert(pc.equal(sent.column("bucket"), "reject")))
    # one row per (bucket, source), its count in n, no query text
    assert sorted(others.select(["bucket", "n"]).to_pylist(), key=str) == [
        {"bucket": "candidate", "n": verdicts.count("candidate")},
        {"bucket": "skip", "n": 1},
    ]
    assert others.column("query").null_count == others.num_rows
    assert sum(sent.column("n").to_pylist()) == decided.num_rows


# -- on Ray ----------------------------------------------------------------------------------


@pytest.mark.integration
def test_every_row_is_accounted_for(ray_local, tmp_path):
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
    cands = _candidates(prep)
    assert prep.rows_in == len(rows)
    assert [c["query"] for c in cands] == [rows[0]["q"], rows[-1]["q"]]
    assert cands[1]["ref_answer"] == "TCP is..."
    assert prep.num_candidates == 2 and prep.candidate_sources == {"in.jsonl": 2}
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
    assert prep.rows_in == prep.num_candidates + log.total
    logged = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert {e["reason"] for e in logged} == set(log.counts)
    assert all(c["id"] == record_id(c["query"]) for c in cands)
    assert prep.decontamination_ngrams > 0


@pytest.mark.integration
def test_resume_skips_done_ids_and_near_copies_of_written_rows(ray_local, tmp_path):
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
    assert [c["query"] for c in _candidates(prep)] == [q3]
    assert prep.skipped_existing == 2
    assert log.counts == {"near_duplicate": 1}


@pytest.mark.integration
def test_sft_fraction_routes_queries(ray_local, tmp_path):
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
    kinds = [c["kind"] for c in _candidates(prep)]
    assert len(kinds) == 40 and 8 < kinds.count("sft") < 32


@pytest.mark.integration
def test_synthetic_source_is_seeded_by_the_build_and_eval_questions_are_dropped(
    ray_local, tmp_path
):
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
    cands = _candidates(prep)
    assert [c["query"] for c in cands] == [p.question for p in train]
    assert [c["ref_answer"] for c in cands] == [p.solution for p in train]
    assert prep.candidate_sources == {"synthetic": 30}
    assert log.counts == {"contaminated": 1}
    [entry] = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert entry["query"] == eval_q and entry["detail"] == "is an eval question"


# -- a few hundred generated rows against the sequential reference ---------------------------


def _planted(rng: np.random.Generator, gsm: list[str]) -> tuple[list, list, list[str]]:
    """Two sources' rows with planted cases, and the queries an earlier run wrote."""

    def fresh(n: int = 24) -> str:
        return " ".join(f"t{int(x)}" for x in rng.integers(0, 50_000, n)) + "?"

    uniques = [fresh() for _ in range(180)]
    written = [fresh() for _ in range(12)]
    a: list = [{"q": q} for q in uniques[:90]]
    b: list = [{"q": q, "a": f"answer {i}"} for i, q in enumerate(uniques[90:])]
    for i in range(15):  # exact copies (case and spacing), within and across sources
        (a if i % 2 else b).append({"q": "  " + uniques[i * 7].upper()})
    for i in range(15):  # near copies: one word more
        (b if i % 2 else a).append({"q": uniques[i * 11 + 1] + " please"})
    for q in gsm:  # contaminated
        a.append({"q": "Please solve this: " + q})
    a.append({"q": "Please solve this: " + gsm[0] + " quickly"})  # near copy of one
    for q in written[:6]:  # already written: skipped
        b.append({"q": q})
    for q in written[6:10]:  # near copies of written rows
        b.append({"q": q + " again"})
    a.extend([b"{broken", {"other": 1}, {"q": 42}, {"q": "   "}])  # malformed
    b.extend([{"q": "hi"}, {"q": "see https://x.y/z"}, {"q": " ".join(["w"] * 200)}])  # clean
    rng.shuffle(a)  # type: ignore[arg-type]
    rng.shuffle(b)  # type: ignore[arg-type]
    x, y, z = _chain()
    a.extend([{"q": x}, {"q": y}, {"q": z}])
    return a, b, written


def _reference(cfg: BuildConfig, existing: output.Existing, index) -> list[str]:
    """The sequential rule of the old driver loop, brute force (every earlier kept row is
    compared, no LSH): each row's bucket or rejection reason, in read order."""
    cleaner = Cleaner(_words, cfg.clean.min_tokens, cfg.clean.max_tokens)
    hasher = MinHasher(cfg.dedupe.num_perm, cfg.seed + 1, cfg.dedupe.shingle_size)
    kept = [hasher.signatures([q])[0] for q in existing.queries]
    seen_ids: set[str] = set()
    out: list[str] = []
    for src in cfg.sources:
        for row in read_source(src, cfg.seed):
            if not row.ok:
                out.append(row.reason or "")
                continue
            res = cleaner(row.query or "")
            if res.reason:
                out.append(res.reason)
                continue
            rid = record_id(res.text)
            if rid in existing.done_ids:
                out.append("skip")
                continue
            if rid in seen_ids:
                out.append("duplicate")
                continue
            seen_ids.add(rid)
            sig = hasher.signatures([res.text])[0]
            if kept and (jaccard(np.stack(kept), sig[None, :]) >= cfg.dedupe.threshold).any():
                out.append("near_duplicate")
                continue
            kept.append(sig)
            out.append("contaminated" if index.contaminated(res.text) else "candidate")
    return out


@pytest.mark.integration
@pytest.mark.parametrize("shuffle", [False, True], ids=["grouped-in-task", "hash-shuffle"])
def test_planted_rows_match_the_sequential_reference(ray_local, tmp_path, monkeypatch, shuffle):
    """Both ways of grouping the keys: in the resolving task (a small build) and the hash
    repartition by key (a large one), forced here on a few hundred rows."""
    from ptr_ray.datagen import prepare

    monkeypatch.setattr(prepare, "SHUFFLE_FROM_KEY_ROWS", 0 if shuffle else 10**12)
    gsm = [t.question for t in load_task("gsm8k", limit=5)]
    a, b, written = _planted(np.random.default_rng(7), gsm)
    _write(tmp_path / "a.jsonl", a)
    _write(tmp_path / "b.jsonl", b)
    cfg = BuildConfig.model_validate(
        {
            "sources": [
                {"kind": "jsonl", "path": str(tmp_path / "a.jsonl"), "field": "q"},
                {
                    "kind": "jsonl",
                    "path": str(tmp_path / "b.jsonl"),
                    "field": "q",
                    "answer_field": "a",
                },
            ],
            "clean": {"min_tokens": 3, "max_tokens": 120},
            "output": {"path": str(tmp_path / "out")},
            "decontaminate": {"tasks": ["gsm8k"]},
            "dedupe": {"threshold": 0.7},
            "sft": {"fraction": 0.3},
        }
    )
    existing = output.Existing(
        record_ids={record_id(q) for q in written[:10]},  # written[10:] only seed near-dedupe
        queries=list(written),
    )
    out = tmp_path / "out"
    out.mkdir()
    log = output.RejectLog(out, "r", set())
    prep = prepare_candidates(cfg, _words, existing, log)
    log.close()
    index = _index(cfg)
    ref = _reference(cfg, existing, index)

    # the chain's last row is the one documented difference (greedy keeps it)
    assert ref[len(a) - 3 : len(a)] == ["candidate", "near_duplicate", "candidate"]
    expected = list(ref)
    expected[len(a) - 1] = "near_duplicate"
    want: dict[str, int] = {}
    for v in expected:
        want[v] = want.get(v, 0) + 1
    assert prep.rows_in == len(a) + len(b) == len(expected)
    assert prep.skipped_existing == want.pop("skip") == 6
    assert prep.num_candidates == want.pop("candidate")
    assert log.counts == want
    # near: 15 planted, 1 of a contaminated row, 4 of written rows, the chain's B and C
    assert want["duplicate"] == 15 and want["near_duplicate"] == 15 + 1 + 4 + 2
    assert want["contaminated"] == len(gsm)
    assert want["malformed_json"] == 1 and want["missing_field"] == 1
    assert want["too_short"] == 2 and want["too_long"] == 1
    assert prep.rows_in == prep.num_candidates + prep.skipped_existing + log.total

    # the same rows, row by row (orders: source index << 40 | row index)
    cands = _candidates(prep)
    orders = [(0, i) for i in range(len(a))] + [(1, i) for i in range(len(b))]
    want_orders = [
        (s << 40) | i for (s, i), v in zip(orders, expected, strict=True) if v == "candidate"
    ]
    assert [c["order"] for c in cands] == want_orders
    assert all(c["kind"] == ("sft" if is_sft(c["id"], 0.3, cfg.seed) else "ptr") for c in cands)
    assert {c["kind"] for c in cands} == {"ptr", "sft"}
    assert prep.candidate_sources == {
        "a.jsonl": sum(1 for c in cands if c["source"] == "a.jsonl"),
        "b.jsonl": sum(1 for c in cands if c["source"] == "b.jsonl"),
    }
    rows = {"a.jsonl": a, "b.jsonl": b}
    assert all(
        c["ref_answer"] == rows[c["source"]][c["order"] & ((1 << 40) - 1)].get("a") for c in cands
    )
    assert any(c["ref_answer"] for c in cands)
    # and the in-process operators agree with the Ray plan
    assert _verdicts(_in_process(cfg, existing, index)) == expected
