"""ptr_ray.serve.config_file: a Serve config file of the wrong shape is one ConfigError that
names the key (and, through load_config, the file), never an AttributeError."""

from __future__ import annotations

import pytest

from ptr_ray.config import ConfigError, ServeConfig, load_config
from ptr_ray.serve.config_file import serve_file_to_settings


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("applications:\n- deployments: [3]\n", "'applications.0.deployments.0'"),
        ("applications:\n- deployments: {PTREngine: {}}\n", "'applications.0.deployments'"),
        ("applications:\n- deployments:\n  - name: [x]\n", "'applications.0.deployments.0.name'"),
        ("applications:\n- args: [1]\n", "'applications.0.args'"),
        ("applications:\n- 3\n", "'applications.0'"),
        ("applications: 3\n", "'applications'"),
        ("http_options: [1]\napplications:\n- {}\n", "'http_options'"),
        (
            "applications:\n- args: {engine_deployment: 3}\n  deployments: [{name: PTREngine}]\n",
            "'applications.0.args.engine_deployment'",
        ),
    ],
)
def test_malformed_serve_file_is_one_line_naming_file_and_key(tmp_path, text, key):
    p = tmp_path / "serve.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(ServeConfig, p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: ") and key in msg and "\n" not in msg


def test_parser_raises_config_error_directly():
    with pytest.raises(ConfigError, match="exactly one application"):
        serve_file_to_settings({"applications": [{}, {}]})
    with pytest.raises(ConfigError, match="unknown deployment 'X'"):
        serve_file_to_settings({"applications": [{"deployments": [{"name": "X"}]}]})


def test_null_sections_are_empty():
    out = serve_file_to_settings(
        {"http_options": None, "applications": [{"args": None, "deployments": None}]}
    )
    assert out == {}
