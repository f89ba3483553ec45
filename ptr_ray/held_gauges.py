"""Ray gauges that stay on the metrics endpoint while their value holds.

Ray 2.60 exports metrics through OpenTelemetry, and its node agent drops a gauge series about
two export intervals after the series was last *set* (``2 * metrics_report_interval_ms``, 20 s
by default; ``ray/_private/telemetry/open_telemetry_metric_recorder.py``). Counters and
histograms are cumulative and stay. Measured here on 2 Dec 2026: a gauge set once from a driver
or an actor is scraped for ~20 s, then is gone for good; vLLM's ``cache_config_info`` vanished
the same way while ``num_requests_running`` stayed only as long as the engine kept stepping.
A gauge means "the value now", and a value that did not change is still the value: a build
with 300 rows pending for a minute, an idle replica with 0 requests running, training between
two slow steps must not disappear from a chart.

:class:`HeldGauge` wraps a Ray gauge, remembers the last value of each tag set and sets them
again from one daemon thread per process, twice per export interval, until :meth:`release`
(or until the gauge is garbage-collected: the thread holds it weakly).
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_EXPORT_INTERVAL_S = 10.0  # Ray's metrics_report_interval_ms default


def refresh_period_s() -> float:
    """Half the export interval Ray runs with (the TTL is twice it), at least 0.5 s."""
    try:
        import ray

        interval = max(ray._config.metrics_report_interval_ms(), 1000) / 1000.0
    except Exception:  # pragma: no cover - a private Ray call; fall back to the default
        interval = DEFAULT_EXPORT_INTERVAL_S
    return max(0.5, interval / 2)


TagKey = tuple[tuple[str, str], ...]


class HeldGauge:
    """A Ray gauge (``ray.util.metrics.Gauge`` or ``ray.serve.metrics.Gauge``) whose last value
    per tag set is set again periodically. Other attributes pass through to the wrapped gauge
    (``_tag_keys``, ``set_default_tags``, ...), so it stands in wherever the gauge did."""

    def __init__(self, gauge: Any, owner: str = "") -> None:
        self._gauge = gauge
        self.owner = owner
        self._lock = threading.Lock()
        self._last: dict[TagKey, tuple[float, dict[str, str] | None]] = {}
        _refresher().add(self)

    def __getattr__(self, name: str) -> Any:
        if name == "_gauge":  # not set yet (copy/unpickle): no recursion
            raise AttributeError(name)
        return getattr(self._gauge, name)

    def set(self, value: int | float | None, tags: dict[str, str] | None = None) -> None:
        if value is None:  # Ray's own no-op
            return
        self._gauge.set(value, tags=tags)  # raises on a bad value or tag, as Ray does
        key = tuple(sorted((tags or {}).items()))
        with self._lock:
            self._last[key] = (value, dict(tags) if tags is not None else None)

    def release(self, tags: dict[str, str] | None = None) -> None:
        """Stop holding one series (``tags``) or all of them; they age out of the endpoint."""
        with self._lock:
            if tags is None:
                self._last.clear()
            else:
                self._last.pop(tuple(sorted(tags.items())), None)

    @property
    def held(self) -> int:
        with self._lock:
            return len(self._last)

    def refresh(self) -> None:
        with self._lock:
            items = list(self._last.values())
        for value, tags in items:
            self._gauge.set(value, tags=tags)


def release_owner(owner: str) -> int:
    """Release every held gauge of ``owner`` (an engine that closed); how many there were."""
    gauges = [g for g in _refresher().gauges() if g.owner == owner]
    for g in gauges:
        g.release()
    return len(gauges)


class _Refresher:
    """One daemon thread per process; started by the first gauge, sleeps when none is held."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._gauges: weakref.WeakSet[HeldGauge] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, gauge: HeldGauge) -> None:
        with self._lock:
            self._gauges.add(gauge)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="ptr-ray-held-gauges", daemon=True
                )
                self._thread.start()

    def gauges(self) -> list[HeldGauge]:
        with self._lock:
            return list(self._gauges)

    def refresh_all(self) -> None:
        for g in self.gauges():
            try:
                g.refresh()
            except Exception:  # metrics must never break the work they describe
                log.debug("held gauge refresh failed", exc_info=True)

    def _run(self) -> None:
        while not self._wake.wait(self.period_s):
            self.refresh_all()


_REFRESHER: _Refresher | None = None
_REFRESHER_LOCK = threading.Lock()


def _refresher() -> _Refresher:
    global _REFRESHER
    with _REFRESHER_LOCK:
        if _REFRESHER is None:
            _REFRESHER = _Refresher(refresh_period_s())
        return _REFRESHER
