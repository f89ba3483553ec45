"""A simulated multi-node Ray cluster on one machine, the way Ray tests its own multi-node code.

``ray.cluster_utils.Cluster`` starts a head and worker nodes as separate raylets on this host.
Each node advertises a custom resource standing in for a node type of ``cluster.yaml`` (and
the same ``ptr-ray.io/pool`` label): a head with no CPUs (drivers, GCS, the Train controller,
the Serve controller and proxy), ``vllm`` nodes for the engine actors and Serve replicas
(``pool_vllm``), ``train`` nodes for Ray Train workers (``pool_train``) and ``cpu`` nodes
(``pool_cpu``). ptr-ray's configs pin work to them with ``engine.resources``,
``scaling.resources`` and ``ray_actor_options.resources``. The test's temp folder stands in
for the shared file system every node mounts.

What this proves and what it does not (README, "What is verified where"): scheduling by
custom resources and placement strategy, actor restarts, Train worker-group restarts and Serve
routing across raylets, node loss (every process of a node killed at once) and a job
submitted to the head. Not: network between hosts (every node is 127.0.0.1), separate file
systems, GPUs, NCCL, or one node's memory pressure hurting only that node.

Rules of this machine: the cluster has its own temp folder (short: unix socket paths), its own
auth token (``RAY_AUTH_TOKEN``; Ray 2.60's token auth, ``RAY_AUTH_MODE=token``) and is shut
down with ``Cluster.shutdown`` (never ``ray stop``). It needs a process where Ray is not
initialized yet, so these tests run in their own pytest process: ``make test-cluster``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ptr_ray.testing import free_port

REPO = Path(__file__).resolve().parents[3]
VENV_BIN = Path(sys.executable).parent
POOL_LABEL = "ptr-ray.io/pool"


@dataclass(frozen=True)
class NodeType:
    """One node type of cluster.yaml, scaled down: logical CPUs and its custom resource."""

    num_cpus: int
    resources: dict[str, float] = field(default_factory=dict)


NODE_TYPES: dict[str, NodeType] = {
    # cluster.yaml's head advertises CPU: 0, so no task or actor lands there
    "head": NodeType(0),
    # "GPU" nodes for engines: one engine per node (weak and strong pools land apart)
    "vllm": NodeType(2, {"pool_vllm": 1}),
    # "GPU" node for training: room for two workers, so a group can restart on one node
    "train": NodeType(2, {"pool_train": 2}),
    "cpu": NodeType(2, {"pool_cpu": 2}),
}


@dataclass
class SimNode:
    kind: str
    node: Any  # ray._private.node.Node

    @property
    def node_id(self) -> str:
        return str(self.node.node_id)


class SimCluster:
    """A started ``Cluster`` plus what the tests ask of it: nodes by kind, actors by class,
    and killing a whole node (its raylet and every process under it, with SIGKILL)."""

    def __init__(self, cluster: Any, head: SimNode, dashboard_port: int | None) -> None:
        self.cluster = cluster
        self.nodes: list[SimNode] = [head]
        self.dashboard_port = dashboard_port
        self.killed: list[SimNode] = []

    @property
    def address(self) -> str:
        """The GCS address a driver passes as ``ray.address``."""
        return str(self.cluster.address)

    @property
    def dashboard_url(self) -> str:
        assert self.dashboard_port is not None, "this cluster was started without a dashboard"
        return f"http://127.0.0.1:{self.dashboard_port}"

    def add(self, kind: str) -> SimNode:
        spec = NODE_TYPES[kind]
        node = self.cluster.add_node(
            num_cpus=spec.num_cpus,
            resources=dict(spec.resources),
            labels={POOL_LABEL: kind},
            # Every node of a real cluster unpacks a job's working_dir on its own disk. Here
            # all raylets share one session folder, and a node that has not seen the package
            # yet unpacks it again with overwrite (rmtree first): with one shared
            # runtime_resources folder that deleted the job driver's working directory under
            # it on the head (the driver's cwd vanished: FileNotFoundError on import).
            runtime_env_dir_name=f"runtime_resources_node{len(self.nodes)}",
        )
        sim = SimNode(kind, node)
        self.nodes.append(sim)
        return sim

    def alive(self, kind: str | None = None) -> list[SimNode]:
        return [n for n in self.nodes if n not in self.killed and kind in (None, n.kind)]

    def kind_of(self, node_id: str) -> str:
        return next(n.kind for n in self.nodes if n.node_id == node_id)

    def node(self, node_id: str) -> SimNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    def actors(self, class_part: str, exclude: set[str] | frozenset[str] = frozenset()) -> list:
        """Actors (any state) whose class name contains ``class_part``, from the GCS actor
        table (no driver or dashboard needed); ``exclude``: actor ids to leave out."""
        table = self.cluster.global_state.actor_table(None)
        return [
            a
            for a in table.values()
            if class_part in a["ActorClassName"] and a["ActorID"] not in exclude
        ]

    def actor_ids(self) -> set[str]:
        return set(self.cluster.global_state.actor_table(None))

    def kill(self, node: SimNode) -> list[int]:
        """SIGKILL a whole node at once: its raylet, the workers and engines under it and the
        node's agents, then let ``Cluster`` reap it. Returns the pids killed."""
        import psutil
        from ray._private import ray_constants

        raylet = node.node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process
        procs = [psutil.Process(raylet.pid)]
        try:
            procs += procs[0].children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=30)
        self.cluster.remove_node(node.node, allow_graceful=False)
        self.killed.append(node)
        return [p.pid for p in procs]


