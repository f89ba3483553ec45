import time

import pytest

from ptr_ray.config import EngineConfig, SamplingConfig
from ptr_ray.engine import HFEngine, PromptTooLongError, make_engine
from ptr_ray.engine.hf import _apply_stop
from ptr_ray.errors import PtrRayValueError

CONV = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def hf_engine(tiny_model_dir):
    return HFEngine(EngineConfig(model=str(tiny_model_dir), backend="hf", dtype="float32"))


def test_hf_engine_n_samples_lengths_and_reasons(hf_engine):
    gens = hf_engine.generate(
        [
            CONV,
            CONV
            + [{"role": "assistant", "content": "Paris"}, {"role": "user", "content": "Sure?"}],
        ],
        SamplingConfig(n=3, temperature=1.0, top_k=20, max_tokens=7, seed=1),
    )
    assert len(gens) == 2 and all(len(g.completions) == 3 for g in gens)
    assert gens[1].prompt_tokens > gens[0].prompt_tokens
    for c in gens[0].completions:
        assert 1 <= c.tokens <= 7 and c.finish_reason in ("stop", "length")
        assert c.finish_reason == "stop" or c.tokens == 7


def test_hf_engine_greedy_is_deterministic(hf_engine):
    s = SamplingConfig(max_tokens=6)
    assert hf_engine.generate([CONV], s)[0].text == hf_engine.generate([CONV], s)[0].text


def test_prompt_longer_than_context_is_clear_error(tiny_model_dir):
    eng = HFEngine(EngineConfig(model=str(tiny_model_dir), backend="hf", max_model_len=16))
    with pytest.raises(ValueError, match="context") as err:
        eng.generate([CONV], SamplingConfig(max_tokens=2))
    assert isinstance(err.value, PromptTooLongError) and isinstance(err.value, PtrRayValueError)


def test_stop_strings():
    assert _apply_stop("abc STOP def", ["STOP"]) == ("abc ", True)
    assert _apply_stop("abc", ["zz"]) == ("abc", False)


@pytest.mark.integration
@pytest.mark.parametrize("source", ["tiny", "builtin:smollm2-135m"])
def test_vllm_generates(source, tiny_model_dir):
    model = str(tiny_model_dir) if source == "tiny" else source
    eng = make_engine(EngineConfig(model=model, max_model_len=2048))
    try:
        s = SamplingConfig(n=2, temperature=0.9, top_p=0.9, top_k=30, max_tokens=12, seed=0)
        gens = eng.generate([CONV, CONV], s)
        assert len(gens) == 2 and all(len(g.completions) == 2 for g in gens)
        assert all(1 <= c.tokens <= 12 for g in gens for c in g.completions)
        assert gens[0].prompt_tokens == gens[1].prompt_tokens > 5
        greedy = SamplingConfig(max_tokens=24)
        a = eng.generate([CONV], greedy)[0]
        assert a.text == eng.generate([CONV], greedy)[0].text
        assert a.completions[0].tokens > 0
        if source != "tiny":  # a random tiny model may well emit only whitespace
            assert a.text.strip()
        # A repeated long prompt is served from the prefix cache (in whole KV blocks).
        long = [{"role": "user", "content": "Count with me: one two three four five. " * 25}]
        first, again = eng.generate([long], greedy)[0], eng.generate([long], greedy)[0]
        assert first.prompt_tokens > 256
        assert again.cached_tokens >= 128 > first.cached_tokens
    finally:
        eng.close()


