import pytest

from ptr_ray import prompts


def test_round_one_is_plain_query():
    assert prompts.round_messages("Q?", []) == [{"role": "user", "content": "Q?"}]


def test_episode_shape_and_custom_instruction():
    msgs = prompts.episode_messages("Q?", ["t1", "t2", "A"], refine_instruction="Again.")
    assert [m["role"] for m in msgs] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert msgs[2]["content"] == msgs[4]["content"] == "Again."
    assert [m["content"] for m in msgs if m["role"] == "assistant"] == ["t1", "t2", "A"]


@pytest.mark.parametrize(
    "instruction", [prompts.DEFAULT_REFINE_INSTRUCTION, "Try once more, carefully."]
)
def test_training_render_prefix_equals_inference_prompt(tiny_tokenizer, instruction):
    """Round k's inference prompt is token-for-token the training episode's prefix."""
    thoughts, answer = ["first draft 1 2 3", "second draft, better"], "The answer is 72."
    ids, spans = prompts.turn_spans(
        tiny_tokenizer, "How many clips?", thoughts + [answer], instruction
    )
    for k in range(3):
        prompt = prompts.encode(
            tiny_tokenizer,
            prompts.round_messages("How many clips?", (thoughts + [answer])[:k], instruction),
            True,
        )
        assert ids[: len(prompt)] == prompt
        assert spans[k][0] == len(prompt)
        turn_text = tiny_tokenizer.decode(ids[spans[k][0] : spans[k][1]])
        assert turn_text.startswith((thoughts + [answer])[k])
        assert "<|im_end|>" in turn_text  # the end-of-turn token is part of what is learned
    assert spans[-1][1] == len(ids)
    assert instruction in tiny_tokenizer.decode(ids)


def test_messages_prefix_and_system_prompt():
    msgs = prompts.round_messages(
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hey"},
            {"role": "user", "content": "Q?"},
        ],
        ["a1"],
        system_prompt="Be brief.",
    )
    assert msgs[0] == {"role": "system", "content": "Be brief."}
    assert msgs[-1]["content"] == prompts.DEFAULT_REFINE_INSTRUCTION
    with pytest.raises(ValueError, match="last message"):
        prompts.query_messages([{"role": "assistant", "content": "x"}])
    with pytest.raises(ValueError, match="empty"):
        prompts.query_messages("   ")


def test_no_chat_template_is_clear_error():
    class Tok:
        chat_template = None
        name_or_path = "plain"

    with pytest.raises(ValueError, match="no chat template"):
        prompts.render(Tok(), [{"role": "user", "content": "x"}], True)
