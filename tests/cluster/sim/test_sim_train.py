"""Ray Train on a simulated cluster: workers SPREAD over two ``train`` nodes, one node killed
mid-run, the group restarted from the last checkpoint on the node that is left.

Cluster: a head (0 CPUs: the driver and Ray Train's controller, which Ray pins to the driver's
node) and two ``train`` nodes with ``pool_train: 2`` each. Each worker asks for
``pool_train: 1`` (``scaling.resources``) with ``placement_strategy: SPREAD``, so the first
attempt has one worker per node. Once the controller has registered a checkpoint and a later
step was logged, the node of one worker is killed whole; ``max_failures: 1`` restarts the
group, and both workers now fit on the surviving node. The checkpoints live under the test's
temp folder, the stand-in for the shared file system.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ptr_ray.config import RayConfig, TrainConfig, load_config
from ptr_ray.testing import FaultThread
from ptr_ray.train.worker import STATE_FILE as STATE

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "ptr_small"
TRAIN_LOCAL = Path(__file__).resolve().parents[3] / "jobs" / "configs" / "train_local.yaml"
SNAPSHOT = "checkpoint_manager_snapshot.json"
WORKER = "RayTrainWorker"
STEPS = 6


def _rows(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]


def _registered_step(out: Path) -> int:
    """Step of the newest checkpoint Ray Train's controller registered (0: none yet)."""
    try:
        latest = json.loads((out / "ray" / "train" / SNAPSHOT).read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not there yet, or being rewritten
        return 0
    latest = latest.get("latest_checkpoint_result")
    return int(latest["metrics"]["step"]) if latest else 0


@dataclass(frozen=True)
class NodeKill:
    node_id: str
    worker_nodes: tuple[str, ...]  # nodes of the first attempt's workers
    registered_step: int
    rows: tuple[dict, ...]  # metrics.jsonl when the node died
    at: float


class TrainNodeKiller(FaultThread):
    """Kills the node of a training worker once a checkpoint is registered and a later step
    is logged, so the restarted group must resume from that checkpoint."""

    def __init__(self, cluster, out: Path, timeout_s: float = 600.0) -> None:
        super().__init__("train-node-killer", timeout_s)
        self.cluster, self.out = cluster, out
        self.kill: NodeKill | None = None

    def _watch(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not self._halt.is_set() and time.monotonic() < deadline:
            c, rows = _registered_step(self.out), _rows(self.out)
            if c >= 1 and rows and rows[-1]["step"] > c:
                workers = [a for a in self.cluster.actors(WORKER) if a["State"] == "ALIVE"]
                if len(workers) != 2:
                    time.sleep(0.05)
                    continue
                nodes = tuple(sorted(a["Address"]["NodeID"] for a in workers))
                victim = self.cluster.node(nodes[0])
                self.cluster.kill(victim)
                self.kill = NodeKill(victim.node_id, nodes, c, tuple(rows), time.time())
                return
            time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster(sim_cluster):
    return sim_cluster("train", "train")


def test_spread_workers_resume_after_their_node_is_lost(
    cluster, tiny_model_dir, tmp_path, monkeypatch
):
    from ptr_ray.train.trainer import run_train

    # the controller polls the workers this often (a worker reports every step)
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    out = tmp_path / "shared" / "train"
    cfg = load_config(
        TrainConfig,
        TRAIN_LOCAL,
        [
            f"model={tiny_model_dir}",
            f"dataset={FIXTURE}",
            f"output_dir={out}",
            "epochs=2",
            f"max_steps={STEPS}",
            "checkpoint_every=2",
            "keep_checkpoints=5",
            "max_failures=1",
            "progress=false",
            "export=false",
            "optim.lr=1e-3",
            "loss.schedule=constant",
            "scaling.num_workers=2",
            "scaling.placement_strategy=SPREAD",
            "scaling.resources={pool_train: 1}",
        ],
    ).model_copy(update={"ray": RayConfig(address=cluster.address)})  # join the cluster
    killer = TrainNodeKiller(cluster, out)
    killer.start()
    t0 = time.time()
    try:
        run_train(cfg)
    finally:
        killer.stop()
    print(f"training with a lost node: {time.time() - t0:.1f}s")
    assert killer.error is None, killer.error
    kill = killer.kill
    assert kill is not None, "the run finished before a worker's node could be killed"
    print(f"killed node {kill.node_id[:8]} at registered step {kill.registered_step}")

    # SPREAD: the first attempt had one worker on each train node
    assert len(kill.worker_nodes) == 2 and len(set(kill.worker_nodes)) == 2, kill
    assert {cluster.kind_of(n) for n in kill.worker_nodes} == {"train"}
    # the restarted group ran on the node that was left
    survivor = next(n for n in kill.worker_nodes if n != kill.node_id)
    restarted = [a for a in cluster.actors(WORKER) if a["StartTime"] / 1000 > kill.at and a["Pid"]]
    assert len(restarted) == 2, restarted
    assert {a["Address"]["NodeID"] for a in restarted} == {survivor}

    # every step once, and a resume from a checkpoint, not from scratch: the lines up to the
    # restored checkpoint are the first attempt's own, every later line is the second's
    rows = _rows(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    kept = 0
    while kept < len(kill.rows) and rows[kept] == kill.rows[kept]:
        kept += 1
    assert kept >= kill.registered_step >= 2 and kept % 2 == 0, (kept, kill.registered_step)
    assert all(r["time"] > kill.at for r in rows[kept:]), rows
    state = json.loads((out / "ray" / "train" / f"checkpoint_step{STEPS:07d}" / STATE).read_text())
    assert state["step"] == STEPS and state["done"]
