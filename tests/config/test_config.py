import pytest

from ptr_ray.config import (
    ConfigError,
    EngineConfig,
    SmokeConfig,
    apply_overrides,
    load_config,
    parse_override,
)


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("query: hi\nengine:\n  model: builtin:smollm2-135m\n  max_model_len: 512\n")
    cfg = load_config(
        SmokeConfig, p, ["engine.max_model_len=1024", "sampling.stop=[a, b]", "engine.backend=hf"]
    )
    assert cfg.query == "hi"
    assert cfg.engine.max_model_len == 1024
    assert cfg.engine.backend == "hf"
    assert cfg.sampling.stop == ["a", "b"]


def test_unknown_key_is_one_line_error_naming_it():
    with pytest.raises(ConfigError) as e:
        load_config(SmokeConfig, None, ["engine.max_modle_len=3"])
    assert str(e.value) == "unknown config key 'engine.max_modle_len'"


def test_wrong_type_names_key():
    with pytest.raises(ConfigError) as e:
        load_config(SmokeConfig, None, ["engine.max_num_seqs=many"])
    msg = str(e.value)
    assert "engine.max_num_seqs" in msg and "\n" not in msg


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_override("engine.model")
    with pytest.raises(ConfigError, match="not found"):
        load_config(EngineConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(EngineConfig, bad)


def test_override_into_scalar_section_fails():
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"a": 1}, ["a.b=2"])


def test_cli_reports_config_error(capsys):
    from ptr_ray.cli import main

    assert main(["smoke", "engine.nope=1"]) == 2
    assert "unknown config key 'engine.nope'" in capsys.readouterr().err


def test_override_indexes_lists():
    data = apply_overrides({"sources": [{"limit": 1}, {"limit": 2}]}, ["sources.1.limit=400"])
    assert data == {"sources": [{"limit": 1}, {"limit": 400}]}
    with pytest.raises(ConfigError, match="not an index"):
        apply_overrides({"sources": [{"limit": 1}]}, ["sources.3.limit=4"])
