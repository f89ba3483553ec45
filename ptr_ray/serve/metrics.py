"""Serving metrics through Ray's metrics API: they land on Ray's Prometheus endpoint and the
dashboard next to Serve's own. :class:`ServeMetrics` counts what the ingress sees (requests,
rounds, tokens, cancellations); outside Ray (unit tests of the FastAPI app) it counts
in-process only, so the same code runs in both places. :class:`EngineMetrics` counts what an
engine replica sees (rounds started, and how each ended)."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

ROUND_LATENCY_BOUNDARIES = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]

# The metrics of this module, one table: (name, kind, description, tag keys). The classes make
# them from here; the Grafana dashboard test (tests/observability) checks its queries against
# it. Ray exports each as ``ray_<name>`` (counters keep their ``_total``; a histogram adds
# ``_bucket``, ``_sum``, ``_count``); Serve adds application, deployment and replica to the
# engine's.
MetricSpec = tuple[str, str, str, tuple[str, ...]]
INGRESS_METRICS: dict[str, MetricSpec] = {
    "requests": (
        "ptr_requests_total",
        "counter",
        "refinement requests by route and status",
        ("route", "status"),
    ),
    "rounds": ("ptr_rounds_total", "counter", "refinement rounds generated", ("model",)),
    "round_latency": (
        "ptr_round_latency_seconds",
        "histogram",
        "latency of one refinement round",
        ("model",),
    ),
    "tokens": (
        "ptr_tokens_total",
        "counter",
        "tokens by kind (prompt, completion, cached)",
        ("model", "kind"),
    ),
    "stopped_early": (
        "ptr_stopped_early_total",
        "counter",
        "requests ended by stop_when_stable",
        ("model",),
    ),
    "cancelled": (
        "ptr_cancelled_total",
        "counter",
        "requests whose client went away",
        ("model",),
    ),
    "timeouts": (
        "ptr_timeouts_total",
        "counter",
        "requests aborted by a time limit (first_token_timeout, stall_timeout, request_timeout)",
        ("model", "limit"),
    ),
}
ENGINE_METRICS: dict[str, MetricSpec] = {
    "requests": (
        "ptr_engine_requests_total",
        "counter",
        "refinement requests an engine replica took (all their rounds run there)",
        (),
    ),
    "started": (
        "ptr_engine_rounds_started_total",
        "counter",
        "rounds an engine replica started",
        (),
    ),
    "ended": (
        "ptr_engine_rounds_total",
        "counter",
        "rounds an engine replica ended, by outcome (finished, cancelled, rejected, failed)",
        ("outcome",),
    ),
}


def _make(m: Any, spec: MetricSpec) -> Any:
    """One metric from ``ray.util.metrics`` or ``ray.serve.metrics`` (same signatures)."""
    name, kind, description, keys = spec
    if kind == "histogram":
        return m.Histogram(
            name, description=description, boundaries=ROUND_LATENCY_BOUNDARIES, tag_keys=keys
        )
    cls = m.Counter if kind == "counter" else m.Gauge
    return cls(name, description=description, tag_keys=keys or None)


class ServeMetrics:
    """requests, rounds, per-round latency, tokens and prefix-cache hits of one ingress replica."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.local: dict[str, float] = defaultdict(float)  # in-process totals, Ray or not
        self._lock = threading.Lock()
        self._ray: dict[str, Any] = {}
        try:
            import ray

            if ray.is_initialized():
                from ray.util import metrics as m

                self._ray = {key: _make(m, INGRESS_METRICS[key]) for key in INGRESS_METRICS}
        except Exception:  # pragma: no cover - metrics must never break serving
            self._ray = {}

    def _inc(self, key: str, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        with self._lock:
            self.local[
                key
                if not tags
                else key + ":" + ",".join(f"{k}={v}" for k, v in sorted(tags.items()))
            ] += value
        metric = self._ray.get(key.split(":")[0])
        if metric is not None and value:
            metric.inc(value, tags=tags)

    def request(self, route: str, status: int) -> None:
        self._inc("requests", 1, {"route": route, "status": str(status)})

    def round(
        self, latency_s: float, prompt_tokens: int, completion_tokens: int, cached_tokens: int
    ) -> None:
        tags = {"model": self.model}
        self._inc("rounds", 1, tags)
        with self._lock:
            self.local["round_latency_sum"] += latency_s
        if "round_latency" in self._ray:
            self._ray["round_latency"].observe(latency_s, tags=tags)
        for kind, n in (
            ("prompt", prompt_tokens),
            ("completion", completion_tokens),
            ("cached", cached_tokens),
        ):
            self._inc("tokens", n, {"model": self.model, "kind": kind})

    def stopped_early(self) -> None:
        self._inc("stopped_early", 1, {"model": self.model})

    def cancelled(self) -> None:
        self._inc("cancelled", 1, {"model": self.model})

    def timed_out(self, limit: str) -> None:
        self._inc("timeouts", 1, {"model": self.model, "limit": limit})


class EngineMetrics:
    """Requests and rounds of one engine replica: how many started and how each ended.

    Every round of a request runs on the replica that took the request (the loop runs in the
    replica), so per replica ``rounds started`` is the sum of the rounds of its ``requests``;
    operators (and the routing integration test) see that on Ray's metrics endpoint.

    ``outcome`` is ``finished``, ``cancelled`` (the caller went away mid-round: the client
    disconnected or a time limit ran out, so the request was aborted inside vLLM), ``rejected``
    (prompt too long) or ``failed`` (the engine raised).
    Started minus ended is the work in flight. Made with ``ray.serve.metrics``, so Serve tags
    every series with its application, deployment and replica.
    """

    OUTCOMES = ("finished", "cancelled", "rejected", "failed")

    def __init__(self) -> None:
        self._requests: Any = None
        self._started: Any = None
        self._ended: Any = None
        try:
            from ray.serve import metrics as m

            self._requests = _make(m, ENGINE_METRICS["requests"])
            self._started = _make(m, ENGINE_METRICS["started"])
            self._ended = _make(m, ENGINE_METRICS["ended"])
        except Exception:  # pragma: no cover - metrics must never break serving
            self._requests = self._started = self._ended = None

    def request(self) -> None:
        if self._requests is not None:
            self._requests.inc(1)

    def started(self) -> None:
        if self._started is not None:
            self._started.inc(1)

    def ended(self, outcome: str) -> None:
        if self._ended is not None:
            self._ended.inc(1, tags={"outcome": outcome})
