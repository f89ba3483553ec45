"""One way for every stage to connect to Ray, locally or on a cluster.

``address: local`` starts a private instance (never attaches to someone else's cluster on
the same machine). Inside ``ray job submit`` (``RAY_ADDRESS`` set by the job's driver
environment) the job must join the cluster it was submitted to, so ``local`` then means
"the cluster this job runs on".

Who starts and stops Ray: the entry point that starts Ray stops it; a stage called with Ray
already initialized uses it and does not stop it. ``ptr-ray run`` starts one instance for
all its stages; ``ptr-ray build`` / ``train`` / ``eval`` alone each start (and stop) their
own; a test or notebook that initialized Ray keeps its instance. :func:`ray_session` is that
rule as a context manager.

Every job gets the same worker environment (:mod:`ptr_ray.runtime_env`) and Ray's
``LoggingConfig``, so tasks and actors log through Python's ``logging`` without configuring
it themselves.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ptr_ray.config import RayConfig
from ptr_ray.runtime_env import apply_env, ray_env_vars

log = logging.getLogger(__name__)


def _logging_config() -> Any:
    """Ray's logging for every worker of the job: INFO, or DEBUG when the driver logs DEBUG."""
    import ray

    debug = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    return ray.LoggingConfig(encoding="TEXT", log_level="DEBUG" if debug else "INFO")


def init_ray(
    cfg: RayConfig, min_cpus: int | None = None, env_vars: dict[str, str] | None = None
) -> bool:
    """Connect as configured; return True when this call started Ray (the caller shuts it down).

    ``min_cpus`` raises a local instance's logical CPU count to what the stage must schedule
    (engine actors + Train workers can exceed the physical cores of a laptop; they time-share).
    ``env_vars`` are a stage's own additions to the workers' environment.
    """
    import ray

    if ray.is_initialized():
        return False
    apply_env()
    kwargs: dict[str, Any] = {
        "runtime_env": {"env_vars": ray_env_vars(env_vars)},
        "logging_config": _logging_config(),
    }
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
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    ray.init(**kwargs)
    if handlers:
        # ray.init applies the LoggingConfig to this process too, adding a second handler on
        # the root logger: the entry point already configured the driver's logging (ptr-ray's
        # CLI), so keep its handlers only and every line is printed once.
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    return True


@contextmanager
def ray_session(
    cfg: RayConfig, min_cpus: int | None = None, env_vars: dict[str, str] | None = None
) -> Iterator[bool]:
    """Ray for the ``with`` block: started here only if not yet initialized, and then stopped
    here on the way out; an instance someone else started is used and left running.

    Yields whether this block started Ray.
    """
    started = init_ray(cfg, min_cpus=min_cpus, env_vars=env_vars)
    try:
        yield started
    finally:
        if started:
            import ray

            ray.shutdown()
