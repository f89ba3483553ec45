"""ptr_ray.config.base: reading a YAML config file, and one-line errors that name the file."""

from __future__ import annotations

import pytest

from ptr_ray.config import ConfigError, EvalConfig, SmokeConfig, load_config, read_yaml


def test_bom_is_fine(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"\xef\xbb\xbfengine:\n  max_num_seqs: 3\n")
    assert load_config(SmokeConfig, p).engine.max_num_seqs == 3


def test_non_utf8_file_names_file_and_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"engine:\n  model: caf\xe9\n")
    with pytest.raises(ConfigError) as e:
        read_yaml(p)
    assert str(e.value) == (
        f"config file {p} is not UTF-8 text (byte 0xe9 on line 2); save it as UTF-8"
    )


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"a: [1, 2\n", ["is not valid YAML", "line 2"]),
        (b"[" * 100_000, ["nested too deeply"]),
        (b"- 1\n- 2\n", ["mapping at the top level"]),
    ],
    ids=["broken", "deep", "list"],
)
def test_unusable_yaml_is_one_line_naming_the_file(tmp_path, content, words):
    p = tmp_path / "c.yaml"
    p.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        read_yaml(p)
    msg = str(e.value)
    assert str(p) in msg and "\n" not in msg
    for word in words:
        assert word in msg


def test_folder_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        read_yaml(tmp_path)
    with pytest.raises(ConfigError, match="config file not found"):
        read_yaml(tmp_path / "nope.yaml")


def test_a_bad_key_from_the_file_names_the_file_one_from_an_override_does_not(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("rounds: 0\nlimit: 5\n")
    with pytest.raises(ConfigError) as e:
        load_config(EvalConfig, p)
    assert str(e.value).startswith(f"{p}: config key 'rounds'")
    p.write_text("limit: 5\n")
    with pytest.raises(ConfigError) as e:
        load_config(EvalConfig, p, ["rounds=0"])
    assert str(e.value).startswith("config key 'rounds'")


def test_an_override_too_deep_for_yaml_is_kept_as_text():
    from ptr_ray.config import parse_override

    assert parse_override("a=" + "[" * 100_000) == (["a"], "[" * 100_000)
