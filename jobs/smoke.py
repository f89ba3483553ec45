"""The first job to submit to a new cluster: ``ptr-ray smoke`` on a node that fits the engine.

    ray job submit --working-dir . -- python jobs/smoke.py --config jobs/configs/smoke_gpu.yaml
    ray job submit --working-dir . -- python jobs/smoke.py engine.num_gpus=1

It takes the arguments of ``ptr-ray smoke`` (``--config FILE`` plus ``key.sub=value``
overrides) and runs the smoke -- load each model through the configured engine and answer one
query -- inside a Ray task that asks for the engine's resources (``engine.num_gpus``,
``engine.num_cpus``). The job's driver runs on the head node, which has no GPU on our clusters
(cluster.yaml, k8s/), so running the smoke in the driver would test the wrong machine: as a task
it lands on a worker that fits (the autoscaler adds one if none is up) and proves that the
worker's Python imports ptr_ray, sees its accelerator and loads the model. The driver then
prints one summary line per model and the node that answered.

A failure is reported as ``ptr-ray`` reports it: a bad config is one line
(``smoke job: error: ...``, exit 2), and so is anything a user can cause later, even inside
the task (``ptr-ray: error: ...``, exit 1 or 2); a bug shows its traceback (exit 70).
``--debug`` shows the traceback of every error.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import traceback
from typing import Any

from ptr_ray.cli import EXIT_USAGE, build_parser, configure_logging, report
from ptr_ray.config import ConfigError, RayConfig, SmokeConfig, load_config

log = logging.getLogger(__name__)


def _smoke_on_worker(cfg: SmokeConfig) -> dict[str, Any]:
    """Runs inside the Ray task: the smoke itself plus where it ran (for the summary)."""
    from importlib.metadata import version

    import ray

    from ptr_ray.smoke import run_smoke

    t0 = time.time()
    answers = run_smoke(cfg)
    return {
        "answers": answers,
        "seconds": time.time() - t0,
        "node_ip": ray.util.get_node_ip_address(),
        "hostname": socket.gethostname(),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "python": sys.executable,
        "ptr_ray": version("ptr-ray"),
    }


def _run(cfg: SmokeConfig) -> int:
    """Connect to the cluster, run the smoke in a task that fits the engine, print the summary."""
    import ray

    from ptr_ray.ray_utils import ray_session

    # Inside `ray job submit` RAY_ADDRESS points at the cluster; "auto" finds a cluster started
    # with `ray start` on this machine. Neither starts a new Ray: a job must not run on a
    # private instance by accident.
    address = os.environ.get("RAY_ADDRESS") or "auto"
    with ray_session(RayConfig(address=address)):
        res = ray.cluster_resources()
        log.info(
            "connected to %s: %s CPU, %s GPU on %d node(s)",
            address,
            res.get("CPU", 0),
            res.get("GPU", 0),
            len([n for n in ray.nodes() if n.get("Alive")]),
        )
        task = ray.remote(_smoke_on_worker).options(
            num_cpus=cfg.engine.num_cpus,
            num_gpus=cfg.engine.num_gpus,
            max_retries=0,
            name="ptr-ray-smoke",
        )
        log.info(
            "scheduling the smoke (%s) with %s CPU / %s GPU for %d model(s)",
            cfg.engine.backend,
            cfg.engine.num_cpus,
            cfg.engine.num_gpus,
            len(cfg.models),
        )
        out = ray.get(task.remote(cfg))

    print(
        f"\nsmoke job ok: {len(out['answers'])} model(s) answered on node {out['node_ip']} "
        f"({out['hostname']}, GPUs {out['gpu_ids'] or 'none'}) in {out['seconds']:.1f}s, "
        f"python {out['python']}, ptr_ray {out['ptr_ray']}"
    )
    for source, answer in zip(cfg.models, out["answers"], strict=True):
        preview = " ".join(answer.split())[:120]
        print(f"  {source}: {preview!r}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit status and error lines as ``ptr-ray`` (ptr_ray/cli.py): one line for a failure the
    user can act on, even one raised inside the Ray task (``report`` unwraps ``RayTaskError``),
    a traceback for a bug; ``--debug`` shows every traceback."""
    args = build_parser().parse_args(["smoke", *(sys.argv[1:] if argv is None else argv)])
    configure_logging()
    debug = getattr(args, "debug", False)
    try:
        cfg = load_config(SmokeConfig, args.config, args.overrides)
    except ConfigError as e:  # the job's own prefix: job logs (and the cluster tests) show it
        if debug:
            traceback.print_exc()
        print(f"smoke job: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _run(cfg)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - reported as the CLI does
        return report(e, debug)


if __name__ == "__main__":
    sys.exit(main())
