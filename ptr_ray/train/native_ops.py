"""DeepSpeed's CPU communication op: built once per Python environment, never waited on forever.

On CPU, ``deepspeed.initialize`` compiles a C++ op (``deepspeed_shm_comm``) the first time it
runs, with torch's JIT extension loader. That loader guards a build with a *file baton*: a file
named ``lock`` in the build folder, created by whoever builds and deleted when it is done. A
process killed while it holds the baton (a Train worker stopped mid-build, a CI job cancelled,
Ctrl-C) leaves the file behind, and from then on every ``deepspeed.initialize`` on that machine
waits for it to vanish: the training run hangs with no error and no log line (seen here: a
test-suite run sat 20 minutes on a baton left by a run killed hours earlier). Two more traps:
the default build root (``~/.cache/torch_extensions``) is shared by every Python environment of
the user, so two venvs rebuild over each other's op, linked against the other's torch.

So ptr-ray, before DeepSpeed starts (the Train worker, ``make setup``):

* builds into a folder of *this* environment (``<sys.prefix>/torch_extensions``) unless
  ``TORCH_EXTENSIONS_DIR`` says otherwise;
* removes a baton that no build holds any more: older than :data:`STALE_AFTER_S` and no process
  on this machine working in that build folder (the compiler runs there);
* builds the op under an ``flock`` of its own, which the kernel releases when its holder dies,
  so the workers of one node build it once and a killed builder blocks nobody.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

#: A baton older than this, with no process working in its folder, is left over from a dead
#: build (building the op takes ~1 min on 2 cores).
STALE_AFTER_S = 300.0
#: The op DeepSpeed builds on CPU (``deepspeed.comm.torch.build_shm_op``).
SHM_OP = "deepspeed_shm_comm"


def extensions_dir() -> Path:
    """Where torch builds JIT extensions for this process; sets ``TORCH_EXTENSIONS_DIR`` to this
    environment's own folder when it is unset (Ray workers inherit the driver's environment, but
    each worker resolves the folder against its own interpreter)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if not root:
        root = str(Path(sys.prefix) / "torch_extensions")
        os.environ["TORCH_EXTENSIONS_DIR"] = root
    return Path(root)


def _cwds() -> set[Path]:
    """Working folders of every process on this machine we may look at."""
    out: set[Path] = set()
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if pid.isdigit():
            try:
                out.add(Path(os.readlink(f"/proc/{pid}/cwd")))
            except OSError:  # gone meanwhile, or another user's
                continue
    return out


def stale_batons(
    root: Path, min_age_s: float = STALE_AFTER_S, now: float | None = None
) -> list[Path]:
    """torch's ``lock`` files under ``root`` that no live build holds: old enough, and no process
    on this machine has its working folder in (or under) the baton's folder."""
    now = time.time() if now is None else now
    batons = []
    for lock in sorted(root.glob("**/lock")) if root.is_dir() else ():
        try:
            age = now - lock.stat().st_mtime
        except FileNotFoundError:  # released meanwhile
            continue
        if age >= min_age_s:
            batons.append(lock)
    if not batons:
        return []
    cwds = _cwds()
    return [b for b in batons if not any(c == b.parent or b.parent in c.parents for c in cwds)]


@contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    """ptr-ray's own lock over ``root``: an ``flock``, dropped by the kernel if its holder dies."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".ptr-ray-build.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def clear_stale_batons(root: Path, min_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove the batons :func:`stale_batons` finds, each with a warning; the removed paths."""
    removed = []
    for baton in stale_batons(root, min_age_s):
        age = time.time() - baton.stat().st_mtime
        log.warning(
            "removing %s: a JIT build lock %.0f s old that no process holds (a build was killed "
            "while holding it; every DeepSpeed start on this machine would wait for it forever)",
            baton,
            age,
        )
        baton.unlink(missing_ok=True)
        removed.append(baton)
    return removed


def prepare_deepspeed_ops() -> Path | None:
    """Make DeepSpeed's CPU op ready before ``deepspeed.initialize``; its build folder, or None
    where DeepSpeed needs no such op (a GPU accelerator, an op DeepSpeed cannot build here)."""
    root = extensions_dir()
    with _build_lock(root):
        clear_stale_batons(root)
        from deepspeed.accelerator import get_accelerator

        builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
        if builder is None:
            return None
        import deepspeed.ops

        if not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
            return None
        t0 = time.time()
        builder.load(verbose=False)
        log.info("DeepSpeed's %s op ready in %.1f s (%s)", SHM_OP, time.time() - t0, root)
        return root / SHM_OP


if __name__ == "__main__":  # `make setup`: build the op once, at install time
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    where = prepare_deepspeed_ops()
    print(f"DeepSpeed CPU op: {where or 'not needed here'}")
