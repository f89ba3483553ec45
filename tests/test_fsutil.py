"""Crash-safe writes: whole files and folders or the old ones, never half of either."""

from __future__ import annotations

import json
import os
import stat

import pytest

from ptr_ray.fsutil import atomic_dir, atomic_write, write_json_atomic


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write(path, "one")
    atomic_write(path, "two")
    assert path.read_text() == "two"
    assert os.listdir(path.parent) == ["a.txt"]


def test_atomic_write_uses_the_umask_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write(path, "old")
    with pytest.raises(UnicodeEncodeError):
        atomic_write(path, "\udcff")  # a lone surrogate cannot be written as UTF-8
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_write_json_atomic(tmp_path):
    path = tmp_path / "meta.json"
    write_json_atomic(path, {"b": "café", "a": [1, 2]})
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n") and "café" in text and '\n  "a"' in text
    assert json.loads(text) == {"b": "café", "a": [1, 2]}
    write_json_atomic(path, [1], indent=None)
    assert path.read_text() == "[1]\n"


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    final = tmp_path / "model"
    with atomic_dir(final) as tmp:
        (tmp / "w.bin").write_text("1")
    assert (final / "w.bin").read_text() == "1"
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "w.bin").write_text("2")
        raise RuntimeError("killed mid-export")
    assert (final / "w.bin").read_text() == "1"
    assert os.listdir(tmp_path) == ["model"]
