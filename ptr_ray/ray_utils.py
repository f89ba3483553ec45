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

The dashboard: a local instance starts it (``ray.include_dashboard``, on by default) on
loopback only, at 8265 or the next free port; :func:`init_ray` logs the URL Ray really chose,
and :func:`log_dashboard` repeats it at the start of every stage (the pipeline's banners). A
driver that joins a cluster logs the cluster's dashboard instead. Only an instance that
:func:`init_ray` started or joined has a known URL: one started by someone else (a test's
fixture, a notebook) may run without the dashboard's web UI, and then no URL is printed.
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

#: The dashboard's pages that show ptr-ray's work (the web UI routes after the URL).
VIEWS = "#/jobs #/actors #/serve"
#: Ray's default dashboard agent port (``ray_constants.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT``).
DASHBOARD_AGENT_PORT = 52365
#: (the Ray node this process connected to, its dashboard URL), set by :func:`init_ray`.
_dashboard: tuple[str, str] | None = None


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
        if cfg.include_dashboard:
            warn_if_agent_port_taken()
            kwargs["dashboard_host"] = cfg.dashboard_host  # loopback (RayConfig checks)
            if cfg.dashboard_port:
                kwargs["dashboard_port"] = cfg.dashboard_port
        cpus = cfg.num_cpus or max(os.cpu_count() or 1, min_cpus or 0)
        kwargs["num_cpus"] = max(cpus, min_cpus or 0)
        if cfg.temp_dir:
            kwargs["_temp_dir"] = cfg.temp_dir
    else:
        kwargs["address"] = address
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    context = ray.init(**kwargs)
    if handlers:
        # ray.init applies the LoggingConfig to this process too, adding a second handler on
        # the root logger: the entry point already configured the driver's logging (ptr-ray's
        # CLI), so keep its handlers only and every line is printed once.
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    local = kwargs["address"] == "local"
    # With include_dashboard=False Ray still runs its API server (jobs, state) and reports
    # its address, but with no web UI: that URL would show a blank page, so it is not kept.
    _remember_dashboard(
        getattr(context, "dashboard_url", None) if cfg.include_dashboard or not local else None
    )
    log_dashboard("local instance" if local else "cluster")
    return True


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something on this machine already listens on ``port`` (a bind test)."""
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def warn_if_agent_port_taken() -> None:
    """Warn before starting a local instance whose job API cannot work.

    ``ray.init(address="local")`` always gives its node's dashboard agent the default port
    (52365; unlike ``ray start`` it has no ``--dashboard-agent-listen-port``). With another Ray
    instance on this machine holding that port, the new agent cannot listen, and the new
    dashboard's job API answers every submission "HTTP 500: No available agent to submit job"
    (measured on Ray 2.60) while its views still work. Said once, up front, with the fix."""
    port = DASHBOARD_AGENT_PORT
    if not port_in_use(port):
        return
    log.warning(
        "port %d (Ray's dashboard agent) is taken, most likely by another Ray instance on this "
        "machine: this run's dashboard shows its work, but `ray job submit` to it will fail "
        "with 'No available agent'. To submit jobs, stop the other instance, or start one "
        "cluster with `ray start --head --dashboard-host 127.0.0.1 "
        "--dashboard-agent-listen-port <free port>` and run with ray.address=auto",
        port,
    )


def _remember_dashboard(url: str | None) -> None:
    global _dashboard
    _dashboard = None
    if not url:
        return
    import ray

    url = url if "://" in url else f"http://{url}"
    try:
        node = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - e.g. a Ray client connection: the URL is still right
        node = ""
    _dashboard = (node, url.rstrip("/"))


def dashboard_url() -> str | None:
    """The dashboard of the Ray instance this process is connected to, as ``http://host:port``;
    None when Ray is not initialized, runs without the dashboard, or was started elsewhere."""
    import ray

    if _dashboard is None or not ray.is_initialized():
        return None
    node, url = _dashboard
    try:
        same = not node or ray.get_runtime_context().get_node_id() == node
    except Exception:  # noqa: BLE001 - a half-shut-down instance: no URL, never an error
        return None
    return url if same else None


def log_dashboard(where: str = "") -> str | None:
    """Log the dashboard's URL (one line, with the views that show ptr-ray's work); returns it.

    Called by :func:`init_ray` and by the pipeline's stage banners, so a user watching a long
    run finds the URL near the top of every stage's output."""
    url = dashboard_url()
    if url:
        suffix = f" ({where})" if where else ""
        # Ray 2.60 protects a new local instance with a token by default (ray.init sets
        # RAY_AUTH_MODE=token here): the web UI asks for it once per browser.
        token = os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
        login = "; it asks for Ray's token: `ray get-auth-token`" if token else ""
        log.info("Ray dashboard%s: %s  (views: %s%s)", suffix, url, VIEWS, login)
    return url


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
