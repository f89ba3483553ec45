"""Crash windows of fsutil: a writer process is SIGKILLed before each of its file operations.

The writer is a real subprocess (``python -c``) that wraps ``os.rename``, ``os.replace``,
``os.fsync``, ``os.unlink``, ``os.rmdir`` and ``os.mkdir`` *in its own process* and kills
itself just before the N-th call, so every window is reached deterministically with no hook
in ``ptr_ray.fsutil``. One traced run lists the operations; then one run per operation is
killed there. After each kill, and after the documented recovery (``recover_dir``), the
target must hold the whole old content or the whole new one, as the kill point implies,
and the next write must succeed and leave no leftovers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ptr_ray.fsutil import atomic_dir, atomic_write, recover_dir

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="POSIX signals, /proc")

WRITER = r"""
import json, os, signal, sys
from pathlib import Path
from ptr_ray import fsutil

target, kind, stop_at, how = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
content = json.loads(sys.argv[5])
ops = []

def step(label):
    ops.append(label)
    if len(ops) - 1 == stop_at:
        os.kill(os.getpid(), signal.SIGSTOP if how == "stop" else signal.SIGKILL)

def wrap(name):
    real = getattr(os, name)
    def op(*args, **kw):
        step([name] + [os.path.basename(os.fspath(a)) for a in args[:2] if not isinstance(a, int)])
        return real(*args, **kw)
    setattr(os, name, op)

for name in ("rename", "replace", "fsync", "unlink", "rmdir", "mkdir"):
    wrap(name)

if kind == "dir":
    with fsutil.atomic_dir(target) as tmp:
        for rel, text in content.items():
            step(["write", rel])
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text)
else:
    fsutil.atomic_write(target, content)
