"""Engine metrics settings and labels, without starting vLLM or Ray (the integration test in
test_metrics_integration.py scrapes the real thing)."""

from __future__ import annotations

import sys

import pytest

from ptr_ray.config import EngineConfig, SmokeConfig, load_config
from ptr_ray.engine.vllm import exports_metrics, metrics_kwargs
from ptr_ray.engine.vllm_metrics import (
    REPLICA_TAG,
    ROLE_TAG,
    check_role,
    role_tag_keys,
    role_tags,
)


def test_metrics_are_on_by_default_and_can_be_switched_off():
    assert EngineConfig().metrics is True
    assert load_config(SmokeConfig, None, ["engine.metrics=false"]).engine.metrics is False


def test_no_export_outside_ray_or_when_off():
    assert exports_metrics(EngineConfig(metrics=False)) is False
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        pytest.skip("Ray is initialized in this session")
    assert exports_metrics(EngineConfig()) is False  # no Ray: nowhere to export to


def test_engine_arguments_for_stats():
    cfg = EngineConfig(model="builtin:smollm2-135m")
    assert metrics_kwargs(cfg, export=False) == {}  # vLLM's own defaults, as before
    assert metrics_kwargs(cfg, export=True) == {
        "disable_log_stats": False,
        "served_model_name": "builtin:smollm2-135m",  # the model_name label: the config's name
    }


def test_metrics_switch_does_not_change_the_eval_fingerprint():
    """Turning metrics off must not make an evaluation recompute cached results."""
    from ptr_ray.config import EvalConfig
    from ptr_ray.eval.runner import fingerprint
    from ptr_ray.eval.tasks import EvalTask

    cfg = EvalConfig()
    task = EvalTask(name="t", kind="math", items=[])
    on, off = EngineConfig(), EngineConfig(metrics=False)
    assert fingerprint(cfg, on, task) == fingerprint(cfg, off, task)
    assert fingerprint(cfg, on, task) != fingerprint(cfg, EngineConfig(seed=1), task)


def test_role_tags_follow_vllm_labels_then_replica_then_role():
    keys = role_tag_keys(["model_name", "engine"])
    assert keys == ("model_name", "engine", REPLICA_TAG, ROLE_TAG)
    assert role_tag_keys(None) == (REPLICA_TAG, ROLE_TAG)
    tags = role_tags(keys, ("builtin:x", 0), "weak", "")
    assert tags == {"model_name": "builtin:x", "engine": "0", REPLICA_TAG: "", ROLE_TAG: "weak"}
    with pytest.raises(ValueError, match="expected 2 label values"):
        role_tags(keys, ("only-one",), "weak", "")


@pytest.mark.parametrize("role", ["weak", "strong", "judge", "serve", "engine", "eval-1"])
def test_roles_accepted(role):
    assert check_role(role) == role


@pytest.mark.parametrize("role", ["", "a b", 'x"y', "x" * 65, None])
def test_bad_roles_rejected(role):
    with pytest.raises(ValueError, match="role"):
        check_role(role)


def test_default_roles_and_the_build_stages_roles(monkeypatch):
    import inspect
    from types import SimpleNamespace

    import ptr_ray.engine.concurrent
    from ptr_ray.config import PromptConfig, SamplingConfig
    from ptr_ray.datagen.actors import JudgeConsistency, StrongAnswers, WeakThoughts
    from ptr_ray.engine.vllm import AsyncVLLMEngine, VLLMEngine

    assert inspect.signature(AsyncVLLMEngine).parameters["role"].default == "serve"
    assert inspect.signature(VLLMEngine).parameters["role"].default == "engine"
    roles = []

    def fake_make_engine(cfg, role="engine"):
        roles.append(role)
        return SimpleNamespace(max_model_len=512, close=lambda: None)

    monkeypatch.setattr(ptr_ray.engine.concurrent, "make_concurrent_engine", fake_make_engine)
    cfg = EngineConfig(model="fake")
    WeakThoughts(cfg, rounds=1, sampling=SamplingConfig(), prompt=PromptConfig())
    StrongAnswers(cfg, sampling=SamplingConfig(), icl_path=None, num_icl=0, prompt=PromptConfig())
    JudgeConsistency(cfg, threshold=0.5, max_tokens=4)
    assert roles == ["weak", "strong", "judge"]
