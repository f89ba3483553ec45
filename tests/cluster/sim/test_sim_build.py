"""The build on a simulated cluster: weak and strong pools on different nodes, one output folder,
and a whole node lost mid-build without losing or duplicating a row.

Cluster: a head (0 CPUs, the driver) and three ``vllm`` nodes with one ``pool_vllm`` each.
Both pools ask for ``pool_vllm: 1`` per actor (``engine.resources``), so the weak and the
strong actor must land on two different nodes; the third is the spare a real cluster's
autoscaler would bring. The driver writes the dataset folder (the shared file system).

Node loss: once the weak actor is generating, its node is killed whole (raylet, workers,
agents: SIGKILL). Ray restarts the actor on the spare node and retries its batch; the driver's
id check drops a batch delivered twice. The records must be the same set of queries as the
build without node loss, each exactly once.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ptr_ray.config import BuildConfig
from ptr_ray.records import read_records
from ptr_ray.testing import FaultThread

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

TOPICS = [
    "bake sourdough bread with a young starter",
    "choose a first telescope for planets",
    "train a puppy to walk on a loose leash",
    "plan a three day trip to Lisbon in spring",
    "repair a slow leaking bicycle tyre",
    "explain compound interest to a teenager",
    "set up a small aquarium for shrimp",
    "learn basic chords on an acoustic guitar",
    "reduce food waste in a shared kitchen",
    "prepare for a first half marathon",
    "grow basil on a north facing windowsill",
    "organise a charity book swap at work",
]
WEAK, STRONG = "WeakThoughts", "StrongAnswers"


def _config(src: Path, out: Path, engine: dict, address: str) -> BuildConfig:
    pinned = {**engine, "resources": {"pool_vllm": 1}}
    greedy = {"temperature": 0.0, "max_tokens": 24}
    return BuildConfig.model_validate(
        {
            "sources": [{"kind": "jsonl", "path": str(src), "field": "query"}],
            "clean": {"min_tokens": 2, "max_tokens": 200},
            "dedupe": {"near": False},
            "decontaminate": {"enabled": False},
            "weak": {
                "models": [pinned],
                "num_thoughts": 2,
                "sampling": greedy,
                "pool": {"batch_size": 2},
            },
            "strong": {
                "model": pinned,
                "sampling": greedy,
                "num_icl": 0,
                "pool": {"batch_size": 2},
            },
            "consistency": {"method": "none"},
            "sft": {"fraction": 0.0},
            "output": {"path": str(out), "rows_per_shard": 4},
            "ray": {"address": address},
        }
    )


@pytest.fixture(scope="module")
def cluster(sim_cluster):
    return sim_cluster("vllm", "vllm", "vllm")


@pytest.fixture(scope="module")
def queries(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("queries") / "q.jsonl"
    src.write_text(
        "".join(
            json.dumps({"query": f"How do I {t}? Give practical steps."}) + "\n" for t in TOPICS
        )
    )
    return src


@dataclass(frozen=True)
class Outcome:
    """A finished build: its ids (records, generation rejects) and the pools' actors."""

    out: Path
    records: list[str]
    rejected: list[str]
    actors: dict[str, list[dict]]  # WEAK / STRONG -> GCS actor table entries of this build
    wall_s: float


def _outcome(cluster, out: Path, before: set[str], wall_s: float) -> Outcome:
    records = [r.id for r in read_records(out)]
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    rejected = [e["id"] for e in rejects if e["stage"] == "generate"]
    actors = {name: cluster.actors(name, exclude=before) for name in (WEAK, STRONG)}
    return Outcome(out, records, rejected, actors, wall_s)


def _check_once(o: Outcome) -> None:
    """Every query is one record or one generation reject: none lost, none twice."""
    assert len(o.records) == len(set(o.records)), "a query was written twice"
    assert len(o.rejected) == len(set(o.rejected)) and not set(o.rejected) & set(o.records)
    assert len(o.records) + len(o.rejected) == len(TOPICS)
    stats = json.loads((o.out / "stats.json").read_text())
    assert stats["status"] == "finished" and stats["balanced"], stats
    assert stats["rows_in"] == len(TOPICS) and stats["pending"] == 0, stats


