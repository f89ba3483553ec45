"""One way for every stage to connect to Ray, locally or on a cluster.

``address: local`` starts a private instance (never attaches to someone else's cluster on
the same machine). Inside ``ray job submit`` (``RAY_ADDRESS`` set by the job's driver
environment) the job must join the cluster it was submitted to, so ``local`` then means
"the cluster this job runs on". A stage that finds Ray already initialized (the end-to-end
pipeline, tests) reuses it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ptr_ray.config import RayConfig

log = logging.getLogger(__name__)

WORKER_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def init_ray(cfg: RayConfig, min_cpus: int | None = None, env_vars: dict[str, str] | None = None) -> bool:
    """Connect as configured; return True when this call started Ray (the caller shuts it down).

    ``min_cpus`` raises a local instance's logical CPU count to what the stage must schedule
    (engine actors + Train workers can exceed the physical cores of a laptop; they time-share).
    """
    import ray

    if ray.is_initialized():
        return False
    # Ray's driver-side progress bars (Train workers' tqdm_ray) are redrawn around every print
    # by a patched print(); a bar whose close event is lost is then redrawn for the rest of the
    # run. Plain prints keep the pipeline's own output readable.
    os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")
    env = {**WORKER_ENV, **(env_vars or {})}
    for key in ("PTR_RAY_CACHE", "VLLM_CPU_KVCACHE_SPACE", "HF_HUB_OFFLINE", "DS_ACCELERATOR"):
        if key in os.environ:
            env.setdefault(key, os.environ[key])
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}}
    address = cfg.address
    if address in (None, "local") and os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
        log.info("running inside a Ray job: joining %s", address)
    if address in (None, "local"):
        kwargs["address"] = "local"
        kwargs["include_dashboard"] = cfg.include_dashboard
        cpus = cfg.num_cpus or max(os.cpu_count() or 1, min_cpus or 0)
        kwargs["num_cpus"] = max(cpus, min_cpus or 0)
        if cfg.temp_dir:
            kwargs["_temp_dir"] = cfg.temp_dir
    else:
        kwargs["address"] = address
    ray.init(**kwargs)
    return True
