"""Killing rank 0 of a running ``run_train`` from outside, the way a crash or an OOM kill would.

The training code has no test hook: the test trains in its own thread (the driver) while
:class:`RankZeroKiller` watches the run's folder and SIGKILLs the rank-0 worker process once
Ray Train's controller has registered a checkpoint and rank 0 has logged a later step, so the
restarted worker group must resume from that checkpoint and replay the steps after it. The
resumed run keeps metrics.jsonl at one line per step (ptr_ray/train/resume.py), so the killer
keeps the lines it saw at the kill (:attr:`Kill.rows`) for the replay to be compared with.

Where the facts come from (Ray 2.60):

* the controller's registered checkpoints: ``checkpoint_manager_snapshot.json`` in the run's
  storage folder, rewritten whenever the controller registers one. It collects a report when
  it polls the workers (every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``); a checkpoint folder on
  disk that was not registered yet is not resumed from, so a kill must be timed against the
  snapshot, not against the folders;
* rank 0's pid: Ray Train's state actor (what the dashboard's Train view shows), filled when
  ``RAY_TRAIN_ENABLE_STATE_TRACKING=1`` is set in the driver.

To know exactly where the run stands when it dies, rank 0 is first frozen (SIGSTOP): it logs
no more steps, and the controller can register nothing more from it (its polls go unanswered).
Once the snapshot has stopped changing, the last logged step and the last registered
checkpoint are final, and SIGKILL ends the process.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ptr_ray.testing import FaultThread

SNAPSHOT = "checkpoint_manager_snapshot.json"


@dataclass(frozen=True)
class Kill:
    """What the run looked like when rank 0 was killed."""

    pid: int
    registered_step: int  # newest checkpoint the controller had registered
    logged_step: int  # newest step rank 0 had written to metrics.jsonl
    # metrics.jsonl's lines at the kill: the resumed run drops those past the checkpoint it
    # restores (each step is logged once), so the killed attempt's own values live only here
    rows: tuple[dict, ...] = ()


def logged_rows(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(x) for x in lines if x.endswith("}")]  # skip a half-written line


def logged_steps(out: Path) -> list[int]:
    return [r["step"] for r in logged_rows(out)]


def registered_step(out: Path) -> int:
    """Step of the newest checkpoint the controller registered (0: none yet)."""
    path = out / "ray" / "train" / SNAPSHOT
    try:
        latest = json.loads(path.read_text()).get("latest_checkpoint_result")
    except (FileNotFoundError, json.JSONDecodeError):  # not there yet, or being rewritten
        return 0
    return int(latest["metrics"]["step"]) if latest else 0


def _rank_zero_pid(storage_path: Path) -> int | None:
    """Rank 0's pid in the running attempt of the newest Train run stored under
    ``storage_path`` (None: no such attempt running)."""
    import ray
    from ray.train.v2._internal.state.state_actor import get_state_actor

    actor = get_state_actor()
    if actor is None:
        return None
    runs = [
        r
        for r in ray.get(actor.get_train_runs.remote()).values()
        if Path(r.run_settings.run_config.storage_path).resolve() == storage_path.resolve()
    ]
    if not runs:
        return None
    newest = max(runs, key=lambda r: r.start_time_ns)
    attempts = ray.get(actor.get_train_run_attempts.remote()).get(newest.id, {})
    for attempt in attempts.values():
        if attempt.status.value == "RUNNING":
            return next((w.pid for w in attempt.workers if w.world_rank == 0), None)
    return None


class RankZeroKiller(FaultThread):
    """SIGKILLs rank 0 once, when checkpoint c >= 1 is registered and rank 0 logged a step > c."""

    def __init__(self, out: Path, timeout_s: float = 900.0) -> None:
        super().__init__("rank0-killer", timeout_s)
        self.out = out
        self.kill: Kill | None = None

    def registered_step(self) -> int:
        return registered_step(self.out)

    def attempts(self) -> list[list[int]]:
        """The steps each worker-group attempt logged: the killed one's (from the kill's
        snapshot), then those metrics.jsonl holds past the checkpoint the next one restored."""
        steps = logged_steps(self.out)
        if self.kill is None:
            return [steps]
        return [
            [r["step"] for r in self.kill.rows],
            [s for s in steps if s > self.kill.registered_step],
        ]

    def _last_logged(self) -> int:
        steps = logged_steps(self.out)
        return steps[-1] if steps else 0

    def _watch(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not self._halt.is_set() and time.monotonic() < deadline:
            c, m = registered_step(self.out), self._last_logged()
            pid = _rank_zero_pid(self.out / "ray") if c >= 1 and m > c else None
            if pid is not None:
                os.kill(pid, signal.SIGSTOP)
                try:
                    c = self._settled_registration()
                    m = self._last_logged()
                except BaseException:
                    os.kill(pid, signal.SIGCONT)  # never leave a frozen worker behind
                    raise
                if m > c:
                    rows = tuple(logged_rows(self.out))  # frozen: no line is being written
                    os.kill(pid, signal.SIGKILL)
                    self.kill = Kill(pid=pid, registered_step=c, logged_step=m, rows=rows)
                    return
                os.kill(pid, signal.SIGCONT)  # a checkpoint at m got registered: try later
            time.sleep(0.02)

    def _settled_registration(self) -> int:
        """The registered step once it held still for three controller polls (a poll answered
        just before the freeze may still be processed)."""
        interval = float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2"))
        c, since = registered_step(self.out), time.monotonic()
        while time.monotonic() - since < 3 * interval + 0.5:
            time.sleep(0.05)
            now = registered_step(self.out)
            if now != c:
                c, since = now, time.monotonic()
        return c


@pytest.fixture
def kill_rank_zero(monkeypatch):
    """``start(out)`` -> a started :class:`RankZeroKiller`; stopped at teardown."""
    monkeypatch.setenv("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
    # The controller polls the workers (and takes one report from each) this often; a worker
    # reports every step and blocks while its previous report is untaken, so this paces the
    # run. 0.5 s instead of the 2 s default: quicker, and still two polls between checkpoints.
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    killers: list[RankZeroKiller] = []

    def start(out: Path) -> RankZeroKiller:
        k = RankZeroKiller(out)
        k.start()
        killers.append(k)
        return k

    yield start
    for k in killers:
        k.stop()
