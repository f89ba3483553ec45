"""The config package's layout: one module per stage, everything re-exported, cheap to import."""

import inspect
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

import ptr_ray.config as config
from ptr_ray.config import (
    ConfigError,
    ServeConfig,
    TrainConfig,
    dump_config,
    load_config,
    one_line_error,
    read_yaml,
)

REPO = Path(__file__).resolve().parents[2]
STAGE_MODULES = ["common", "smoke", "datagen", "train", "serve", "eval", "pipeline"]


def _config_classes():
    for name in STAGE_MODULES:
        mod = import_module(f"ptr_ray.config.{name}")
        for cls_name, cls in inspect.getmembers(mod, inspect.isclass):
            if issubclass(cls, BaseModel) and cls.__module__ == mod.__name__:
                yield cls_name, cls


def test_every_config_class_is_reexported_and_named_config():
    classes = dict(_config_classes())
    assert len(classes) >= 29
    for name, cls in classes.items():
        assert name.endswith("Config"), name
        assert getattr(config, name) is cls, name
        assert name in config.__all__, name
    for name in config.__all__:
        assert hasattr(config, name), name


def test_import_does_not_load_ray_fastapi_or_vllm():
    code = (
        "import sys, ptr_ray.config; "
        "print([m for m in ('ray', 'fastapi', 'vllm', 'torch') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_config_error_is_a_ptr_ray_value_error():
    from ptr_ray.errors import PtrRayValueError

    assert issubclass(ConfigError, PtrRayValueError) and issubclass(ConfigError, ValueError)


def test_dumped_train_config_has_no_test_hook(tmp_path):
    cfg = TrainConfig(dataset="d", output_dir="o")
    dump_config(cfg, tmp_path / "config.yaml")
    dumped = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert dumped["dataset"] == "d" and "fail_at_step" not in dumped
    with pytest.raises(ConfigError, match="unknown config key 'fail_at_step'"):
        load_config(TrainConfig, None, ["dataset=d", "output_dir=o", "fail_at_step=3"])


def test_serve_config_from_local_serve_file():
    path = REPO / "serve_configs/local.yaml"
    cfg = load_config(ServeConfig, path)
    assert cfg.app_name == "ptr-ray" and cfg.host == "127.0.0.1" and cfg.port == 8000
    assert cfg.engine.max_num_seqs == 32
    assert cfg.engine_deployment.max_queued_requests == 128
    assert cfg.ingress_deployment.ray_actor_options == {"num_cpus": 0.5}
    assert ServeConfig.model_validate(read_yaml(path)) == cfg
    over = load_config(ServeConfig, path, ["engine.model=other", "port=9000"])
    assert over.engine.model == "other" and over.engine.max_num_seqs == 32 and over.port == 9000


def test_serve_file_with_two_applications_is_one_line_error():
    with pytest.raises(ValidationError) as e:
        ServeConfig.model_validate({"applications": [{}, {}]})
    assert (
        one_line_error(e.value) == "a ptr-ray serve config file must hold exactly one application"
    )


def test_one_line_error_prefix_noun_and_long_values():
    with pytest.raises(ValidationError) as e:
        TrainConfig.model_validate({"dataset": "d", "output_dir": "o", "epochs": "x" * 500})
    msg = one_line_error(e.value, prefix="train.", noun="field")
    assert msg.startswith("field 'train.epochs': ") and len(msg) < 300 and msg.endswith("...)")