print(json.dumps(ops))
"""

OLD = {"config.json": '{"v": "old"}', "w-1.bin": "old weights 1", "sub/tok.json": "old tok"}
NEW = {"config.json": '{"v": "new"}', "w-1.bin": "new weights 1", "w-2.bin": "new weights 2"}
THIRD = {"config.json": '{"v": "third"}'}


def _write(target: Path, kind: str, content, stop_at: int = -1, how: str = "kill"):
    args = [target, kind, str(stop_at), how, json.dumps(content)]
    cmd = [sys.executable, "-c", WRITER, *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(target: Path, kind: str, content, stop_at: int = -1):
    proc = _write(target, kind, content, stop_at)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def _trace(target: Path, kind: str, content) -> list[list[str]]:
    rc, out, err = _run(target, kind, content)
    assert rc == 0, err
    return json.loads(out)


def _tree(path: Path) -> dict[str, str] | None:
    if not path.exists():
        return None
    return {str(p.relative_to(path)): p.read_text() for p in sorted(path.rglob("*")) if p.is_file()}


def _fill(final: Path, content: dict[str, str]) -> None:
    with atomic_dir(final) as tmp:
        for rel, text in content.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text)


def _replacing_ops(probe: Path) -> list[list[str]]:
    """The operations of a write that replaces an existing folder (traced under ``probe``)."""
    _fill(probe / "model", OLD)
    return _trace(probe / "model", "dir", NEW)


def _swap_index(ops: list[list[str]], name: str) -> int:
    """The operation that puts the new folder in place: rename .<name>-new.* -> <name>."""
    (i,) = [
        i
        for i, op in enumerate(ops)
        if op[0] == "rename" and op[1].startswith(f".{name}-new.") and op[2] == name
    ]
    return i


@pytest.mark.slow
@pytest.mark.parametrize("has_old", [True, False], ids=["replace", "first-write"])
def test_atomic_dir_killed_before_each_operation(tmp_path, has_old):
    trace_dir = tmp_path / "trace"
    if has_old:
        _fill(trace_dir / "model", OLD)
    ops = _trace(trace_dir / "model", "dir", NEW)
    assert _tree(trace_dir / "model") == NEW
    swap = _swap_index(ops, "model")
    labels = [op[0] for op in ops]
    # the named windows are all among the kill points: mid-build, after the build (before
    # the fsyncs), before the aside rename, between the renames, after the swap
    assert labels[0] == "mkdir" and "write" in labels and "fsync" in labels[:swap]
    if has_old:
        assert ops[swap - 1][:3] == ["rename", "model", ops[swap - 1][2]]
        assert ops[swap - 1][2].startswith(".model-old.")
        assert {"unlink", "rmdir"} <= set(labels[swap + 1 :])  # removing the aside copy

    for k, op in enumerate(ops):
        parent = tmp_path / f"kill-{k}"
        final = parent / "model"
        if has_old:
            _fill(final, OLD)
        rc, _out, err = _run(final, "dir", NEW, stop_at=k)
        assert rc == -signal.SIGKILL, f"kill before {op} did not happen: {err}"
        expected = NEW if k > swap else (OLD if has_old else None)
        raw = _tree(final)
        # before any recovery the target is whole; missing only between the two renames
        if has_old and k == swap:
            assert raw is None
            assert any(p.name.startswith(".model-old.") for p in parent.iterdir())
        else:
            assert raw == expected, f"killed before {op}"
        recover_dir(final)
        assert _tree(final) == expected, f"killed before {op}"
        _fill(final, THIRD)  # the next write succeeds and cleans up every leftover
        assert _tree(final) == THIRD
        assert os.listdir(parent) == ["model"], f"killed before {op}"


@pytest.mark.slow
def test_recovery_itself_killed_before_each_operation(tmp_path):
    """A writer dies between its renames; the next writer dies anywhere, recovery included."""

    first_swap = _swap_index(_replacing_ops(tmp_path / "probe"), "model")

    def crashed_between_renames(parent: Path) -> Path:
        final = parent / "model"
        _fill(final, OLD)
        rc, _out, err = _run(final, "dir", NEW, stop_at=first_swap)
        assert rc == -signal.SIGKILL, err
        assert not final.exists()
        return final

    probe = crashed_between_renames(tmp_path / "trace")
    ops = _trace(probe, "dir", NEW)
    assert ops[0][0] == "rename" and ops[0][1].startswith(".model-old.")  # the restore
    swap = _swap_index(ops, "model")
    for k, op in enumerate(ops):
        final = crashed_between_renames(tmp_path / f"kill-{k}")
        rc, _out, err = _run(final, "dir", NEW, stop_at=k)
        assert rc == -signal.SIGKILL, f"kill before {op} did not happen: {err}"
        recover_dir(final)
        assert _tree(final) == (NEW if k > swap else OLD), f"killed before {op}"
        _fill(final, THIRD)
        assert os.listdir(final.parent) == ["model"], f"killed before {op}"


def test_a_stopped_writer_between_its_renames_is_left_alone(tmp_path):
    final = tmp_path / "model"
    _fill(final, OLD)
    swap = _swap_index(_replacing_ops(tmp_path / "probe"), "model")
    proc = _write(final, "dir", NEW, stop_at=swap, how="stop")
    try:
        deadline = time.monotonic() + 60
        while final.exists():  # the writer has renamed the old folder aside and stopped
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        _pid, status = os.waitpid(proc.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        assert recover_dir(final) is False  # a live writer's aside copy is not restored
        assert not final.exists()
        names = sorted(p.name[:11] for p in tmp_path.iterdir())
        assert names == [".model-new.", ".model-old.", "probe"]
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert _tree(final) == NEW
    assert sorted(os.listdir(tmp_path)) == ["model", "probe"]


@pytest.mark.slow
def test_atomic_write_killed_before_each_operation(tmp_path):
    atomic_write(tmp_path / "trace" / "a.txt", "old")
    ops = _trace(tmp_path / "trace" / "a.txt", "file", "new")
    (swap,) = [i for i, op in enumerate(ops) if op[0] == "replace"]
    assert [op[0] for op in ops] == ["fsync", "replace", "fsync"]
    for k, op in enumerate(ops):
        path = tmp_path / f"kill-{k}" / "a.txt"
        atomic_write(path, "old")
        rc, _out, err = _run(path, "file", "new", stop_at=k)
        assert rc == -signal.SIGKILL, f"kill before {op} did not happen: {err}"
        assert path.read_text() == ("new" if k > swap else "old"), f"killed before {op}"
        atomic_write(path, "third")  # removes the dead writer's temporary file
        assert os.listdir(path.parent) == ["a.txt"], f"killed before {op}"
