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


_GOOD = '{"query": "q", "thoughts": ["t"], "answer": "a"}\n'


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (_GOOD.encode() + b'{"query": "caf\xe9"}\n', ["ex.jsonl:2:", "not valid UTF-8", "0xe9"]),
        (_GOOD.encode() + b"\n" + b"[" * 100_000 + b"\n", ["ex.jsonl:3:", "nested too deeply"]),
        (_GOOD.encode() + b'{"query": \n', ["ex.jsonl:2:", "not valid JSON"]),
        (b"\xff\xfe" + _GOOD.encode("utf-16-le"), ["ex.jsonl:1:", "UTF-16"]),
        (b'["q", ["t"], "a"]\n', ["ex.jsonl:1:", "JSON object"]),
        (b'{"query": "q", "thoughts": "t", "answer": "a"}\n', ["ex.jsonl:1:", "a list"]),
        (b'{"query": "q", "thoughts": ["t"]}\n', ["ex.jsonl:1:", "no 'answer' field"]),
    ],
    ids=["latin1", "deep", "malformed", "utf16", "not_object", "thoughts_str", "no_answer"],
)
def test_bad_line_is_one_icl_error_naming_file_and_line(tmp_path, content, words):
    p = tmp_path / "ex.jsonl"
    p.write_bytes(content)
    with pytest.raises(icl.IclError) as info:
        icl.load_examples(p)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(p))
    for word in words:
        assert word in msg


def test_examples_file_with_bom_reads(tmp_path):
    p = tmp_path / "ex.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + _GOOD.encode() + b"\n" + _GOOD.encode())
    exs = icl.load_examples(p)
    assert [e.query for e in exs] == ["q", "q"] and exs[0].thoughts == ("t",)