@pytest.fixture(scope="module")
def baseline(cluster, queries, smollm_engine, tmp_path_factory) -> Outcome:
    """The build without node loss (the reference the node-loss build is compared with)."""
    from ptr_ray.datagen.dataflow import run_build

    out = tmp_path_factory.mktemp("shared") / "dataset"
    before = cluster.actor_ids()
    t0 = time.time()
    run_build(_config(queries, out, smollm_engine, cluster.address))
    wall = time.time() - t0
    print(f"build without node loss: {wall:.1f}s")
    return _outcome(cluster, out, before, wall)


def test_weak_and_strong_pools_run_on_different_nodes(cluster, baseline):
    _check_once(baseline)
    assert baseline.records, "SmolLM2 should get some rows through the build"
    weak, strong = baseline.actors[WEAK], baseline.actors[STRONG]
    assert len(weak) == 1 and len(strong) == 1, baseline.actors  # one actor per pool
    weak_node, strong_node = weak[0]["Address"]["NodeID"], strong[0]["Address"]["NodeID"]
    assert weak_node != strong_node
    assert cluster.kind_of(weak_node) == cluster.kind_of(strong_node) == "vllm"
    # the driver (head) wrote the records both pools made into the one folder
    for r in read_records(baseline.out):
        assert len(r.thoughts) == 2 and r.answer.strip()
    assert sorted(p.name for p in (baseline.out / "data").iterdir())


@dataclass(frozen=True)
class NodeKill:
    actor_id: str
    node_id: str
    pids: tuple[int, ...]
    at: float


class WeakNodeKiller(FaultThread):
    """Kills the node of the build's weak actor once that actor is generating (its process
    busy), so a batch is lost mid-flight with every process of its node."""

    def __init__(self, cluster, before: set[str], timeout_s: float = 600.0) -> None:
        super().__init__("node-killer", timeout_s)
        self.cluster, self.before = cluster, before
        self.kill: NodeKill | None = None

    def _watch(self) -> None:
        import psutil

        deadline = time.monotonic() + self.timeout_s
        while not self._halt.is_set() and time.monotonic() < deadline:
            alive = [
                a
                for a in self.cluster.actors(WEAK, exclude=self.before)
                if a["State"] == "ALIVE" and a["Pid"]
            ]
            if not alive:
                time.sleep(0.05)
                continue
            actor = alive[0]
            try:
                proc = psutil.Process(actor["Pid"])
                before = proc.cpu_times()
                time.sleep(0.2)
                after = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            if (after.user + after.system) - (before.user + before.system) < 0.05:
                continue  # loading the model or idle between batches
            node = self.cluster.node(actor["Address"]["NodeID"])
            pids = self.cluster.kill(node)
            self.kill = NodeKill(actor["ActorID"], node.node_id, tuple(pids), time.time())
            return


def test_node_lost_mid_build_loses_and_duplicates_no_row(
    cluster, baseline, queries, smollm_engine, tmp_path
):
    from ptr_ray.datagen.dataflow import run_build

    out = tmp_path / "dataset"
    before = cluster.actor_ids()
    killer = WeakNodeKiller(cluster, before)
    killer.start()
    t0 = time.time()
    try:
        run_build(_config(queries, out, smollm_engine, cluster.address))
    finally:
        killer.stop()
    wall = time.time() - t0
    assert killer.error is None, killer.error
    kill = killer.kill
    assert kill is not None, "the build finished before the weak actor's node could be killed"
    print(f"build with node loss: {wall:.1f}s (without: {baseline.wall_s:.1f}s); killed {kill}")
    assert cluster.kind_of(kill.node_id) == "vllm"
    for pid in kill.pids:  # the whole node is gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    result = _outcome(cluster, out, before, wall)
    _check_once(result)
    # the same queries as without node loss: each a record, or rejected the same way
    assert sorted(result.records) == sorted(baseline.records)
    assert sorted(result.rejected) == sorted(baseline.rejected)
    # the weak actor was restarted on another vllm node (the spare); the strong one never moved
    weak = next(a for a in result.actors[WEAK] if a["ActorID"] == kill.actor_id)
    assert weak["NumRestarts"] >= 1, weak
    assert weak["Address"]["NodeID"] != kill.node_id
    assert cluster.kind_of(weak["Address"]["NodeID"]) == "vllm"
    strong = result.actors[STRONG]
    assert strong and all(a["Address"]["NodeID"] != kill.node_id for a in strong), strong
