"""The one mapping from our SamplingConfig to vLLM's SamplingParams (both vLLM engines use it)."""

import sys

import pytest

from ptr_ray.config import SamplingConfig


def test_engine_package_imports_without_vllm_or_torch():
    import subprocess

    code = (
        "import sys, ptr_ray.engine; "
        "print(sorted(m for m in ('vllm', 'torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sampling_params_from_config():
    pytest.importorskip("vllm")
    from ptr_ray.engine.vllm import sampling_params

    cfg = SamplingConfig(
        n=3, temperature=0.7, top_p=0.9, top_k=0, max_tokens=33, stop=["\n\n", "END"], seed=5
    )
    p = sampling_params(cfg)
    assert (p.n, p.temperature, p.top_p, p.max_tokens, p.seed) == (3, 0.7, 0.9, 33, 5)
    assert p.top_k == -1  # our 0 (no top-k) is vLLM's "disabled"
    assert list(p.stop) == ["\n\n", "END"]

    p = sampling_params(SamplingConfig(temperature=1.0, top_k=20))  # greedy would reset top_k
    assert p.top_k == 20 and not p.stop and p.seed is None


def test_sampling_params_overrides_for_the_async_engine():
    pytest.importorskip("vllm")
    from vllm.sampling_params import RequestOutputKind

    from ptr_ray.engine.vllm import sampling_params

    p = sampling_params(
        SamplingConfig(n=4, max_tokens=100), n=1, max_tokens=7, output_kind=RequestOutputKind.DELTA
    )
    assert (p.n, p.max_tokens, p.output_kind) == (1, 7, RequestOutputKind.DELTA)
