"""Packing (ptr_ray/train/packing.py): capacity, determinism, fill against best-fit and exact
optima, micro-batch grouping, version 1 rebuilt exactly, and a resume across versions refused."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from ptr_ray.config import TrainConfig, load_config
from ptr_ray.records import read_records
from ptr_ray.train.encode import IGNORE, Encoder, collate, plan_epoch
from ptr_ray.train.packing import (
    PLAN_VERSION,
    PackError,
    _knapsack,
    best_fill,
    group_micro_batches,
    min_sequences,
    pack,
    pack_best_fit,
    pack_min_slack,
    pack_patterns,
    plan_efficiency,
    plan_groups,
)
from ptr_ray.train.resume import DATASET_FILE, TrainConfigChanged, prepare_output

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ptr_small"


def _lengths(seed: int, n: int, lo: int, hi: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(lo, hi) for _ in range(n)]


def _valid(bins: list[list[int]], lengths: list[int], cap: int) -> None:
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(b and sum(lengths[i] for i in b) <= cap for b in bins)


@pytest.mark.parametrize("packer", [pack_best_fit, pack_min_slack, pack])
@pytest.mark.parametrize("lo, hi, cap", [(20, 400, 1024), (150, 280, 512), (1, 512, 512)])
def test_every_packer_respects_capacity_and_keeps_every_episode(packer, lo, hi, cap):
    lengths = _lengths(1, 300, lo, hi)
    bins = packer(lengths, cap)
    _valid(bins, lengths, cap)
    assert packer(lengths, cap) == bins  # deterministic: a resumed run rebuilds the same plan
    assert len(bins) >= min_sequences(lengths, cap)


def test_pattern_packing_is_valid_and_its_bound_holds():
    lengths = _lengths(2, 400, 150, 280)
    start = pack_best_fit(lengths, 512)
    bins, floor = pack_patterns(lengths, 512, start)
    assert bins is not None
    _valid(bins, lengths, 512)
    assert min_sequences(lengths, 512) <= floor <= len(bins) <= len(start)


def test_version_2_beats_best_fit_where_single_episodes_leave_gaps():
    """PTR-like lengths (a quarter to half of max_length): best-fit strands capacity that
    combinations recover; version 2 never takes more sequences than best-fit."""
    for seed in range(3):
        lengths = _lengths(seed, 500, 150, 280)
        old, new = pack_best_fit(lengths, 512), pack(lengths, 512)
        assert len(new) < len(old)
        _, floor = pack_patterns(lengths, 512, new)
        assert len(new) <= floor + 2  # within two sequences of the LP bound
    for seed in range(3):
        lengths = _lengths(seed, 500, 20, 400)
        assert len(pack(lengths, 1024)) <= len(pack_best_fit(lengths, 1024))


def test_best_fill_is_the_exact_subset_sum_optimum():
    rng = random.Random(3)
    for _ in range(150):
        room = rng.randint(1, 60)
        avail = {rng.randint(1, 30): rng.randint(1, 3) for _ in range(rng.randint(1, 4))}
        got = best_fill(room, avail)
        assert all(0 < k <= avail[n] for n, k in got.items())
        total = sum(n * k for n, k in got.items())
        items = [n for n, c in avail.items() for _ in range(c)]
        best = max(
            (
                s
                for r in range(len(items) + 1)
                for c in itertools.combinations(items, r)
                if (s := sum(c)) <= room
            ),
            default=0,
        )
        assert total == best


def test_knapsack_is_the_exact_bounded_optimum():
    rng = random.Random(4)
    for _ in range(100):
        weights = [rng.randint(1, 9) for _ in range(3)]
        values = [rng.random() for _ in range(3)]
        caps = [rng.randint(0, 3) for _ in range(3)]
        room = rng.randint(1, 20)
        got = _knapsack(values, weights, caps, room)
        assert all(0 <= g <= c for g, c in zip(got, caps, strict=True))
        assert sum(g * w for g, w in zip(got, weights, strict=True)) <= room
        best = max(
            sum(a * v for a, v in zip(combo, values, strict=True))
            for combo in itertools.product(*(range(c + 1) for c in caps))
            if sum(a * w for a, w in zip(combo, weights, strict=True)) <= room
        )
        assert sum(g * v for g, v in zip(got, values, strict=True)) == pytest.approx(best)


def test_bad_lengths_are_clear_errors():
    with pytest.raises(PackError, match="episode 1 of 2000 tokens exceeds max_length=1024"):
        pack([10, 2000], 1024)
    with pytest.raises(ValueError, match="at least one"):
        pack([0], 8)
    with pytest.raises(PackError, match="unknown data plan version 7"):
        plan_groups([3], 8, 1, True, random.Random(0), version=7)
    with pytest.raises(PackError, match="micro_batch_size"):
        group_micro_batches([3], 0, random.Random(0))


def test_micro_batches_group_similar_lengths_in_a_seeded_order():
    sizes = [500, 100, 490, 120, 480, 110, 300, 310]
    groups = group_micro_batches(sizes, 2, random.Random("pack:0:0"))
    assert sorted(i for g in groups for i in g) == list(range(8))
    # by length: 500 490 | 480 310 | 300 120 | 110 100, then shuffled
    assert sorted(sorted(g) for g in groups) == [[0, 2], [1, 5], [3, 6], [4, 7]]
    assert groups == group_micro_batches(sizes, 2, random.Random("pack:0:0"))
    others = [group_micro_batches(sizes, 2, random.Random(f"pack:0:{e}")) for e in range(1, 6)]
    assert any(o != groups for o in others)  # each epoch its own order
    lengths = _lengths(5, 200, 20, 400)
    rows = pack(lengths, 1024)
    sizes = [sum(lengths[i] for i in r) for r in rows]
    mbs = [[rows[k] for k in g] for g in group_micro_batches(sizes, 4, random.Random(0))]
    grouped = plan_efficiency(lengths, mbs, 1024)["slots"]
    mbs = [[rows[k] for k in g] for g in group_micro_batches(sizes, 4, random.Random(0), False)]
    assert grouped >= plan_efficiency(lengths, mbs, 1024)["slots"]


def test_plan_efficiency_by_hand():
    eff = plan_efficiency([3, 4, 5], [[[0, 1], [2]]], 10)
    assert eff["tokens"] == 12 and eff["sequences"] == 2 and eff["micro_batches"] == 1
    assert eff["fill"] == pytest.approx(12 / 20)
    assert eff["slots"] == pytest.approx(12 / 14)  # two rows padded to 7
    assert min_sequences([6, 6, 6, 1], 10) == 3  # three over half the capacity
    assert min_sequences([4, 4, 4], 10) == 2  # 12 tokens


def test_version_1_plan_is_rebuilt_exactly(tiny_tokenizer):
    """plan_epoch(version=1) is the plan of the code before version 2 (an old run's steps)."""
    records = read_records(FIXTURE)
    eps, _ = Encoder(tiny_tokenizer, 512).encode_many(records, range(len(records)))
    for mbs, seed, epoch in [(1, 0, 0), (2, 3, 1), (4, 1, 2)]:
        rng = random.Random(f"pack:{seed}:{epoch}")  # the former plan_epoch, inline
        seqs = pack_best_fit([len(e) for e in eps], 512)
        rng.shuffle(seqs)
        old = [seqs[i : i + mbs] for i in range(0, len(seqs), mbs)]
        assert plan_epoch(eps, 512, mbs, True, seed, epoch, version=1).micro_batches == old


def test_version_2_plan_keeps_the_loss_inputs(tiny_tokenizer):
    """Every episode once per epoch, whole, with its answer labels and its turns."""
    records = read_records(FIXTURE)
    enc = Encoder(tiny_tokenizer, 256, thought_dropout=0.3, seed=1)
    eps, _ = enc.encode_many(records, range(len(records)), epoch=1)
    plan = plan_epoch(eps, 256, 2, True, 0, 1)
    seen = []
    for mb in plan.micro_batches:
        b = collate(eps, mb, tiny_tokenizer.pad_token_id)
        assert b["input_ids"].shape[1] <= 256
        members = [i for row in mb for i in row]
        seen += members
        assert b["n_tokens"] == sum(len(eps[i]) for i in members)
        answers = sum(eps[i].answer_span[1] - eps[i].answer_span[0] for i in members)
        assert int((b["labels"] != IGNORE).sum()) == answers
        assert len(b["turns"]) == sum(len(eps[i].spans) for i in members)
    assert sorted(seen) == list(range(len(eps)))


def test_resume_of_a_run_planned_under_another_version_is_refused(tmp_path):
    out = tmp_path / "run"
    cfg = load_config(TrainConfig, None, [f"dataset={FIXTURE}", f"output_dir={out}"])
    digest = "a" * 64
    prepare_output(cfg, out, digest, str(out / "ray"), "train")
    saved = json.loads((out / DATASET_FILE).read_text())
    assert saved["data_plan"] == PLAN_VERSION
    prepare_output(cfg, out, digest, str(out / "ray"), "train")  # same version: resumes
    del saved["data_plan"]  # a folder written before plan versions: version 1
    (out / DATASET_FILE).write_text(json.dumps(saved))
    with pytest.raises(TrainConfigChanged, match=rf"data plan: v1 -> v{PLAN_VERSION} \("):
        prepare_output(cfg, out, digest, str(out / "ray"), "train")
    moved = cfg.model_copy(update={"on_config_change": "move_aside"})
    prepare_output(moved, out, digest, str(out / "ray"), "train")
    (old,) = [p for p in tmp_path.iterdir() if p != out]
    assert old.name.startswith("run.old-")
    assert json.loads((out / DATASET_FILE).read_text())["data_plan"] == PLAN_VERSION
