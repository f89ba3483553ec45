import asyncio

import pytest

from ptr_ray.config import PromptConfig, SamplingConfig
from ptr_ray.engine import Completion, Generation
from ptr_ray.refine import arefine, is_stable, refine_batch


class ScriptedEngine:
    """Answers from a script keyed by round; records every conversation it was sent."""

    tokenizer = None
    model_path = "scripted"

    def __init__(self, script):
        self.script, self.seen = script, []

    def generate(self, conversations, sampling):
        out = []
        for conv in conversations:
            self.seen.append(conv)
            k = sum(m["role"] == "assistant" for m in conv)
            q = next(m["content"] for m in conv if m["role"] == "user")
            text = self.script[q][k]
            out.append(
                Generation([Completion(text, len(text.split()), "stop")], prompt_tokens=len(conv))
            )
        return out


def test_refine_batch_grows_conversation_and_stops_when_stable():
    eng = ScriptedEngine({"q1": ["a", "b", "c"], "q2": ["x", "X ", "y"]})
    res = refine_batch(
        eng,
        ["q1", "q2"],
        3,
        SamplingConfig(),
        PromptConfig(refine_instruction="More."),
        stop_when_stable=True,
    )
    assert res[0].answers == ["a", "b", "c"] and not res[0].stopped_early
    assert res[1].answers == ["x", "X "] and res[1].stopped_early
    third = [c for c in eng.seen if len(c) == 5][0]
    assert [m["content"] for m in third] == ["q1", "a", "More.", "b", "More."]
    assert res[0].to_dict()["final"] == "c"


def test_rounds_must_be_positive():
    with pytest.raises(ValueError):
        refine_batch(ScriptedEngine({}), ["q"], 0, SamplingConfig())


def test_arefine_yields_each_round():
    eng = ScriptedEngine({"q": ["1", "2", "2", "3"]})

    async def gen(msgs):
        return eng.generate([msgs], SamplingConfig())[0]

    async def collect():
        return [r async for r in arefine(gen, "q", 4, stop_when_stable=True)]

    rounds = asyncio.run(collect())
    assert [r.answer for r in rounds] == ["1", "2", "2"] and [r.round for r in rounds] == [1, 2, 3]
    assert is_stable("The answer\n is 4", "the answer is 4")
