"""The OS-level cell one untrusted program runs in: namespaces, a new root, limits, a dropped uid.

Standard library only: the launcher (:mod:`ptr_ray.eval.sandbox_launcher`) runs under
``python -I -S`` without site-packages, so that nothing importable from the evaluator's
environment runs before the cell is closed. Python 3.11 has no ``os.unshare``, so the
namespace, mount and capability calls go through libc with ``ctypes``.

Order matters and is the point of this module (see :func:`enter_cell`):

1. ``setsid``: a new session and process group, so a timeout kills the whole group;
2. namespaces (done by the parent, :func:`unshare_namespaces`): mount, network (only ``lo``,
   down), PID (the program is PID 1; when it dies the kernel kills everything it started),
   IPC and UTS. Without root, a user namespace makes the same possible (unprivileged user
   namespaces, as bubblewrap uses them);
3. a new root (:func:`build_root`): an empty tmpfs holding read-only binds of an allow-list
   (system libraries, the Python prefix, site-packages), a size-limited tmpfs ``/tmp`` as the
   work folder and ``/dev/null`` & co. No ``/proc``, no HOME, no Ray session folder, no
   shared storage: they are not hidden, they were never mounted. ``pivot_root`` then detaches
   the old root, so no path leads back to it;
4. resource limits (:func:`set_limits`), all file descriptors but the two proxy pipes closed;
5. privileges dropped (:func:`drop_privileges`): a separate uid per worker slot when run as
   root, every capability and the bounding set dropped, ``no_new_privs``.
"""

from __future__ import annotations

import ctypes
import os
import platform
import resource
import signal
from collections.abc import Iterable, Sequence
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CELL_NAMESPACES = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP = 1, 4, 24
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 36, 38

SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
SYS_CAPSET = {"x86_64": 126, "aarch64": 91}

# Where the dynamic loader and the interpreter's own libraries live on common distributions;
# missing ones are skipped. /etc is left out on purpose (hostnames, keys, site config).
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")

_libc = ctypes.CDLL(None, use_errno=True)


class JailError(OSError):
    """A step of closing the cell failed; the program never runs (the item counts as failed)."""


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise JailError(e, f"{what}: {os.strerror(e)}")


def prctl(option: int, arg: int = 0) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl({option})")


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def _b(s: str | None) -> bytes | None:
    return s.encode() if s else None


def mount(src: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    ret = _libc.mount(_b(src), target.encode(), _b(fstype), ctypes.c_ulong(flags), _b(data))
    _check(ret, f"mount {target}")


def unshare_namespaces(userns: bool) -> None:
    """In the cell's parent: new mount/net/PID/IPC/UTS namespaces (plus a user one without root).

    With a user namespace the caller maps only itself (its uid becomes root inside, with
    capabilities over these namespaces only); that is all an unprivileged process may map.
    """
    uid, gid = os.geteuid(), os.getegid()
    unshare(CELL_NAMESPACES | (CLONE_NEWUSER if userns else 0))
    if userns:
        for name, text in (
            ("setgroups", "deny"),
            ("uid_map", f"0 {uid} 1"),
            ("gid_map", f"0 {gid} 1"),
        ):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)


def _mount_flags(path: str) -> int:
    """The flags a bind must keep: a user namespace may not clear nosuid/nodev/noexec/atime."""
    f = os.statvfs(path).f_flag
    keep = 0
    for st, ms in ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC)):
        if f & st:
            keep |= ms
    for st, ms in ((os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME)):
        if f & st:
            keep |= ms
    if getattr(os, "ST_RELATIME", 4096) & f:
        keep |= MS_RELATIME
    return keep


def _bind_ro(src: str, dst: str) -> None:
    mount(src, dst, None, MS_BIND)
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | _mount_flags(src)
    mount(None, dst, None, flags)


def _mkpoint(root: str, path: str, is_dir: bool) -> str:
    dst = root + path
    os.makedirs(dst if is_dir else os.path.dirname(dst), mode=0o755, exist_ok=True)
    if not is_dir and not os.path.exists(dst):
        open(dst, "w").close()
    return dst


def plan_binds(expose: Iterable[str]) -> list[tuple[str, str]]:
    """``[(kind, path)]`` in mount order: kind ``link`` recreates a top-level symlink (merged
    /usr), ``bind`` mounts a real directory; paths under an earlier bind are dropped."""
    out: list[tuple[str, str]] = []
    seen: list[str] = []
    for p in expose:
        p = os.path.abspath(p)
        if os.path.islink(p) and os.path.dirname(p) == "/":
            out.append(("link", p))
            continue
        real = os.path.realpath(p)
        if not os.path.isdir(real) or any(real == s or real.startswith(s + "/") for s in seen):
            continue
        seen.append(real)
        out.append(("bind", real))
        if p != real:
            out.append(("alias", p))
    return out


