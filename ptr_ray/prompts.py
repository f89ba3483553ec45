"""THE conversation format of a refinement episode, shared by build, train, eval and serve.

An episode is a chat::

    user:      query
    assistant: turn 1            (a weak thought, or the model's own round-1 answer)
    user:      refine instruction
    assistant: turn 2
    ...
    user:      refine instruction
    assistant: turn n            (the strong answer, or the model's round-n answer)

Training renders the whole episode; inference at round k renders the first k-1 turns plus
the k-th user message with a generation prompt. Both go through :func:`episode_messages`, so
the prefix a model was trained on is token-for-token the prompt it sees when serving.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DEFAULT_REFINE_INSTRUCTION = "Please continue thinking and refine your answer."

Message = dict[str, str]
Query = str | Sequence[Message]


def query_messages(query: Query, system_prompt: str | None = None) -> list[Message]:
    """The opening of an episode: a plain query, or a chat prefix that ends with a user turn.

    A chat prefix (OpenAI ``messages``) lets a client refine within an ongoing conversation.
    """
    if isinstance(query, str):
        if not query.strip():
            raise ValueError("query is empty")
        msgs: list[Message] = [{"role": "user", "content": query}]
    else:
        msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in query]
        if not msgs:
            raise ValueError("messages is empty")
        if msgs[-1]["role"] != "user":
            raise ValueError("the last message must come from the user")
        if not msgs[-1]["content"].strip():
            raise ValueError("the last user message is empty")
    if system_prompt and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system_prompt})
    return msgs


def episode_messages(
    query: Query,
    turns: Sequence[str],
    refine_instruction: str = DEFAULT_REFINE_INSTRUCTION,
    system_prompt: str | None = None,
) -> list[Message]:
    """A complete episode: query, then the assistant turns separated by refine instructions."""
    msgs = query_messages(query, system_prompt)
    for i, turn in enumerate(turns):
        if i > 0:
            msgs.append({"role": "user", "content": refine_instruction})
        msgs.append({"role": "assistant", "content": turn})
    return msgs


def round_messages(
    query: Query,
    previous: Sequence[str],
    refine_instruction: str = DEFAULT_REFINE_INSTRUCTION,
    system_prompt: str | None = None,
) -> list[Message]:
    """The prompt of round ``len(previous) + 1``: earlier answers, then the refine instruction.

    Round 1 (no previous answers) is the plain query.
    """
    msgs = episode_messages(query, previous, refine_instruction, system_prompt)
    if previous:
        msgs.append({"role": "user", "content": refine_instruction})
    return msgs


def render(tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool) -> str:
    """Render with the model's own chat template (the only place a template is applied)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            f"tokenizer of {getattr(tokenizer, 'name_or_path', '?')} has no chat template; "
            "PTR needs a chat model"
        )
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def encode(tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool) -> list[int]:
    """Token ids of a rendered conversation. The template already holds any special tokens."""
    text = render(tokenizer, messages, add_generation_prompt)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def turn_spans(
    tokenizer: Any,
    query: Query,
    turns: Sequence[str],
    refine_instruction: str = DEFAULT_REFINE_INSTRUCTION,
    system_prompt: str | None = None,
) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of a full episode and the [start, end) token span of each assistant turn.

    A turn starts where the round-k inference prompt ends, so the prompt of round k is exactly
    ``ids[:spans[k-1][0]]``; it ends where the next user message (or the episode) begins, so
    the span covers the end-of-turn token(s) the model must learn to emit.
    """
    full = encode(
        tokenizer, episode_messages(query, turns, refine_instruction, system_prompt), False
    )
    spans: list[tuple[int, int]] = []
    for k in range(len(turns)):
        prompt = encode(
            tokenizer, round_messages(query, turns[:k], refine_instruction, system_prompt), True
        )
        if full[: len(prompt)] != prompt:
            raise ValueError(
                "the chat template does not render round prompts as prefixes of the episode; "
                "PTR's shared format needs a prefix-stable template"
            )
        if k + 1 < len(turns):
            done = encode(
                tokenizer,
                episode_messages(query, turns[: k + 1], refine_instruction, system_prompt),
                False,
            )
            end = len(done)
        else:
            end = len(full)
        spans.append((len(prompt), end))
    return full, spans
