"""The strong model's prompt and the packaged worked examples."""

from __future__ import annotations

import pytest

from ptr_ray.datagen import icl


def test_packaged_examples_load():
    exs = icl.load_examples()
    assert len(exs) >= 3
    assert all(e.query and e.thoughts and e.answer for e in exs)


def test_strong_messages_shape():
    exs = icl.load_examples()
    msgs = icl.strong_messages(
        "Why is the sky blue?", ["Because of the sea.", "Scattering?"], exs, 2
    )
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[2]["content"] == exs[0].answer
    last = msgs[-1]["content"]
    assert (
        "Why is the sky blue?" in last
        and "[Draft 1]\nBecause of the sea." in last
        and "[Draft 2]" in last
    )
    assert len(icl.strong_messages("q", ["t"], exs, 0)) == 2


def test_bad_examples_file(tmp_path):
    p = tmp_path / "ex.jsonl"
    p.write_text('{"query": "q", "answer": "a"}\n')
    with pytest.raises(icl.IclError, match="ex.jsonl:1"):
        icl.load_examples(p)
    p.write_text('{"query": "q", "thoughts": [], "answer": "a"}\n')
    with pytest.raises(icl.IclError, match="non-empty"):
        icl.load_examples(p)
    with pytest.raises(icl.IclError, match="not found"):
        icl.load_examples(tmp_path / "missing.jsonl")