def build_root(root: str, expose: Sequence[str], hide: Sequence[str], tmp_mb: int) -> None:
    """Make ``root`` (an empty directory) the cell's whole filesystem and ``pivot_root`` into it.

    Call inside fresh mount and PID namespaces, as (namespace) root, before the uid drop.
    """
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount leaks to the host
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    work = _mkpoint(root, "/tmp", True)  # first: an exposed path under /tmp is bound inside it
    mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmp_mb}m,mode=1777")
    bound = []
    for kind, p in plan_binds(expose):
        if kind == "link":
            os.symlink(os.readlink(p), root + p)
        elif kind == "alias":
            if not os.path.lexists(root + p):
                os.makedirs(os.path.dirname(root + p), exist_ok=True)
                os.symlink(os.path.realpath(p), root + p)
        else:
            _bind_ro(p, _mkpoint(root, p, True))
            bound.append(p)
    for dev in DEVICES:
        if os.path.exists(dev):
            mount(dev, _mkpoint(root, dev, False), None, MS_BIND)
    for h in hide:  # only inside an exposed tree (a parent of one shows just the path to it)
        h = os.path.realpath(h)
        if not any(h == b or h.startswith(b + "/") for b in bound):
            continue
        target = root + h
        if os.path.isdir(target) and not os.path.islink(target):
            mount("tmpfs", target, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,mode=0755")
        elif os.path.isfile(target):
            mount("/dev/null", target, None, MS_BIND)
    os.chdir(root)
    arch = platform.machine()
    if arch in SYS_PIVOT_ROOT:  # pivot_root(".", "."), then detach the old root beneath
        _check(_libc.syscall(SYS_PIVOT_ROOT[arch], b".", b"."), "pivot_root")
        _check(_libc.umount2(b".", MNT_DETACH), "umount old root")
    else:  # chroot: equally closed once capabilities are gone and no fd points outside
        os.chroot(".")
    os.chdir("/")
    mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chdir("/tmp")


def set_limits(limits: dict[str, Any], nproc_offset: int = 0) -> None:
    """RLIMITs that hold before the first untrusted byte runs; hard = soft, so they stay.

    ``cpu_s`` gets a hard limit one second above the soft one: SIGXCPU first, SIGKILL after.
    ``nproc_offset`` is for a cell that shares its uid with other processes (no uid of its
    own): the limit then counts those too.
    """
    mb = 1 << 20
    table = [
        (resource.RLIMIT_AS, limits["memory_mb"] * mb, limits["memory_mb"] * mb),
        (resource.RLIMIT_CPU, limits["cpu_s"], limits["cpu_s"] + 1),
        (resource.RLIMIT_FSIZE, limits["file_size_mb"] * mb, limits["file_size_mb"] * mb),
        (resource.RLIMIT_NOFILE, limits["open_files"], limits["open_files"]),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_MEMLOCK, 0, 0),
        (resource.RLIMIT_MSGQUEUE, 0, 0),
    ]
    nproc = limits["processes"] + nproc_offset
    table.append((resource.RLIMIT_NPROC, nproc, nproc))
    for what, soft, hard in table:
        cur_soft, cur_hard = resource.getrlimit(what)
        if cur_hard != resource.RLIM_INFINITY:  # never ask for more than we have
            hard = min(hard, cur_hard)
            soft = min(soft, hard)
        resource.setrlimit(what, (soft, hard))


def processes_of(uid: int) -> int:
    """How many processes ``uid`` runs now (what RLIMIT_NPROC counts when the uid is shared)."""
    n = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                n += os.stat(f"/proc/{name}").st_uid == uid
            except OSError:
                pass
    return n


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def drop_privileges(uid: int | None) -> None:
    """No way back: bounding set emptied, then a uid of our own (root) or every capability
    cleared (user namespace or a plain user), then ``no_new_privs`` for any later exec."""
    for cap in range(64):  # EINVAL: past the kernel's last one; EPERM: not ours to drop
        if _libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0) != 0:
            break
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # 0 -> non-zero clears every capability
    arch = platform.machine()
    if arch in SYS_CAPSET:
        hdr = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
        data = (_CapData * 2)()
        _check(_libc.syscall(SYS_CAPSET[arch], ctypes.byref(hdr), data), "capset")
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def close_fds(keep: Iterable[int]) -> None:
    """Close every descriptor but ``keep`` (stdio is reopened on /dev/null by the caller)."""
    last = 3
    for fd in sorted(set(keep)):
        if fd >= last:
            os.closerange(last, fd)
            last = fd + 1
    os.closerange(last, 1 << 20)


def null_stdio() -> None:
    fd = os.open("/dev/null", os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(fd, std)
    if fd > 2:
        os.close(fd)


def die_with_parent() -> None:
    """SIGKILL when the parent dies (a killed launcher never leaves a cell behind)."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
