"""Crash-safe, durable writes: a killed run never leaves half a file or half a model folder
behind, and never loses the previous one.

Readers (resume logic, vLLM, the next stage) only ever see complete results, because every
result is written beside its final place and renamed into it in one step. Renames alone are
not enough after a power loss or a kernel crash: the data of a renamed file may not have
reached the disk, and the rename itself lives in the parent folder, which must be flushed too.

Guarantee (POSIX; local filesystems that honour ``fsync``):

- :func:`atomic_write`: the text goes to a temporary file in the same folder, which is
  fsynced, renamed over ``path`` and the parent folder fsynced. When it returns, the new
  text is on disk. If the process dies at any point, ``path`` holds the whole old text or
  the whole new text.
- :func:`atomic_dir`: the caller fills a temporary sibling folder; on success every file and
  folder in it is fsynced, the old ``final`` (if any) is renamed aside, the new folder is
  renamed into place, the parent is fsynced and only then is the aside copy removed. The old
  folder is never deleted before the new one is in place. Between the two renames ``final``
  is briefly missing, with the old copy aside: recovery puts it back.

Recovery rule (:func:`recover_dir`, run at the start of every :func:`atomic_dir` on the same
target, and callable by readers that must not see a missing folder, e.g. model loading):

1. Leftovers are hidden siblings ``.<name>-new.<writer>`` (a folder being built) and
   ``.<name>-old.<writer>`` (the previous folder, renamed aside); ``<writer>`` names the
   host, pid and process start time of the process that made them. A leftover is *stale*
   only when that writer is provably gone: same host, and no live process with that pid and
   start time. A live writer's leftovers, or another host's, are never touched.
2. If ``final`` is missing and no live writer has an aside copy of it, the newest stale aside
   copy is renamed back: it was a complete ``final``, while a dead writer's new folder may be
   half-built.
3. Every other stale leftover is removed.

So a writer killed before its swap leaves the old folder, one killed after leaves the new
one, and the next write of the same target cleans up. Temporary files of :func:`atomic_write`
(``.<name>.<writer>.tmp``) follow the same staleness rule. One writer per target at a time:
callers that may race take a lock (``models.prepare_builtin`` does).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import socket
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_WRITER = r"(?P<host>[A-Za-z0-9_]+)\.(?P<pid>\d+)\.(?P<start>\d+)\.[0-9a-f]{8}"


def _host() -> str:
    """This host's name as it appears in leftover names (letters, digits and ``_`` only)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:32] or "host"


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of ``pid`` from /proc; None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # the name before ")" may hold spaces
        return fields[0].decode(), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _writer_id() -> str:
    """Host, pid, start time and a random part: unique, and enough to prove a writer dead."""
    pid = os.getpid()
    ps = _proc_stat(pid)
    return f"{_host()}.{pid}.{ps[1] if ps else 0}.{uuid.uuid4().hex[:8]}"


def _writer_gone(host: str, pid: int, start: int) -> bool:
    """True only when the writer of a leftover is provably not running any more.

    Another host's writer cannot be checked from here, so it counts as alive. A pid that is
    alive again under another start time was reused; a zombie has finished.
    """
    if host != _host() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, owned by someone else
    ps = _proc_stat(pid)
    if ps is None:
        return False
    state, now_start = ps
    return state == "Z" or (start != 0 and now_start != start)


def _fsync_dir(path: Path | str) -> None:
    """Flush a folder's entries (creations, renames) to disk.

    Some filesystems cannot fsync a folder and say so with EINVAL; they need no flush.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every regular file and every folder under ``root``, ``root`` last."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            p = os.path.join(dirpath, name)
            if not stat.S_ISREG(os.lstat(p).st_mode):
                continue  # symlinks and FIFOs: the folder's fsync covers the entry
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(dirpath)


def _ensure_dir(path: Path) -> None:
    """``mkdir -p`` that also flushes each created folder's entry in its parent."""
    created = []
    p = path
    while not os.path.lexists(p) and p != p.parent:
        created.append(p)
        p = p.parent
    if not created:
        return
    path.mkdir(parents=True, exist_ok=True)
    for d in reversed(created):
        _fsync_dir(d.parent)


def _remove(path: Path) -> None:
    """Remove a leftover; a failure is logged, never raised (the write itself succeeded)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass  # another process cleaned it first
    except OSError as e:
        log.warning("could not remove the leftover %s: %s", path, e)


def _leftovers(parent: Path, pattern: re.Pattern[str]) -> list[tuple[Path, re.Match[str], bool]]:
    """Entries of ``parent`` matching ``pattern``: (path, match, whether its writer is gone)."""
    try:
        names = os.listdir(parent)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        m = pattern.match(name)
        if m:
            gone = _writer_gone(m["host"], int(m["pid"]), int(m["start"]))
            found.append((parent / name, m, gone))
    return found


def atomic_write(path: Path, text: str) -> None:
    """Write a text file durably via an fsynced temporary file and a rename.

    The temporary name is unique per process and call; the file is created with the usual
    permissions (umask applies, unlike ``tempfile.mkstemp``'s owner-only 0600). Stale
    temporary files of crashed writers of the same ``path`` are removed first.
    """
    path = Path(path)
    _ensure_dir(path.parent)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.{_WRITER}\.tmp\Z")
    for old, _m, gone in _leftovers(path.parent, pattern):
        if gone:
            _remove(old)
    tmp = path.with_name(f".{path.name}.{_writer_id()}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json_atomic(path: Path, data: Any, indent: int | None = 2) -> None:
    """Write ``data`` as UTF-8 JSON (one trailing newline) via :func:`atomic_write`."""
    atomic_write(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def _dir_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(name)}-(?P<kind>new|old)\.{_WRITER}\Z")


def recover_dir(final: Path) -> bool:
    """Apply the recovery rule of this module's docstring to ``final``'s leftovers.

    Returns True when it put an aside copy back because ``final`` was missing. Cheap (one
    listing of the parent) when there is nothing to do.
    """
    final = Path(final)
    found = _leftovers(final.parent, _dir_pattern(final.name))
    stale = [p for p, _m, gone in found if gone]
    old = [p for p, m, gone in found if gone and m["kind"] == "old"]
    live_old = [p for p, m, gone in found if not gone and m["kind"] == "old"]
    restored = False
    if old and not live_old and not os.path.lexists(final):
        newest = max(old, key=lambda p: p.lstat().st_ctime_ns)
        try:
            os.rename(newest, final)
        except OSError as e:  # another process restored or wrote it first
            log.info("did not restore %s from %s: %s", final, newest, e)
        else:
            _fsync_dir(final.parent)
            stale.remove(newest)
            restored = True
            log.warning("restored %s from %s, left by a writer that crashed", final, newest)
    for p in stale:
        _remove(p)
    return restored


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on success it durably replaces ``final``.

    On an exception the temporary folder is removed and ``final`` is left as it was. Leftovers
    of crashed writers of ``final`` are recovered first (see the module docstring).
    """
    final = Path(final)
    parent = final.parent
    _ensure_dir(parent)
    recover_dir(final)
    writer = _writer_id()
    tmp = parent / f".{final.name}-new.{writer}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        aside = None
        if os.path.lexists(final):
            aside = parent / f".{final.name}-old.{writer}"
            os.rename(final, aside)
        try:
            os.rename(tmp, final)
        except BaseException:
            if aside is not None:
                os.rename(aside, final)
            raise
        _fsync_dir(parent)
        if aside is not None:
            _remove(aside)
    finally:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
