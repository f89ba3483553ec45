"""The strong model's prompt: worked examples of turning weak drafts into a better answer.

The strong model sees the query and the weak thoughts as *material*, plus a few in-context
examples of (query, flawed drafts, improved answer), and writes only the final answer. The
dataset record keeps query, thoughts and answer apart, and training renders them with
:func:`ptr_ray.prompts.episode_messages`; this prompt is a construction-time tool only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ptr_ray import prompts
from ptr_ray.errors import PtrRayValueError
from ptr_ray.jsonl import BadLine, iter_lines, parse_line

STRONG_SYSTEM = (
    "You improve answers. You are given a user's query and draft answers written by a weaker "
    "assistant. The drafts may contain mistakes, gaps or irrelevant text. Use what is correct "
    "in them, fix what is wrong, and write one complete, accurate and helpful final answer to "
    "the query. Reply with the final answer only: do not mention the drafts."
)


class IclError(PtrRayValueError):
    """An in-context examples file that cannot be used."""


@dataclass(frozen=True)
class IclExample:
    query: str
    thoughts: tuple[str, ...]
    answer: str


def packaged_examples_path() -> Path:
    return Path(str(resources.files("ptr_ray").joinpath("assets", "icl_examples.jsonl")))


def load_examples(path: str | Path | None = None) -> list[IclExample]:
    """Worked examples from a JSONL file (``query``, ``thoughts`` list, ``answer`` per line).

    The file is a user's (``strong.icl_examples``), so it is read through
    :mod:`ptr_ray.jsonl` like every JSONL input: a byte-order mark is fine, and a line that is
    not UTF-8 or not JSON (nested too deeply included) is one :class:`IclError` naming file and
    line, never a ``UnicodeDecodeError`` or ``RecursionError`` that names neither.
    """
    p = Path(path) if path else packaged_examples_path()
    if not p.is_file():
        raise IclError(f"in-context examples file not found: {p}")
    out: list[IclExample] = []
    for n, raw in iter_lines(p):
        try:
            row = parse_line(raw)
        except BadLine as e:
            raise IclError(f"{p}:{n}: {e}") from None
        if not isinstance(row, dict) or not isinstance(row.get("thoughts"), list):
            raise IclError(
                f"{p}:{n}: not a worked example: each line must be a JSON object with "
                '"query", "thoughts" (a list) and "answer"'
            )
        try:
            ex = IclExample(
                str(row["query"]), tuple(str(t) for t in row["thoughts"]), str(row["answer"])
            )
        except KeyError as e:
            raise IclError(f"{p}:{n}: not a worked example: no {e} field") from None
        if not ex.query.strip() or not ex.answer.strip() or not ex.thoughts:
            raise IclError(f"{p}:{n}: query, thoughts and answer must be non-empty")
        out.append(ex)
    if not out:
        raise IclError(f"{p} holds no examples")
    return out


def material(query: str, thoughts: Sequence[str]) -> str:
    """The user turn showing a query and its drafts."""
    drafts = "\n\n".join(f"[Draft {i}]\n{t.strip()}" for i, t in enumerate(thoughts, 1))
    return f"Query:\n{query.strip()}\n\nDrafts:\n{drafts}\n\nWrite the improved final answer to the query."


def strong_messages(
    query: str,
    thoughts: Sequence[str],
    examples: Sequence[IclExample],
    num_examples: int,
    system_prompt: str = STRONG_SYSTEM,
) -> list[prompts.Message]:
    """System instruction, ``num_examples`` worked examples as chat turns, then this query."""
    msgs: list[prompts.Message] = [{"role": "system", "content": system_prompt}]
    for ex in list(examples)[:num_examples]:
        msgs.append({"role": "user", "content": material(ex.query, ex.thoughts)})
        msgs.append({"role": "assistant", "content": ex.answer})
    msgs.append({"role": "user", "content": material(query, thoughts)})
    return msgs
