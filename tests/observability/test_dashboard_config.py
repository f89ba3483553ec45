"""The dashboard's switches and names, without starting Ray (issue 14, part 1).

What a user gets by default (a loopback dashboard, its URL in the log), what the switch turns
off, and the names the dashboard shows for the build's actor pools and dataset. A fake ``ray``
module stands in for Ray: these are rules about ptr-ray's code; the browser test
(test_dashboard_browser.py) checks the same names on a real dashboard.
"""

from __future__ import annotations

import logging
import sys
import types

import cloudpickle
import pytest

from ptr_ray.config import BuildConfig, ConfigError, RayConfig, load_config


class FakeContext:
    def __init__(self, url: str | None) -> None:
        self.dashboard_url = url


class FakeRay(types.ModuleType):
    """Just what init_ray touches; ``init`` answers with the URL a real dashboard would."""

    def __init__(self, url: str | None = "127.0.0.1:8266") -> None:
        super().__init__("ray")
        self.url = url
        self.initialized = False
        self.init_kwargs: dict | None = None
        self.node = "node-1"

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, **kwargs) -> FakeContext:
        self.init_kwargs = kwargs
        self.initialized = True
        return FakeContext(self.url)

    def shutdown(self) -> None:
        self.initialized = False

    def get_runtime_context(self):
        return types.SimpleNamespace(get_node_id=lambda: self.node)

    @staticmethod
    def LoggingConfig(**kwargs):  # noqa: N802 - Ray's name
        return kwargs


@pytest.fixture
def fake_ray(monkeypatch):
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    import ptr_ray.ray_utils as ray_utils

    monkeypatch.setattr(ray_utils, "_dashboard", None)
    return fake


def test_dashboard_is_on_by_default_and_loopback_only():
    cfg = RayConfig()
    assert cfg.include_dashboard and cfg.dashboard_host == "127.0.0.1"
    assert cfg.dashboard_port is None  # 8265, or Ray's next free port (parallel instances)
    assert RayConfig(dashboard_host="localhost").dashboard_host == "127.0.0.1"
    assert RayConfig(dashboard_host="::1").dashboard_host == "::1"


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "example.org"])
def test_a_public_dashboard_is_refused_in_one_line(host):
    with pytest.raises(ConfigError) as err:
        load_config(BuildConfig, None, [f"ray.dashboard_host='{host}'"])
    msg = str(err.value)
    assert "ray.dashboard_host" in msg and "loopback" in msg and "\n" not in msg


def test_the_switch_turns_it_off_from_the_command_line():
    cfg = load_config(BuildConfig, None, ["ray.include_dashboard=false"])
    assert cfg.ray.include_dashboard is False


def test_local_instance_starts_the_dashboard_on_loopback_and_logs_its_url(fake_ray, caplog):
    from ptr_ray.ray_utils import dashboard_url, init_ray, log_dashboard

    caplog.set_level(logging.INFO, logger="ptr_ray.ray_utils")
    assert init_ray(RayConfig(dashboard_port=8300))
    kw = fake_ray.init_kwargs
    assert kw["include_dashboard"] is True and kw["dashboard_host"] == "127.0.0.1"
    assert kw["dashboard_port"] == 8300
    # The URL Ray reports (its port, not the one asked for: 8265 may be taken), with a scheme.
    assert dashboard_url() == "http://127.0.0.1:8266"
    assert "Ray dashboard (local instance): http://127.0.0.1:8266" in caplog.text
    assert "#/actors" in caplog.text and "#/serve" in caplog.text
    caplog.clear()
    assert log_dashboard() == "http://127.0.0.1:8266"  # what each stage banner repeats
    assert "Ray dashboard: http://127.0.0.1:8266" in caplog.text


def test_dashboard_off_passes_no_dashboard_args_and_prints_no_url(fake_ray, caplog):
    """Ray reports its API server's address even without the web UI: not a URL to print."""
    from ptr_ray.ray_utils import dashboard_url, init_ray

    caplog.set_level(logging.INFO, logger="ptr_ray.ray_utils")
    assert init_ray(RayConfig(include_dashboard=False))
    kw = fake_ray.init_kwargs
    assert kw["include_dashboard"] is False and "dashboard_host" not in kw
    assert dashboard_url() is None and "Ray dashboard" not in caplog.text


def test_joining_a_cluster_logs_the_clusters_dashboard(fake_ray, monkeypatch, caplog):
    from ptr_ray.ray_utils import dashboard_url, init_ray

    caplog.set_level(logging.INFO, logger="ptr_ray.ray_utils")
    fake_ray.url = "http://10.0.0.5:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.5:8265")
    assert init_ray(RayConfig(include_dashboard=False))  # a local-only switch
    assert "include_dashboard" not in fake_ray.init_kwargs
    assert dashboard_url() == "http://10.0.0.5:8265"
    assert "Ray dashboard (cluster): http://10.0.0.5:8265" in caplog.text


