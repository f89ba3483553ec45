"""Cleaning, exact/near dedupe, decontamination and the SFT split."""

from __future__ import annotations

import pytest

from ptr_ray.data.clean import Cleaner, clean_text, tokenizer_counter
from ptr_ray.data.decontaminate import NgramDecontaminator
from ptr_ray.data.mix import is_sft


def test_clean_text_strips_urls_images_controls():
    raw = (
        "Look at ![cat](http://x.com/cat.png) and <img src='a.png'/> here:\x00 "
        "https://example.com/a?b=1   now\u200b.\r\n\r\n\r\n\r\nSee [docs](https://d.io) too.\tok"
    )
    out = clean_text(raw)
    assert "http" not in out and "img" not in out and "cat.png" not in out
    assert "\x00" not in out and "\u200b" not in out
    assert out == "Look at and here: now.\n\nSee docs too. ok"


def test_clean_keeps_code_newlines_and_indentation():
    assert (
        clean_text("Fix this:\n\ndef f(x):   \n    return  x\n")
        == "Fix this:\n\ndef f(x):\n    return x"
    )
    assert clean_text("  a\n \n\n\n b") == "a\n\n b"


def test_cleaner_token_limits():
    words = lambda s: len(s.split())  # noqa: E731 - a stand-in tokenizer
    c = Cleaner(words, min_tokens=2, max_tokens=5)
    assert c("hi").reason == "too_short"
    assert c("one two three four five six").reason == "too_long"
    assert c("https://only.a.url").reason == "empty_after_clean"
    r = c("a fine   question here")
    assert r.reason is None and r.text == "a fine question here" and r.tokens == 4
    with pytest.raises(ValueError):
        Cleaner(words, min_tokens=9, max_tokens=3)


def test_cleaning_a_batch_counts_tokens_in_one_call(tiny_tokenizer):
    """A block of rows is cleaned with one tokenizer call; the results are the per-text ones."""
    counter = tokenizer_counter(tiny_tokenizer)
    texts = ["hi", "see https://x.y/z", "", "a fine question here, with words", "   "]
    nonempty = [t for t in texts if t.strip()]
    assert counter.many(nonempty) == [counter(t) for t in nonempty]
    c = Cleaner(counter, min_tokens=3, max_tokens=50)
    assert c.many(texts) == [c(t) for t in texts]
    calls: list[int] = []

    class Counting:
        def __call__(self, text):
            raise AssertionError("one call per text")

        def many(self, batch):
            calls.append(len(batch))
            return [len(t.split()) for t in batch]

    results = Cleaner(Counting(), min_tokens=2, max_tokens=5).many(texts)
    assert calls == [3] and [r.reason for r in results] == [
        "too_short",
        "too_short",
        "empty_after_clean",
        "too_long",
        "empty_after_clean",
    ]


def test_decontaminator_long_and_short_references():
    refs = [
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
        "clips in May. How many clips did Natalia sell altogether in April and May?",
        "Which gas do plants absorb from the air?",  # 8 words: one short n-gram
        "Too short.",  # below min_words: ignored
    ]
    d = NgramDecontaminator(refs, n=13, min_words=8)
    assert d.contaminated(
        "Hey! natalia sold clips to 48 of her friends in april, and then she "
        "sold half as many clips in may. Please solve."
    )
    assert d.contaminated("Quick quiz: which gas do plants absorb from the air? Thanks")
    assert not d.contaminated("Natalia sold clips to 48 of her friends in April.")  # 10 words
    assert d.contaminated("Too short.")  # below min_words, but the very question: exact match
    assert not d.contaminated("Too short, maybe.")
    assert not d.contaminated("")
    assert not NgramDecontaminator([]).contaminated("anything at all here")


def test_decontaminator_with_packaged_eval_sets():
    from ptr_ray.data.benchmarks import decontamination_texts, load_task

    d = NgramDecontaminator(decontamination_texts(["gsm8k"]))
    q = load_task("gsm8k", limit=1)[0].question
    assert d.contaminated("Please help with my homework: " + q)
    assert not d.contaminated(
        "Write a haiku about autumn leaves falling on a quiet pond in Kyoto "
        "while a monk sweeps the path"
    )


def test_sft_split_is_deterministic_and_near_fraction():
    ids = [f"{i:016x}" for i in range(4000)]
    picked = [i for i in ids if is_sft(i, 0.25)]
    assert picked == [i for i in ids if is_sft(i, 0.25)]
    assert 0.22 < len(picked) / len(ids) < 0.28
    assert not any(is_sft(i, 0.0) for i in ids[:100])
    assert all(is_sft(i, 1.0) for i in ids[:100])
    with pytest.raises(ValueError):
        is_sft("x", 1.5)
