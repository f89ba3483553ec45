"""The serve config files in serve_configs/ load, and bad serve settings are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptr_ray.config import ServeConfig, load_config


@pytest.mark.parametrize("path", ["serve_configs/local.yaml", "serve_configs/gpu.yaml"])
def test_serve_config_files_load(path):
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(ServeConfig, root / path, ["port=8123", "engine.max_num_seqs=3"])
    assert cfg.port == 8123 and cfg.engine.max_num_seqs == 3
    assert (
        cfg.engine_deployment.max_queued_requests > 0
        and cfg.ingress_deployment.max_queued_requests > 0
    )
    if "gpu" in path:
        assert cfg.engine.tensor_parallel_size == 2
        assert "num_replicas" not in cfg.engine_deployment.serve_options()  # autoscaled


def test_serve_config_rejects_bad_settings():
    from ptr_ray.config import ConfigError

    with pytest.raises(ConfigError, match="default_rounds 9 > max_rounds 8"):
        load_config(ServeConfig, None, ["default_rounds=9"])
    with pytest.raises(ConfigError, match="unknown config key 'roundz'"):
        load_config(ServeConfig, None, ["roundz=3"])
    with pytest.raises(ValueError, match="unknown deployment"):
        ServeConfig.model_validate({"applications": [{"args": {}, "deployments": [{"name": "X"}]}]})
    assert json.loads(ServeConfig().model_dump_json())["engine"]["enable_prefix_caching"] is True


ROOT = Path(__file__).resolve().parents[2]


def test_shipped_cluster_config_fails_closed_without_a_key():
    """gpu.yaml listens on 0.0.0.0 and says `auth: required`: no key, no server, even where
    the ingress cannot see the bind address (`serve deploy` passes only the app's args)."""
    from ptr_ray.serve.auth import AuthConfigError, resolve_auth

    cfg = load_config(ServeConfig, ROOT / "serve_configs/gpu.yaml")
    assert cfg.host == "0.0.0.0" and cfg.auth == "required"
    for host in ("0.0.0.0", "127.0.0.1"):
        with pytest.raises(AuthConfigError, match=r"\$PTR_API_KEY"):
            resolve_auth(cfg, api_key="", bind_host=host)
    assert resolve_auth(cfg, api_key="k") == ("k",)
    # its limits leave room for its defaults, and its deadline comes before the proxy's
    assert cfg.default_rounds * cfg.default_max_tokens <= cfg.max_total_tokens
    assert cfg.max_concurrent_per_key and cfg.request_timeout_s < 600
    local = load_config(ServeConfig, ROOT / "serve_configs/local.yaml")
    assert local.host == "127.0.0.1" and local.auth == "auto"
    assert resolve_auth(local, api_key="") == ()  # loopback: a key is optional


def test_cluster_recipe_sets_the_api_key_on_every_node():
    import yaml

    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert cluster["file_mounts"]["~/.ptr-ray/api_key"] == "~/.ptr-ray/api_key"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in cluster[key] if "ray start" in c)
        assert "test -s ~/.ptr-ray/api_key || {" in start and "exit 1" in start
        # the variable is set on `ray start` itself, so every worker and replica inherits it
        assert "PTR_API_KEY=$(cat ~/.ptr-ray/api_key)" in start
        assert start.index("PTR_API_KEY=") < start.index("ray start")


def test_rayservice_requires_the_api_key_secret():
    import yaml

    svc = yaml.safe_load((ROOT / "k8s/rayservice.yaml").read_text())
    ray = svc["spec"]["rayClusterConfig"]
    groups = [ray["headGroupSpec"], *ray["workerGroupSpecs"]]
    containers = [c for g in groups for c in g["template"]["spec"]["containers"]]
    assert containers
    for c in containers:
        env = {e["name"]: e for e in c["env"]}
        ref = env["PTR_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "ptr-ray-api-key", "key": "api_key", "optional": False}, c["name"]
    serve_cfg = yaml.safe_load(svc["spec"]["serveConfigV2"])
    assert serve_cfg["applications"][0]["args"]["auth"] == "required"