def test_no_url_for_another_instance_or_after_shutdown(fake_ray):
    """A stage banner after the instance stopped, or in a Ray someone else started, prints
    nothing rather than a stale URL."""
    from ptr_ray.ray_utils import dashboard_url, init_ray, ray_session

    with ray_session(RayConfig()):
        assert dashboard_url() == "http://127.0.0.1:8266"
    assert dashboard_url() is None
    init_ray(RayConfig())
    fake_ray.node = "node-2"  # Ray was restarted behind our back
    assert dashboard_url() is None


def test_stage_reuse_ignores_how_ray_is_reached(tmp_path):
    """Turning the dashboard off (or any ray.* key) must not rebuild a finished dataset."""
    from ptr_ray.config import dump_config
    from ptr_ray.pipeline import same_config

    saved = tmp_path / "config.yaml"
    dump_config(BuildConfig(), saved)
    off = load_config(BuildConfig, None, ["ray.include_dashboard=false", "ray.num_cpus=3"])
    assert same_config(saved, off)
    assert not same_config(saved, off.model_copy(update={"seed": 1}))


@pytest.mark.parametrize(
    ("model", "label"),
    [
        ("builtin:smollm2-135m", "smollm2-135m"),
        ("Qwen/Qwen2.5-1.5B-Instruct", "Qwen2.5-1.5B-Instruct"),
        ("/runs/exp/train-ptr/model/", "train-ptr-model"),
        ("/tmp/pytest-1/tiny-model0", "tiny-model0"),
        ("weird name:v1", "weird-name-v1"),
    ],
)
def test_model_labels_are_short_and_safe(model, label):
    from ptr_ray.datagen.dataflow import model_label

    assert model_label(model) == label


def test_named_stage_keeps_the_class_and_travels_by_value():
    """Ray Data names the pool ``MapBatches(<class name>)``; the renamed class must still be
    the stage (isinstance, methods) on the worker after cloudpickle."""
    from ptr_ray.datagen.actors import StrongAnswers, WeakThoughts
    from ptr_ray.datagen.dataflow import named_stage

    cls = named_stage(WeakThoughts, "smollm2-135m")
    assert cls.__name__ == "WeakThoughts[smollm2-135m]" and issubclass(cls, WeakThoughts)
    back = cloudpickle.loads(cloudpickle.dumps(cls))
    assert back.__name__ == cls.__name__ and issubclass(back, WeakThoughts)
    assert back.row is WeakThoughts.row
    assert named_stage(StrongAnswers, "x").__name__ == "StrongAnswers[x]"


def test_build_pipeline_names_every_pool_and_the_dataset(monkeypatch, tmp_path):
    """The operator names the dashboard's Jobs/Actors views show, from the build's plan (no
    Ray started: the plan is lazy and its ``map_batches`` calls are recorded)."""
    from ptr_ray.datagen import dataflow

    calls: list[str] = []

    class FakeDataset:
        name: str | None = None

        def map_batches(self, fn, **kwargs):
            calls.append(fn.__name__)
            return self

        def repartition(self, **kwargs):
            return self

        def set_name(self, name):
            self.name = name

    fake = types.ModuleType("ray")
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(dataflow, "_compute", lambda pool, engine=True: None)
    engine = {"model": "builtin:smollm2-135m"}
    cfg = BuildConfig.model_validate(
        {
            "weak": {"models": [engine, {"model": "/m/tiny"}], "num_thoughts": 2},
            "strong": {"model": {"model": "builtin:qwen2.5-coder-0.5b"}},
            "consistency": {"method": "judge"},
            "output": {"path": str(tmp_path / "my data")},
        }
    )
    ds = dataflow.build_dataset(cfg, FakeDataset())  # the prepared candidates' dataset
    assert calls == [
        "from_candidates",
        "WeakThoughts[smollm2-135m+tiny]",  # one pool, the two models take turns
        "StrongAnswers[qwen2.5-coder-0.5b]",
        "JudgeConsistency[qwen2.5-coder-0.5b]",
    ]
    assert ds.name == "ptr-build-my-data"
    calls.clear()
    dataflow.build_dataset(
        cfg.model_copy(
            update={"consistency": cfg.consistency.model_copy(update={"method": "embedding"})}
        ),
        FakeDataset(),
    )
    assert calls[-1].startswith("EmbeddingConsistency[")


def test_the_url_line_says_how_to_log_in_when_ray_uses_a_token(fake_ray, monkeypatch, caplog):
    """Ray 2.60 turns token auth on for a new local instance: the web UI asks for the token."""
    from ptr_ray.ray_utils import init_ray, log_dashboard

    caplog.set_level(logging.INFO, logger="ptr_ray.ray_utils")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    init_ray(RayConfig())
    assert "ray get-auth-token" not in caplog.text
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    log_dashboard()
    assert "ray get-auth-token" in caplog.text
