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
