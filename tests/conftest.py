"""Shared fixtures: a tiny random chat model made locally, and one local Ray instance."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from ptr_ray.runtime_env import apply_env, ray_env_vars

apply_env(cpu=True)  # the one table of telemetry/runtime switches (ptr_ray/runtime_env.py)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama chat model (head size 32, loadable by vLLM on CPU)."""
    from ptr_ray.testing import make_tiny_chat_model

    return make_tiny_chat_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def ray_local():
    """One private local Ray instance for the whole session (never attaches to another).

    The dashboard stays off here (ptr-ray's default is on): its web server and modules cost
    every test session seconds and memory on 2 cores, and only the browser test looks at it
    (tests/observability/test_dashboard_browser.py starts its own Ray with it on)."""
    import ray

    tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short path: unix socket limits
    ray.init(
        address="local",
        num_cpus=8,
        include_dashboard=False,
        _temp_dir=tmp,
        log_to_driver=False,
        runtime_env={"env_vars": ray_env_vars()},
    )
    yield ray
    ray.shutdown()
