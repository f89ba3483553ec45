"""Encoding: thought mask, turn spans, dropout, truncation, packing (logits equal packed/unpacked)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from ptr_ray import prompts
from ptr_ray.config import TrainConfig
from ptr_ray.records import DatasetError, Record, read_records
from ptr_ray.train.encode import (
    IGNORE,
    Encoder,
    check_dataset,
    collate,
    drop_thoughts,
    pack,
    pad_plan,
    plan_efficiency,
    plan_epoch,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ptr_small"


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return read_records(FIXTURE)


def _rec(query: str, thoughts: list[str], answer: str, kind: str = "ptr") -> Record:
    return Record(id="x", query=query, thoughts=thoughts, answer=answer, kind=kind)


def test_fixture_has_ptr_and_sft_rows(records):
    kinds = {r.kind for r in records}
    assert kinds == {"ptr", "sft"} and len(records) == 24
    assert all(len(r.thoughts) == 2 for r in records if r.kind == "ptr")


def test_labels_cover_exactly_the_final_answer(tiny_tokenizer):
    rec = _rec("What is 2+3?", ["It is 6.", "2+3 is 5."], "The answer is 5.")
    ep, st = Encoder(tiny_tokenizer, 4096).encode(rec, 0)
    ids, spans = prompts.turn_spans(tiny_tokenizer, rec.query, rec.thoughts + [rec.answer])
    assert ep.input_ids == ids and ep.spans == spans and len(spans) == 3
    b = collate([ep], [[0]], tiny_tokenizer.pad_token_id)
    labels = b["labels"][0]
    s, e = spans[-1]
    assert (labels[:s] == IGNORE).all() and (labels[e:] == IGNORE).all()
    assert labels[s:e].tolist() == ids[s:e]
    assert "The answer is 5." in tiny_tokenizer.decode(ids[s:e])
    # the round-3 inference prompt is exactly the prefix before the answer
    prompt = prompts.encode(tiny_tokenizer, prompts.round_messages(rec.query, rec.thoughts), True)
    assert ids[:s] == prompt
    assert st.answer_tokens == e - s and st.episodes == 1


def test_ift_mode_is_query_to_answer_only(tiny_tokenizer):
    rec = _rec("What is 2+3?", ["It is 6.", "2+3 is 5."], "The answer is 5.")
    ep, _ = Encoder(tiny_tokenizer, 4096, mode="ift").encode(rec, 0)
    ids, spans = prompts.turn_spans(tiny_tokenizer, rec.query, [rec.answer])
    assert ep.input_ids == ids and len(ep.spans) == 1


def test_sft_rows_skipped_when_excluded(tiny_tokenizer):
    rec = _rec("Say hi.", [], "Hi!", kind="sft")
    ep, st = Encoder(tiny_tokenizer, 4096, include_sft=False).encode(rec, 0)
    assert ep is None and st.skipped_sft == 1
    ep, _ = Encoder(tiny_tokenizer, 4096, include_sft=True).encode(rec, 0)
    assert ep is not None and len(ep.spans) == 1


def test_truncation_drops_oldest_thought_never_answer(tiny_tokenizer):
    rec = _rec("Q?", ["first thought " * 20, "second thought " * 5], "final answer")
    full, _ = Encoder(tiny_tokenizer, 100000).encode(rec, 0)
    no_first, _ = Encoder(tiny_tokenizer, 100000).encode(
        _rec("Q?", [rec.thoughts[1]], "final answer"), 0
    )
    enc = Encoder(tiny_tokenizer, len(no_first))
    ep, st = enc.encode(rec, 0)
    assert len(full) > len(no_first)
    assert ep.input_ids == no_first.input_ids
    assert st.truncated_episodes == 1 and st.truncated_thoughts == 1
    # too long even without thoughts: skipped and counted
    answer_only, _ = Encoder(tiny_tokenizer, 100000).encode(_rec("Q?", [], "final answer"), 0)
    ep, st = Encoder(tiny_tokenizer, len(answer_only) - 1).encode(rec, 0)
    assert ep is None and st.skipped_too_long == 1


def test_thought_dropout_keeps_one_and_is_seeded(tiny_tokenizer):
    rng = random.Random(0)
    for _ in range(200):
        kept, dropped = drop_thoughts(["a", "b", "c"], 0.9, rng)
        assert 1 <= len(kept) <= 3 and len(kept) + dropped == 3
        assert kept == [t for t in ["a", "b", "c"] if t in kept]  # order preserved
    assert drop_thoughts(["a", "b"], 0.0, rng) == (["a", "b"], 0)
    rec = _rec("Q?", [f"thought {i}" for i in range(6)], "A.")
    enc = Encoder(tiny_tokenizer, 4096, thought_dropout=0.5, seed=3)
    a = [enc.encode(rec, 7, epoch)[0].input_ids for epoch in range(4)]
    b = [
        Encoder(tiny_tokenizer, 4096, thought_dropout=0.5, seed=3)
        .encode(rec, 7, epoch)[0]
        .input_ids
        for epoch in range(4)
    ]
    assert a == b  # deterministic per (seed, epoch, record): resume sees the same data
    assert len({len(x) for x in a}) > 1  # but varies across epochs
    total = sum(enc.encode(rec, i, 0)[1].dropped_thoughts for i in range(50))
    assert 100 < total < 200  # ~ 0.5 * 6 * 50, minus the at-least-one rule


def test_pack_respects_capacity_and_uses_every_episode():
    rng = random.Random(1)
    lengths = [rng.randint(20, 400) for _ in range(500)]
    bins = pack(lengths, 1024)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 1024 for b in bins)
    assert sum(lengths) / (1024 * len(bins)) > 0.97
    with pytest.raises(ValueError):
        pack([2000], 1024)
    packed = [[bins[k] for k in range(i, min(i + 4, len(bins)))] for i in range(0, len(bins), 4)]
    singles = [[[i] for i in range(j, min(j + 4, 500))] for j in range(0, 500, 4)]
    eff, padded = (plan_efficiency(lengths, mbs, 1024) for mbs in (packed, singles))
    assert eff["fill"] > 0.97 and eff["slots"] >= eff["fill"] > padded["slots"]


def test_collate_positions_turn_table_and_padding(tiny_tokenizer, records):
    enc = Encoder(tiny_tokenizer, 2048)
    eps, _ = enc.encode_many(records, [0, 1, 2])
    b = collate(eps, [[0, 1], [2]], tiny_tokenizer.pad_token_id)
    n0, n1, n2 = (len(e) for e in eps)
    assert b["input_ids"].shape == (2, max(n0 + n1, n2))
    assert b["position_ids"][0, :n0].tolist() == list(range(n0))
    assert b["position_ids"][0, n0 : n0 + n1].tolist() == list(range(n1))
    assert b["n_tokens"] == n0 + n1 + n2 and b["n_episodes"] == 3
    turns = b["turns"]
    assert turns.shape == (9, 6)  # 3 episodes x 3 turns
    r, s, e, ep, t, n = turns[3].tolist()  # episode 1, turn 1, shifted by episode 0's length
    assert (r, s, e, ep, t, n) == (0, n0 + eps[1].spans[0][0], n0 + eps[1].spans[0][1], 1, 1, 3)
    # padding carries no labels
    if n2 < n0 + n1:
        assert (b["labels"][1, n2:] == IGNORE).all()
        assert (b["input_ids"][1, n2:] == tiny_tokenizer.pad_token_id).all()


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_logits_equal_unpacked(tiny_model_dir, tiny_tokenizer, records, impl):
    """No attention across episode boundaries: every token's logits match its solo forward."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=impl).eval()
    eps, _ = Encoder(tiny_tokenizer, 4096).encode_many(records, [0, 5, 20])
    b = collate(eps, [[0, 1, 2], [1]], tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        packed = model(
            input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False
        ).logits
        off = 0
        for ep in eps:
            solo = model(input_ids=torch.tensor([ep.input_ids]), use_cache=False).logits[0]
            torch.testing.assert_close(packed[0, off : off + len(ep)], solo, atol=1e-5, rtol=1e-4)
            off += len(ep)
        solo = model(input_ids=torch.tensor([eps[1].input_ids]), use_cache=False).logits[0]
        torch.testing.assert_close(packed[1, : len(eps[1])], solo, atol=1e-5, rtol=1e-4)


def test_plan_pads_workers_to_same_number_of_micro_batches(tiny_tokenizer, records):
    eps, _ = Encoder(tiny_tokenizer, 1024).encode_many(records, range(10))
    plan = plan_epoch(eps, 1024, 2, True, 0, 0)
    n = len(plan.micro_batches)
    pad_plan(plan, n + 3)
    assert len(plan.micro_batches) == n + 3 and plan.repeated == 3
    assert plan.micro_batches[n] == plan.micro_batches[0]


def _cfg(tmp_path, dataset, **kw) -> TrainConfig:
    return TrainConfig(dataset=str(dataset), output_dir=str(tmp_path / "out"), **kw)


def test_max_length_shorter_than_shortest_answer_is_an_error(tiny_tokenizer, records, tmp_path):
    info = check_dataset(tiny_tokenizer, records, _cfg(tmp_path, FIXTURE))
    assert info["usable"] == 24 and info["shortest_answer_tokens"] > 3
    with pytest.raises(ValueError, match="shorter than the shortest answer"):
        check_dataset(tiny_tokenizer, records, _cfg(tmp_path, FIXTURE, max_length=8))


def test_only_sft_rows_without_include_sft_is_an_error(tiny_tokenizer, tmp_path):
    recs = [_rec("Q?", [], "A.", kind="sft")]
    with pytest.raises(ValueError, match="no usable records"):
        check_dataset(tiny_tokenizer, recs, _cfg(tmp_path, "d", include_sft=False))


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "holds no .jsonl or .parquet"),
        ('{"id": "1", "query": "q", "thoughts": []}\n', "has no answer field"),
        ('{"id": "1", "query": "q", "answer": "   "}\n', "field 'answer'"),
        ("not json\n", "not valid JSON"),
    ],
)
def test_bad_dataset_fails_before_any_worker(tmp_path, content, match):
    """run_train's driver-side check_inputs() raises a one-line error naming the file."""
    from ptr_ray.train.trainer import check_inputs

    ds = tmp_path / "ds"
    ds.mkdir()
    if content is not None:
        (ds / "part-0.jsonl").write_text(content)
    cfg = _cfg(tmp_path, ds, model="builtin:does-not-matter")
    with pytest.raises(DatasetError, match=match) as e:
        check_inputs(cfg)
    if content is not None:
        assert "part-0.jsonl" in str(e.value)


def test_cli_prints_dataset_error(tmp_path, capsys):
    from ptr_ray.cli import main

    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "x.jsonl").write_text(json.dumps({"id": "1", "query": "q"}) + "\n")
    rc = main(["train", f"dataset={ds}", f"output_dir={tmp_path / 'o'}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "x.jsonl" in err and "answer" in err and "Traceback" not in err
