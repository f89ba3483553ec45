"""The serve config files in serve_configs/ load, and bad serve settings are refused."""

from __future__ import annotations

import json

import pytest

from ptr_ray.config import ServeConfig, load_config


@pytest.mark.parametrize("path", ["serve_configs/local.yaml", "serve_configs/gpu.yaml"])
def test_serve_config_files_load(path):
    from pathlib import Path

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
