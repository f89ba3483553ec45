"""DeepSpeed's CPU op: a per-environment build folder, and no hang on a dead build's lock."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ptr_ray.train import native_ops
from ptr_ray.train.native_ops import (
    SHM_OP,
    STALE_AFTER_S,
    clear_stale_batons,
    extensions_dir,
    stale_batons,
)


def _baton(root: Path, name: str, age_s: float) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / "lock"
    lock.touch()
    then = time.time() - age_s
    os.utime(lock, (then, then))
    return lock


def test_build_folder_is_this_environments_unless_set(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    assert extensions_dir() == Path(sys.prefix) / "torch_extensions"
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(Path(sys.prefix) / "torch_extensions")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert extensions_dir() == tmp_path


def test_only_old_batons_nobody_works_under_are_stale(tmp_path):
    old = _baton(tmp_path, "old_op", STALE_AFTER_S + 60)
    young = _baton(tmp_path, "young_op", 5)
    busy = _baton(tmp_path, "busy_op", STALE_AFTER_S + 60)
    nested = _baton(tmp_path, "cpu/nested_op", STALE_AFTER_S + 60)  # torch's <accel>/<op> layout
    (busy.parent / "build").mkdir()
    compiler = subprocess.Popen(["sleep", "60"], cwd=busy.parent / "build")  # a build at work
    try:
        assert stale_batons(tmp_path) == sorted([old, nested])
        assert stale_batons(tmp_path, min_age_s=1) == sorted([old, young, nested])
        assert stale_batons(tmp_path / "missing") == []
    finally:
        compiler.kill()
        compiler.wait()


def test_clearing_removes_stale_batons_and_says_so(tmp_path, caplog):
    old = _baton(tmp_path, "old_op", STALE_AFTER_S + 60)
    young = _baton(tmp_path, "young_op", 5)
    with caplog.at_level(logging.WARNING, logger="ptr_ray.train.native_ops"):
        assert clear_stale_batons(tmp_path) == [old]
    assert not old.exists() and young.exists()
    assert "no process holds" in caplog.text and str(old) in caplog.text


def test_a_killed_builder_blocks_nobody(tmp_path):
    """ptr-ray's own build lock is an flock: the kernel drops it with its dead holder."""
    code = (
        "import fcntl, sys, time\n"
        f"f = open({str(tmp_path / '.ptr-ray-build.lock')!r}, 'a')\n"
        "fcntl.flock(f, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    got = threading.Event()

    def take() -> None:
        with native_ops._build_lock(tmp_path):
            got.set()

    t = threading.Thread(target=take, daemon=True)
    t.start()
    assert not got.wait(1.0)  # held by the live builder
    holder.kill()
    holder.wait()
    assert got.wait(10.0)  # its death released it


@pytest.mark.slow
def test_a_stale_baton_in_the_op_folder_no_longer_hangs_the_build(tmp_path):
    """End to end in a fresh process: the op's folder holds a baton from a build killed long
    ago; preparing the op removes it and builds (torch alone would wait for it forever)."""
    lock = _baton(tmp_path, SHM_OP, STALE_AFTER_S + 600)
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "ptr_ray.train.native_ops"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert not lock.exists()
    assert "removing" in proc.stderr and "no process holds" in proc.stderr
    assert f"DeepSpeed CPU op: {tmp_path / SHM_OP}" in proc.stdout
    assert list((tmp_path / SHM_OP).glob(f"{SHM_OP}*.so"))