def _refresh_auth() -> None:
    """Make this process's Ray see the current RAY_AUTH_* variables (both are cached)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@pytest.fixture(scope="module")
def sim_cluster() -> Iterator[Callable[..., SimCluster]]:
    """``sim_cluster(*kinds, dashboard=False) -> SimCluster``: a head plus one node per kind.

    One cluster per module; shut down (and this process's environment restored) at the end.
    """
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        pytest.skip(
            "the simulated cluster needs a process without Ray initialized: run "
            "`make test-cluster` (pytest tests/cluster/sim in its own process)"
        )
    root = Path(tempfile.mkdtemp(prefix="rsim-", dir="/tmp"))  # short: unix socket paths
    temp_dir = root / "ray"  # Ray's default temp dir under RAY_TMPDIR (its address file too)
    temp_dir.mkdir()
    keys = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_TMPDIR", "PATH")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(
        {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),  # this cluster's own, not ~/.ray's
            "RAY_TMPDIR": str(root),  # Ray's address file goes there, not to /tmp/ray
            # `python` in a job's entrypoint must be this venv's: ptr_ray is installed there
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    _refresh_auth()
    started: list[SimCluster] = []
    clusters: list[Any] = []

    def start(*kinds: str, dashboard: bool = False) -> SimCluster:
        assert not started, "one simulated cluster per module"
        t0 = time.time()
        port = free_port() if dashboard else None
        head_args: dict[str, Any] = {
            "num_cpus": NODE_TYPES["head"].num_cpus,
            "labels": {POOL_LABEL: "head"},
            "temp_dir": str(temp_dir),
            "include_dashboard": dashboard,
            "dashboard_agent_listen_port": free_port(),
            "object_store_memory": 200 * 1024 * 1024,
        }
        if dashboard:
            head_args.update(dashboard_host="127.0.0.1", dashboard_port=port)
        cluster = Cluster()
        clusters.append(cluster)  # shut down at the end even if a node fails to start
        cluster.add_node(**head_args)
        sim = SimCluster(cluster, SimNode("head", cluster.head_node), port)
        started.append(sim)
        for kind in kinds:
            sim.add(kind)
        cluster.wait_for_nodes()
        print(f"simulated cluster head + {list(kinds)} up in {time.time() - t0:.1f}s ({temp_dir})")
        return sim

    try:
        yield start
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for cluster in clusters:
            cluster.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _refresh_auth()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def smollm_engine() -> dict[str, Any]:
    """The packaged SmolLM2-135M on the transformers engine: real text (a random tiny model
    writes blank turns, which the build rejects) and a start of seconds, not vLLM's ~40 s."""
    from ptr_ray.models import resolve_model

    resolve_model("builtin:smollm2-135m")  # convert once, here, not in two actors at once
    return {
        "model": "builtin:smollm2-135m",
        "backend": "hf",
        "dtype": "float32",
        "max_model_len": 1024,
        "num_cpus": 1,
    }
