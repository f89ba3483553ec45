"""Crash-safe writes: whole files and folders or the old ones, never half of either."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import uuid

import pytest

from ptr_ray import fsutil
from ptr_ray.fsutil import atomic_dir, atomic_write, recover_dir, write_json_atomic


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


# ----------------------------------------------------------------------------- durability


@pytest.fixture
def fsyncs(monkeypatch):
    """Record every os.fsync and rename as ("fsync", (dev, inode)) / ("rename", dst name)."""
    events: list[tuple[str, object]] = []
    real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", (st.st_dev, st.st_ino)))
        return real_fsync(fd)

    def rename(src, dst, **kw):
        events.append(("rename", os.path.basename(dst)))
        return real_rename(src, dst, **kw)

    def replace(src, dst, **kw):
        events.append(("rename", os.path.basename(dst)))
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    return events


def _inode(path):
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def _synced_before_and_after(events, name):
    """Inodes fsynced before and after the (last) rename onto ``name``."""
    i = max(k for k, e in enumerate(events) if e == ("rename", name))
    before = {v for kind, v in events[:i] if kind == "fsync"}
    after = {v for kind, v in events[i + 1 :] if kind == "fsync"}
    return before, after


def test_atomic_write_fsyncs_the_file_before_and_the_folder_after_the_rename(tmp_path, fsyncs):
    path = tmp_path / "a.txt"
    atomic_write(path, "old")
    fsyncs.clear()
    atomic_write(path, "new")
    before, after = _synced_before_and_after(fsyncs, "a.txt")
    assert _inode(path) in before  # the data is on disk before the name points at it
    assert _inode(tmp_path) in after  # the rename itself is on disk when it returns


def test_atomic_write_flushes_the_folders_it_creates(tmp_path, fsyncs):
    atomic_write(tmp_path / "x" / "y" / "a.txt", "1")
    synced = {v for kind, v in fsyncs if kind == "fsync"}
    assert {_inode(tmp_path), _inode(tmp_path / "x"), _inode(tmp_path / "x" / "y")} <= synced


def test_atomic_write_failed_fsync_raises_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    atomic_write(path, "old")

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="Input/output"):
        atomic_write(path, "new")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_atomic_dir_fsyncs_every_file_and_folder_then_the_parent(tmp_path, fsyncs):
    final = tmp_path / "model"
    with atomic_dir(final) as tmp:
        (tmp / "old.bin").write_text("0")
    fsyncs.clear()
    with atomic_dir(final) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "w.bin").write_bytes(b"w" * 1000)
        (tmp / "config.json").write_text("{}")
        os.symlink("config.json", tmp / "link.json")  # not followed, not an error
    before, after = _synced_before_and_after(fsyncs, "model")
    inside = [final / "sub" / "w.bin", final / "config.json", final / "sub", final]
    assert {_inode(p) for p in inside} <= before
    assert _inode(tmp_path) in after
    assert sorted(os.listdir(final)) == ["config.json", "link.json", "sub"]
    assert os.listdir(tmp_path) == ["model"]


# ----------------------------------------------------------------------------- recovery

_HOST = fsutil._host()


def _dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(proc.stdout)


def _leftover(parent, name, kind, pid, host=_HOST, start=0, content="old"):
    p = parent / f".{name}-{kind}.{host}.{pid}.{start}.{uuid.uuid4().hex[:8]}"
    p.mkdir()
    (p / "w.bin").write_text(content)
    return p


def test_recover_dir_restores_a_dead_writers_aside_copy_and_removes_its_new_one(tmp_path):
    final, pid = tmp_path / "model", _dead_pid()
    _leftover(tmp_path, "model", "old", pid, content="old")
    _leftover(tmp_path, "model", "new", pid, content="half")
    assert recover_dir(final) is True
    assert (final / "w.bin").read_text() == "old"
    assert os.listdir(tmp_path) == ["model"]
    assert recover_dir(final) is False


def test_recover_dir_keeps_the_newer_final_and_drops_the_aside_copy(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "w.bin").write_text("new")
    _leftover(tmp_path, "model", "old", _dead_pid())
    assert recover_dir(final) is False
    assert (final / "w.bin").read_text() == "new"
    assert os.listdir(tmp_path) == ["model"]


def test_recover_dir_restores_the_newest_of_several_aside_copies(tmp_path):
    pid = _dead_pid()
    _leftover(tmp_path, "model", "old", pid, content="older")
    time.sleep(0.05)
    _leftover(tmp_path, "model", "old", pid, content="newest")
    assert recover_dir(tmp_path / "model") is True
    assert (tmp_path / "model" / "w.bin").read_text() == "newest"
    assert os.listdir(tmp_path) == ["model"]


def test_recover_dir_never_touches_a_live_writer_or_another_hosts(tmp_path):
    final = tmp_path / "model"
    start = fsutil._proc_stat(os.getpid())
    live = _leftover(tmp_path, "model", "old", os.getpid(), start=start[1] if start else 0)
    remote = _leftover(tmp_path, "model", "new", _dead_pid(), host="elsewhere")
    assert recover_dir(final) is False
    assert not final.exists()  # the live writer is between its two renames: leave it be
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, remote.name])


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="start times come from /proc")
def test_recover_dir_sees_through_a_reused_pid(tmp_path):
    _leftover(tmp_path, "model", "old", os.getpid(), start=1)  # our pid, another start time
    assert recover_dir(tmp_path / "model") is True


def test_recover_dir_ignores_other_names(tmp_path):
    pid = _dead_pid()
    others = [
        _leftover(tmp_path, "model2", "old", pid),
        _leftover(tmp_path, "mode", "old", pid),
        tmp_path / ".model-abc123",  # the old mkdtemp names carry no writer: not provably stale
        tmp_path / f".model-old.{_HOST}.{pid}.0.nothex!",
    ]
    for p in others[2:]:
        p.mkdir()
    assert recover_dir(tmp_path / "model") is False
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in others)


def test_atomic_dir_recovers_before_it_writes(tmp_path):
    final, pid = tmp_path / "model", _dead_pid()
    _leftover(tmp_path, "model", "old", pid, content="old")
    _leftover(tmp_path, "model", "new", pid, content="half")
    with atomic_dir(final) as tmp:
        assert (final / "w.bin").read_text() == "old"  # readers see the old copy meanwhile
        (tmp / "w.bin").write_text("new")
    assert (final / "w.bin").read_text() == "new"
    assert os.listdir(tmp_path) == ["model"]


def test_atomic_write_removes_dead_writers_temporary_files_only(tmp_path):
    dead = tmp_path / f".a.txt.{_HOST}.{_dead_pid()}.0.0123abcd.tmp"
    other = tmp_path / ".a.txt.elsewhere.1.0.0123abcd.tmp"
    dead.write_text("half")
    other.write_text("half")
    atomic_write(tmp_path / "a.txt", "x")
    assert sorted(os.listdir(tmp_path)) == sorted(["a.txt", other.name])


def test_atomic_dir_failed_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    final = tmp_path / "model"
    with atomic_dir(final) as tmp:
        (tmp / "w.bin").write_text("old")
    real = os.rename

    def rename(src, dst, **kw):
        if os.path.basename(src).startswith(".model-new."):
            raise OSError(28, "No space left on device")
        return real(src, dst, **kw)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="No space"), atomic_dir(final) as tmp:
        (tmp / "w.bin").write_text("new")
    assert (final / "w.bin").read_text() == "old"
    assert os.listdir(tmp_path) == ["model"]
