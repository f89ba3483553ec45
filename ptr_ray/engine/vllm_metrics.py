"""vLLM's engine stats on Ray's Prometheus endpoint, labelled with the engine's role.

vLLM computes its stats (running and waiting requests, KV-cache usage, prefix-cache queries
and hits, prompt and generated tokens, latency histograms) when ``log_stats`` is on, and ships
a stat logger that records them as Ray metrics (``vllm.v1.metrics.ray_wrappers``): the node's
metrics agent then exports them as ``ray_vllm_*`` next to Ray's own. Its series carry
``model_name`` (vLLM's ``served_model_name``; ptr-ray sets it to ``EngineConfig.model``),
``engine`` and ``ReplicaId`` (a Serve replica, else empty). Several engines of one model run
side by side in ptr-ray (a build's weak pool and its judge, a Serve replica, an evaluation), so
this module adds one more label, ``role`` (``weak``, ``strong``, ``judge``, ``serve``,
``engine`` for the rest), by subclassing vLLM's Ray wrappers: a person can then chart one pool.

Only used inside a Ray process (an actor, a Serve replica, a driver after ``ray.init``): there
is nowhere else to export to. vLLM is imported when :func:`role_stat_logger` is called.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from ptr_ray.held_gauges import HeldGauge, release_owner

log = logging.getLogger(__name__)

ROLES = ("weak", "strong", "judge", "serve", "engine")
ROLE_TAG = "role"
REPLICA_TAG = "ReplicaId"  # the tag vLLM's Ray wrappers add to every series
_ROLE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_role(role: str) -> str:
    """A role label value: short, plain characters (it names a time series)."""
    if not isinstance(role, str) or not _ROLE_RE.match(role):
        raise ValueError(f"engine metrics role must match {_ROLE_RE.pattern}, got {role!r}")
    return role


def ray_metrics_ready() -> bool:
    """True in a process connected to Ray (a worker, a replica, a driver after ``ray.init``)."""
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a core dependency
        return False
    return bool(ray.is_initialized())


def role_tags(tag_keys: tuple[str, ...], labels: tuple[Any, ...], role: str, replica: str) -> dict:
    """The tags of one labelled series: vLLM's label values in order, its replica, our role.

    ``tag_keys`` are the metric's keys: vLLM's label names, then ``ReplicaId`` and ``role``
    (see :func:`role_tag_keys`). Values become strings, as Ray requires.
    """
    names = tag_keys[:-2]
    if len(labels) != len(names):
        raise ValueError(f"expected {len(names)} label values ({names}), got {len(labels)}")
    tags = {k: v if isinstance(v, str) else str(v) for k, v in zip(names, labels, strict=True)}
    tags[REPLICA_TAG] = replica
    tags[ROLE_TAG] = role
    return tags


def role_tag_keys(labelnames: list[str] | None) -> tuple[str, ...]:
    return (*(labelnames or ()), REPLICA_TAG, ROLE_TAG)


def gauge_owner(role: str) -> str:
    return f"vllm:{role}"


def release_gauges(role: str) -> int:
    """Stop holding the gauges of this process's engines of ``role`` (one closed); they age
    out of the endpoint as a dead engine's should."""
    return release_owner(gauge_owner(role))


def role_stat_logger(role: str) -> type:
    """A vLLM stat-logger class (a ``StatLoggerFactory``) that records to Ray metrics with
    ``role=<role>`` on every series. Pass it in ``stat_loggers`` (``AsyncLLM``) or install it
    with :func:`install_offline`."""
    role = check_role(role)
    from vllm.v1.metrics import ray_wrappers as rw

    class _RoleTagged:
        """vLLM's Ray wrapper plus one tag key, ``role``, set on every sample."""

        metric: Any
        _tags: dict[str, str]

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[call-arg]
            self._tags = {**self._tags, ROLE_TAG: role}

        @staticmethod
        def _get_tag_keys(labelnames: list[str] | None) -> tuple[str, ...]:
            return role_tag_keys(labelnames)

        def _build_tags(self, *labels: Any, **labelskwargs: Any) -> dict[str, str]:
            replica = rw._get_replica_id() or ""
            if labels:
                return role_tags(self.metric._tag_keys, labels, role, replica)
            tags = {k: v if isinstance(v, str) else str(v) for k, v in labelskwargs.items()}
            return {**tags, REPLICA_TAG: replica, ROLE_TAG: role}

    class Gauge(_RoleTagged, rw.RayGaugeWrapper):
        """Held (:mod:`ptr_ray.held_gauges`): an idle engine's ``num_requests_running 0``
        stays on the endpoint instead of ageing out 20 s after vLLM last set it."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.metric = HeldGauge(self.metric, owner=gauge_owner(role))

    class Counter(_RoleTagged, rw.RayCounterWrapper):
        pass

    class Histogram(_RoleTagged, rw.RayHistogramWrapper):
        pass

    class SpecDecoding(rw.RaySpecDecodingProm):
        _counter_cls = Counter

    class KVConnector(rw.RayKVConnectorProm):
        _gauge_cls = Gauge
        _counter_cls = Counter
        _histogram_cls = Histogram

    class PerfMetrics(rw.RayPerfMetricsProm):
        _counter_cls = Counter

    class RoleRayStatLogger(rw.RayPrometheusStatLogger):
        _gauge_cls = Gauge
        _counter_cls = Counter
        _histogram_cls = Histogram
        _spec_decoding_cls = SpecDecoding
        _kv_connector_cls = KVConnector
        _perf_metrics_cls = PerfMetrics

    RoleRayStatLogger.__name__ = RoleRayStatLogger.__qualname__ = f"RayStatLogger_{role}"
    return RoleRayStatLogger


def install_offline(llm: Any, role: str) -> bool:
    """Point an offline ``vllm.LLM`` (built with ``disable_log_stats=False``) at Ray metrics.

    ``LLM`` takes no ``stat_loggers``; its engine made vLLM's default loggers (a log line every
    few seconds, and prometheus_client gauges nobody scrapes in a Ray worker). They are replaced,
    before the first request, by one manager holding only the role-labelled Ray logger. False
    (nothing installed) when the engine computes no stats (``extra: {disable_log_stats: true}``).
    """
    from vllm.v1.metrics.loggers import StatLoggerManager

    engine = llm.llm_engine
    if not getattr(engine, "log_stats", False):
        log.warning("vLLM engine built with disable_log_stats=True: no engine metrics exported")
        return False
    manager = StatLoggerManager(
        vllm_config=engine.vllm_config,
        custom_stat_loggers=[role_stat_logger(role)],
        enable_default_loggers=False,
    )
    manager.log_engine_initialized()
    engine.logger_manager = manager
    return True
