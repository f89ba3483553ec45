"""Where a batch of model-written programs runs: here, or a CPU Ray task off the engine's node.

On a cluster the evaluation task holds the GPU engine, and its node mounts shared storage.
Running untrusted code there puts it next to both, and competes with the engine for the
node's CPUs. So when evaluation itself runs inside Ray (``ptr-ray eval`` with ``ray:`` set,
cluster jobs), each batch becomes a Ray task that asks for CPUs only (``num_gpus=0``),
optionally a custom resource or node labels (``sandbox.schedule``), and by default prefers any
node but the evaluator's: a label selector ``ray.io/node-id: !<this node>`` with a fallback to
the user's selector (or this node) when nothing else fits, so a one-node cluster still works.
The sandbox itself (:mod:`ptr_ray.eval.sandbox`) runs wherever the task lands and probes that
node's isolation; ``isolation: required`` is enforced there.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

from ptr_ray.config.eval import SandboxConfig, SandboxScheduleConfig
from ptr_ray.eval.sandbox import SandboxError, run_programs

log = logging.getLogger(__name__)

NODE_ID_LABEL = "ray.io/node-id"


def inside_ray_task() -> bool:
    """True in a Ray worker process (a task or actor), False in a driver or without Ray."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return False
    try:
        from ray._private.worker import WORKER_MODE

        return bool(ray.get_runtime_context().worker.mode == WORKER_MODE)
    except (AttributeError, ImportError):
        return False


def task_options(sched: SandboxScheduleConfig, node_id: str | None) -> dict[str, Any]:
    """The ``.options(...)`` of the Ray task that runs one batch."""
    opts: dict[str, Any] = {"num_cpus": sched.num_cpus, "num_gpus": 0}
    if sched.resources:
        opts["resources"] = dict(sched.resources)
    selector = dict(sched.label_selector)
    if sched.avoid_engine_node and node_id and NODE_ID_LABEL not in selector:
        opts["fallback_strategy"] = [{"label_selector": dict(selector or {NODE_ID_LABEL: node_id})}]
        selector[NODE_ID_LABEL] = f"!{node_id}"
    if selector:
        opts["label_selector"] = selector
    return opts


def _run_batch(
    jobs: Sequence[tuple[dict[str, Any], str]], timeout_s: float, sandbox: SandboxConfig
) -> list[dict[str, Any]]:
    return run_programs(jobs, timeout_s=timeout_s, sandbox=sandbox)


def run_scheduled(
    jobs: Sequence[tuple[dict[str, Any], str]], timeout_s: float, sandbox: SandboxConfig
) -> list[dict[str, Any]]:
    """:func:`~ptr_ray.eval.sandbox.run_programs`, placed as ``sandbox.schedule`` says."""
    where = sandbox.schedule.where
    if where == "auto":
        where = "ray" if inside_ray_task() else "local"
    if where == "local" or not jobs:
        return run_programs(jobs, timeout_s=timeout_s, sandbox=sandbox)
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        raise SandboxError("sandbox.schedule.where is 'ray' but Ray is not initialized here")
    node_id = ray.get_runtime_context().get_node_id()
    opts = task_options(sandbox.schedule, node_id)
    log.info("code sandbox: %d programs in a Ray task %s", len(jobs), opts)
    task = ray.remote(_run_batch).options(**opts)
    return list(ray.get(task.remote(list(jobs), timeout_s, sandbox)))
