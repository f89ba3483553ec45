"""Kernel filters a cell adds on top of its namespaces: seccomp (always) and Landlock (fallback).

Standard library only (see :mod:`ptr_ray.eval.sandbox_jail`). Both are unprivileged: they
need ``no_new_privs``, not root, so they are also what a machine without namespaces still
gets.

- **seccomp** denies, with EPERM, the system calls an untrusted program has no business
  making: ``socket`` (no network at all, not even a Unix socket to the raylet), ``ptrace``
  and ``process_vm_*`` (reading another process), signals to any process (``kill`` & co.),
  new namespaces, mounts, ``bpf``, keyrings, io_uring (it bypasses seccomp for its
  operations), module and reboot calls. ``clone3`` gets ENOSYS so the C library falls back to
  ``clone``, whose namespace flags are checked. A foreign architecture (e.g. an i386 binary) is
  killed. The table is for x86_64; elsewhere the filter is skipped and the sandbox says so.
- **Landlock** (Linux >= 5.13) replaces the mount namespace where there is none: read-only
  access to the allow-list, read-write to the work folder, nothing else (no ``/proc``, no
  HOME). From ABI 4 it also denies TCP, and from ABI 6 signals and abstract Unix sockets
  leaving the cell.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from collections.abc import Iterable

PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
RET_ALLOW, RET_ERRNO, RET_KILL_PROCESS = 0x7FFF0000, 0x00050000, 0x80000000
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000

# x86_64 numbers (arch/x86/entry/syscalls/syscall_64.tbl).
X86_64_DENY = {
    "socket": 41, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
    "kill": 62, "tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297,
    "pidfd_open": 434, "pidfd_send_signal": 424, "pidfd_getfd": 438,
    "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272,
    "setns": 308, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
    "fsmount": 432, "fspick": 433, "mount_setattr": 442,
    "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321, "perf_event_open": 298,
    "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "init_module": 175, "finit_module": 313, "delete_module": 176,
    "kexec_load": 246, "kexec_file_load": 320, "reboot": 169, "swapon": 167, "swapoff": 168,
    "open_by_handle_at": 304, "name_to_handle_at": 303, "fanotify_init": 300, "kcmp": 312,
    "acct": 163, "quotactl": 179, "settimeofday": 164, "clock_settime": 227, "adjtimex": 159,
    "clock_adjtime": 305, "syslog": 103, "vhangup": 153, "iopl": 172, "ioperm": 173,
    "personality": 135,
}  # fmt: skip
X86_64_CLONE, X86_64_CLONE3 = 56, 435
NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET

_libc = ctypes.CDLL(None, use_errno=True)


def seccomp_supported() -> bool:
    return platform.machine() == "x86_64"


def _ins(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def seccomp_program(deny: dict[str, int] | None = None) -> bytes:
    """The BPF program (x86_64): deny-list with EPERM, namespace flags of ``clone`` checked."""
    ld_abs, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    eperm = RET_ERRNO | errno.EPERM
    prog = [
        _ins(ld_abs, 0, 0, 4),  # seccomp_data.arch
        _ins(jeq, 1, 0, AUDIT_ARCH_X86_64),
        _ins(ret, 0, 0, RET_KILL_PROCESS),
        _ins(ld_abs, 0, 0, 0),  # seccomp_data.nr
        _ins(jge, 0, 1, X32_SYSCALL_BIT),
        _ins(ret, 0, 0, eperm),
    ]
    for nr in sorted(set((X86_64_DENY if deny is None else deny).values())):
        prog += [_ins(jeq, 0, 1, nr), _ins(ret, 0, 0, eperm)]
    prog += [
        _ins(jeq, 0, 1, X86_64_CLONE3),
        _ins(ret, 0, 0, RET_ERRNO | errno.ENOSYS),
        _ins(jeq, 0, 3, X86_64_CLONE),
        _ins(ld_abs, 0, 0, 16),  # low half of args[0]: the clone flags
        _ins(jset, 0, 1, NAMESPACE_FLAGS),
        _ins(ret, 0, 0, eperm),
        _ins(ret, 0, 0, RET_ALLOW),
    ]
    return b"".join(prog)


def install_seccomp(deny: dict[str, int] | None = None) -> None:
    """Load the filter into this thread (and every later child); needs ``no_new_privs``."""
    code = seccomp_program(deny)
    buf = ctypes.create_string_buffer(code, len(code))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    ret = _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0)
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"seccomp: {os.strerror(e)}")


# ------------------------------------------------------------------------------- Landlock

SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1, 2, 4, 8
FS_READ = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
NET_BIND_TCP, NET_CONNECT_TCP = 1, 2
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1, 2


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when absent or disabled."""
    if platform.system() != "Linux":
        return 0
    ret = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), 1)
    return max(0, int(ret))


def _fs_rights(abi: int) -> int:
    """Every filesystem right this ABI can restrict (bits 0-12; REFER 13 from v2, TRUNCATE 14
    from v3, IOCTL_DEV 15 from v5)."""
    bits = 13 + (abi >= 2) + (abi >= 3)
    return ((1 << bits) - 1) | ((1 << 15) if abi >= 5 else 0)


def install_landlock(read_only: Iterable[str], read_write: Iterable[str], abi: int) -> None:
    """Restrict this process (and children) to the given trees; TCP and outward signals off."""
    handled = _fs_rights(abi)
    attr = struct.pack("=Q", handled)
    if abi >= 4:
        attr += struct.pack("=Q", NET_BIND_TCP | NET_CONNECT_TCP)
    if abi >= 6:
        attr += struct.pack("=Q", SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL)
    buf = ctypes.create_string_buffer(attr, len(attr))
    rs = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, buf, ctypes.c_size_t(len(attr)), 0)
    if rs < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"landlock_create_ruleset: {os.strerror(e)}")
    try:
        rules = [(p, FS_READ) for p in read_only] + [(p, handled) for p in read_write]
        for path, rights in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # a missing path needs no rule
            try:
                if not os.path.isdir(path):  # files take only file rights
                    rights &= FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | (1 << 14)
                rule = struct.pack("=Qi", rights, fd)
                rbuf = ctypes.create_string_buffer(rule, len(rule))
                if _libc.syscall(SYS_LANDLOCK_ADD_RULE, rs, LANDLOCK_RULE_PATH_BENEATH, rbuf, 0):
                    e = ctypes.get_errno()
                    raise OSError(e, f"landlock_add_rule {path}: {os.strerror(e)}")
            finally:
                os.close(fd)
        if _libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, rs, 0) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"landlock_restrict_self: {os.strerror(e)}")
    finally:
        os.close(rs)
