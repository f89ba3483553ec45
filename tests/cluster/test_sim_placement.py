"""Placement knobs by custom resources (no Ray started): what the simulated-cluster tests
(tests/cluster/sim, ``make test-cluster``) rely on, checked where it is cheap.

``engine.resources`` (build pools, Serve engine replicas, the evaluation task) and
``scaling.resources`` (Ray Train workers) pin work to nodes advertising a custom resource, the
way cluster.yaml's node types are told apart. They decide where work runs, never its results:
a training run resumes across a change, and evaluation reuses its results.
"""

from __future__ import annotations

import pytest

from ptr_ray.config import ConfigError, EngineConfig, TrainConfig, load_config
from ptr_ray.train.resume import config_changes


@pytest.mark.parametrize("section", ["engine", "scaling"])
def test_resources_reject_builtin_names_and_negative_amounts(section):
    from ptr_ray.config.serve import ServeConfig

    def load(value: str):
        if section == "engine":
            return load_config(ServeConfig, None, [f"engine.resources={value}"])
        return load_config(
            TrainConfig, None, ["dataset=d", "output_dir=o", f"scaling.resources={value}"]
        )

    ok = load("{pool_vllm: 1, accelerator_type_L4: 0.5}")
    got = ok.engine.resources if section == "engine" else ok.scaling.resources
    assert got == {"pool_vllm": 1.0, "accelerator_type_L4": 0.5}
    with pytest.raises(ConfigError, match=r"'CPU' is a built-in Ray resource.*num_cpus"):
        load("{CPU: 2}")
    with pytest.raises(ConfigError, match=r"resource 'pool_vllm' must be >= 0"):
        load("{pool_vllm: -1}")


def test_build_pools_ask_for_the_engines_custom_resources():
    from ptr_ray.datagen.dataflow import _resources

    assert _resources(EngineConfig()) == {"num_cpus": 1.0}
    assert _resources(EngineConfig(num_cpus=2, resources={"pool_vllm": 1})) == {
        "num_cpus": 2.0,
        "resources": {"pool_vllm": 1.0},
    }


def test_serve_engine_replicas_ask_for_the_engines_custom_resources():
    from ptr_ray.config.serve import ServeConfig
    from ptr_ray.serve.app import build_application

    def engine_actor_options(settings: dict) -> dict:
        app = build_application(ServeConfig.model_validate(settings))
        engine_app = app._bound_deployment.init_args[0]  # ingress.bind(engine.bind(...), ...)
        return dict(engine_app._bound_deployment.ray_actor_options)

    opts = engine_actor_options({"engine": {"resources": {"pool_vllm": 1}}})
    assert opts["resources"] == {"pool_vllm": 1.0} and opts["num_cpus"] == 1.0
    # ray_actor_options of the deployment still has the last word
    opts = engine_actor_options(
        {
            "engine": {"resources": {"pool_vllm": 1}},
            "engine_deployment": {"ray_actor_options": {"resources": {"pool_l4": 1}}},
        }
    )
    assert opts["resources"] == {"pool_l4": 1}
    assert "resources" not in engine_actor_options({})


def test_placement_changes_neither_the_run_nor_the_results():
    from ptr_ray.config import EvalConfig
    from ptr_ray.eval.runner import fingerprint
    from ptr_ray.eval.tasks import packaged_task

    a = TrainConfig(dataset="d", output_dir="o")
    b = a.model_copy(update={"scaling": a.scaling.model_copy(update={"resources": {"p": 1.0}})})
    assert config_changes(a.model_dump(mode="json"), b.model_dump(mode="json")) == []
    assert config_changes(b.model_dump(mode="json"), a.model_dump(mode="json")) == []

    cfg = EvalConfig(tasks=["arc_challenge"], limit=2)
    task = packaged_task("arc_challenge", limit=2, seed=0)
    plain, pinned = EngineConfig(), EngineConfig(resources={"pool_vllm": 1})
    assert fingerprint(cfg, plain, task) == fingerprint(cfg, pinned, task)
