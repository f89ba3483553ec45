"""Who starts and stops Ray (ray_session), what init_ray hands to Ray, the one env table.

A fake ``ray`` module stands in for Ray: these are rules about our code, not about Ray.
"""

from __future__ import annotations

import logging
import os
import sys
import types

import pytest

from ptr_ray.config import RayConfig
from ptr_ray.runtime_env import CPU_DEFAULTS, DEFAULTS, FORWARDED, apply_env, ray_env_vars


class FakeRay(types.ModuleType):
    def __init__(self, initialized: bool = False) -> None:
        super().__init__("ray")
        self.initialized = initialized
        self.init_kwargs: dict | None = None
        self.shutdowns = 0

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, **kwargs) -> None:
        self.init_kwargs = kwargs
        self.initialized = True
        # Like Ray: the LoggingConfig is applied to the driver too (a second root handler).
        logging.getLogger().addHandler(logging.NullHandler())

    def shutdown(self) -> None:
        self.shutdowns += 1
        self.initialized = False

    @staticmethod
    def LoggingConfig(**kwargs):  # noqa: N802 - Ray's name
        return ("LoggingConfig", kwargs)


@pytest.fixture
def env(monkeypatch):
    """os.environ as a copy: what the code under test writes there is dropped afterwards."""
    monkeypatch.setattr(os, "environ", os.environ.copy())
    return os.environ


@pytest.fixture
def fake_ray(monkeypatch, env):
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return fake


def test_session_starts_and_stops_ray_when_not_initialized(fake_ray):
    from ptr_ray.ray_utils import ray_session

    with ray_session(RayConfig(num_cpus=3), min_cpus=5) as started:
        assert started and fake_ray.initialized and fake_ray.shutdowns == 0
    assert fake_ray.shutdowns == 1 and not fake_ray.initialized
    kw = fake_ray.init_kwargs
    assert kw["address"] == "local" and kw["num_cpus"] == 5  # raised to what the stage needs
    assert kw["logging_config"] == ("LoggingConfig", {"encoding": "TEXT", "log_level": "INFO"})


def test_session_uses_a_running_instance_and_leaves_it_running(fake_ray):
    from ptr_ray.ray_utils import ray_session

    fake_ray.initialized = True
    with ray_session(RayConfig()) as started:
        assert started is False
    assert fake_ray.init_kwargs is None and fake_ray.shutdowns == 0 and fake_ray.initialized


def test_session_stops_what_it_started_even_on_error(fake_ray):
    from ptr_ray.ray_utils import ray_session

    with pytest.raises(RuntimeError), ray_session(RayConfig()):
        raise RuntimeError("stage failed")
    assert fake_ray.shutdowns == 1


def test_nested_sessions_stop_once_at_the_outer_one(fake_ray):
    """The pipeline's session around the stages' own sessions: one start, one stop."""
    from ptr_ray.ray_utils import ray_session

    with ray_session(RayConfig()) as outer:
        with ray_session(RayConfig()) as inner:
            assert outer and not inner
        assert fake_ray.initialized and fake_ray.shutdowns == 0
    assert fake_ray.shutdowns == 1


def test_init_ray_joins_the_job_cluster_and_keeps_driver_logging(fake_ray, monkeypatch):
    from ptr_ray.ray_utils import init_ray

    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    root = logging.getLogger()
    before = list(root.handlers)
    assert init_ray(RayConfig(address="local"), env_vars={"EXTRA": "1"})
    assert fake_ray.init_kwargs["address"] == "http://head:8265"
    assert "num_cpus" not in fake_ray.init_kwargs
    env = fake_ray.init_kwargs["runtime_env"]["env_vars"]
    assert env["EXTRA"] == "1" and env["RAY_USAGE_STATS_ENABLED"] == "0"
    if before:  # the entry point had configured logging: Ray's extra handler is removed
        assert root.handlers == before


def test_env_table_defaults_exported_values_and_forwarding(env):
    # Start from a clean slate: earlier tests (vLLM engines) may have exported some of these.
    for key in [*DEFAULTS, *CPU_DEFAULTS, *FORWARDED]:
        env.pop(key, None)
    env["VLLM_LOGGING_LEVEL"] = "INFO"  # a user's export wins
    env["PTR_RAY_CACHE"] = "/cache"  # forwarded to workers
    workers = ray_env_vars({"DS_ACCELERATOR": "cpu"})
    assert workers["VLLM_LOGGING_LEVEL"] == "INFO" and workers["DO_NOT_TRACK"] == "1"
    assert workers["PTR_RAY_CACHE"] == "/cache" and workers["DS_ACCELERATOR"] == "cpu"
    assert "HF_HUB_OFFLINE" not in workers

    apply_env({"VLLM_CPU_KVCACHE_SPACE": "2"}, cpu=True)
    assert env["VLLM_NO_USAGE_STATS"] == "1" and env["VLLM_LOGGING_LEVEL"] == "INFO"
    assert env["VLLM_HOST_IP"] == "127.0.0.1" and env["VLLM_CPU_KVCACHE_SPACE"] == "2"


def test_agent_port_is_rays_default():
    from ray._private import ray_constants

    from ptr_ray.ray_utils import DASHBOARD_AGENT_PORT

    assert ray_constants.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT == DASHBOARD_AGENT_PORT


def test_a_taken_agent_port_is_said_before_ray_starts(fake_ray, monkeypatch, caplog):
    """Another Ray instance's agent on the default port breaks this instance's job API (HTTP
    500 'No available agent'): init_ray says so, with the fix, before starting Ray."""
    import socket

    from ptr_ray import ray_utils

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        monkeypatch.setattr(ray_utils, "DASHBOARD_AGENT_PORT", port)
        assert ray_utils.port_in_use(port)
        with caplog.at_level(logging.WARNING, logger="ptr_ray.ray_utils"):
            ray_utils.init_ray(RayConfig(include_dashboard=True))
        assert f"port {port} (Ray's dashboard agent) is taken" in caplog.text
        assert "--dashboard-agent-listen-port" in caplog.text
        caplog.clear()
        fake_ray.initialized = False
        ray_utils.init_ray(RayConfig(include_dashboard=False))  # no dashboard: no job API
        assert "is taken" not in caplog.text
    assert not ray_utils.port_in_use(port)