def test_prompt_encoder_runs_off_the_event_loop(tiny_tokenizer):
    """A serving replica renders and tokenizes each round in one worker thread: the event loop
    (every other request's token stream) keeps running meanwhile, and the ids are the same."""
    import asyncio
    import threading

    from ptr_ray import prompts
    from ptr_ray.engine import PromptEncoder

    class SlowTokenizer:
        """The tiny tokenizer, slowed down, recording the thread that called it."""

        def __init__(self) -> None:
            self.threads: set[int] = set()

        def __getattr__(self, name):
            return getattr(tiny_tokenizer, name)

        def apply_chat_template(self, *args, **kwargs):
            self.threads.add(threading.get_ident())
            time.sleep(0.3)
            return tiny_tokenizer.apply_chat_template(*args, **kwargs)

        def __call__(self, *args, **kwargs):
            return tiny_tokenizer(*args, **kwargs)

    slow = SlowTokenizer()
    encoder = PromptEncoder(slow, max_model_len=1024)

    async def run():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        ids = await asyncio.gather(encoder.encode(CONV), encoder.encode(CONV))
        t.cancel()
        return ids, ticks, threading.get_ident()

    try:
        (a, b), ticks, loop_thread = asyncio.run(run())
    finally:
        encoder.close()
    assert a == b == prompts.encode(tiny_tokenizer, CONV, add_generation_prompt=True)
    assert ticks >= 5  # ~60 in 0.6 s of tokenizing; a blocked loop would tick at most once
    assert len(slow.threads) == 1 and loop_thread not in slow.threads
    with pytest.raises(PromptTooLongError):
        asyncio.run(PromptEncoder(tiny_tokenizer, max_model_len=4).encode(CONV))


def test_token_prompts_are_taken_as_they_are_and_length_checked(hf_engine):
    """A stage that tokenized a prompt (for its context check) hands the engine the ids: the
    engine generates from exactly those, and still refuses ids that leave no room."""
    from ptr_ray.engine import TokenPrompt, checked_prompt_ids

    ids = checked_prompt_ids(hf_engine.tokenizer, CONV, 512)
    assert checked_prompt_ids(None, TokenPrompt(ids), 512) == ids  # no tokenizer needed
    with pytest.raises(PromptTooLongError):
        checked_prompt_ids(None, TokenPrompt(ids), len(ids))
    s = SamplingConfig(max_tokens=6)
    from_ids, from_conv = hf_engine.generate([TokenPrompt(ids), CONV], s)
    assert from_ids.text == from_conv.text and from_ids.prompt_tokens == len(ids)


def test_threaded_engine_keeps_the_loop_free_and_matches_the_blocking_engine(hf_engine):
    """The transformers engine behind the concurrent interface: calls from many coroutines
    run one at a time on one worker thread and give what the blocking engine gives."""
    import asyncio

    from ptr_ray.engine import TokenPrompt
    from ptr_ray.engine.concurrent import ThreadedEngine

    class Keep(ThreadedEngine):
        def close(self) -> None:  # the module's engine outlives this wrapper
            self._pool.shutdown(wait=True)

    eng = Keep(hf_engine)
    s = SamplingConfig(max_tokens=6)
    want = hf_engine.generate([CONV], s)[0].text

    async def go():
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        ids = await eng.encode(CONV)
        gens = await asyncio.gather(*(eng.complete(TokenPrompt(ids), s) for _ in range(3)))
        ticker.cancel()
        return gens, ticks

    gens, ticks = asyncio.run(go())
    eng.close()
    assert [g.text for g in gens] == [want] * 3
    assert ticks > 3  # the event loop ran while the engine worked


@pytest.mark.integration
def test_async_vllm_complete_takes_ids_and_several_samples(tiny_model_dir):
    """What the build's actors await per row: the ids they checked, ``n`` samples, and many
    rows in flight at once giving what one at a time gives (greedy)."""
    import asyncio

    from ptr_ray.engine import AsyncVLLMEngine, TokenPrompt

    eng = AsyncVLLMEngine(EngineConfig(model=str(tiny_model_dir), max_model_len=512), role="weak")
    try:
        greedy = SamplingConfig(max_tokens=8)

        async def go():
            ids = await eng.encode(CONV)
            alone = await eng.complete(TokenPrompt(ids), greedy)
            sampled, *together = await asyncio.gather(
                eng.complete(
                    TokenPrompt(ids), SamplingConfig(n=3, temperature=1.0, max_tokens=8, seed=0)
                ),
                *(eng.complete(CONV, greedy) for _ in range(4)),
            )
            with pytest.raises(PromptTooLongError):
                await eng.encode([{"role": "user", "content": "word " * 600}])
            return ids, alone, sampled, together

        ids, alone, sampled, together = asyncio.run(go())
        assert alone.prompt_tokens == len(ids) and 1 <= alone.completions[0].tokens <= 8
        assert len(sampled.completions) == 3 and sampled.prompt_tokens == len(ids)
        assert all(g.text == alone.text for g in together)
    finally:
        eng.close()
