"""Build progress on Ray's Prometheus endpoint: the numbers of stats.json, as they grow.

A build already counts everything it does (:mod:`ptr_ray.datagen.output`'s ``RejectLog``,
``ShardWriter``, :class:`ptr_ray.datagen.results.Tally`) and writes the totals to stats.json at
the end. :class:`BuildMetrics` exports the same counts while the build runs, as Ray metrics, so
a person can chart rows in, out and dropped (by stage and reason) and tokens per model. The
driver hands it a snapshot of those counts after the candidates are prepared and after every
batch; it turns each snapshot into counter increments (the difference from what it exported
before), so the exported totals are always the stats' own numbers, never a second tally that
could drift from them.

Every series carries ``build`` (the dataset folder's name). Names (Ray adds ``ray_`` in front;
counters are exported with ``_total``):

=================================  ============================  ==========================
metric                             labels                        what
=================================  ============================  ==========================
``ptr_build_rows_in_total``        build                         rows read from the sources
``ptr_build_rows_skipped_total``   build                         already in the dataset
``ptr_build_rows_queued_total``    build                         sent to the engine pools
``ptr_build_rows_out_total``       build, kind                   records written (ptr, sft)
``ptr_build_rows_dropped_total``   build, stage, reason          rejects (rejects.jsonl)
``ptr_build_tokens_total``         build, role, model, kind      prompt/generated/cached
``ptr_build_rows_pending``         build                         queued, not back yet (gauge)
=================================  ============================  ==========================
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ptr_ray.held_gauges import HeldGauge

log = logging.getLogger(__name__)

# name -> (kind, description, tag keys). The single list of build metrics: BuildMetrics makes
# them, the Grafana dashboard test checks its queries against it.
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "ptr_build_rows_in_total": ("counter", "rows read from the build's sources", ("build",)),
    "ptr_build_rows_skipped_total": (
        "counter",
        "rows already written by an earlier run of the same build",
        ("build",),
    ),
    "ptr_build_rows_queued_total": (
        "counter",
        "candidate rows sent to the engine pools",
        ("build",),
    ),
    "ptr_build_rows_out_total": ("counter", "dataset records written", ("build", "kind")),
    "ptr_build_rows_dropped_total": (
        "counter",
        "rows dropped, by stage (prepare, generate, write) and reason",
        ("build", "stage", "reason"),
    ),
    "ptr_build_tokens_total": (
        "counter",
        "tokens by engine role (weak, strong, judge), model and kind (prompt, generated, cached)",
        ("build", "role", "model", "kind"),
    ),
    "ptr_build_rows_pending": (
        "gauge",
        "rows sent to the engine pools and not back yet",
        ("build",),
    ),
}
TOKEN_KINDS = ("prompt", "generated", "cached")

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]  # (metric name, sorted tags)


@dataclass
class BuildProgress:
    """One snapshot of a build's counts (every field only grows during a run, except
    ``pending``). ``dropped`` is ``{stage: {reason: n}}`` (``RejectLog.by_stage``); ``tokens``
    is ``{role: {model: {prompt, generated, cached, ...}}}`` (``Tally.token_stats()``)."""

    rows_in: int = 0
    skipped: int = 0
    queued: int = 0
    returned: int = 0
    rows_out: Mapping[str, int] = field(default_factory=dict)
    dropped: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    tokens: Mapping[str, Mapping[str, Mapping[str, int]]] = field(default_factory=dict)


def series(build: str, p: BuildProgress) -> dict[SeriesKey, float]:
    """Every series' value in one snapshot, keyed by (metric, tags)."""

    def key(name: str, **tags: str) -> SeriesKey:
        return name, tuple(sorted({"build": build, **tags}.items()))

    out: dict[SeriesKey, float] = {
        key("ptr_build_rows_in_total"): p.rows_in,
        key("ptr_build_rows_skipped_total"): p.skipped,
        key("ptr_build_rows_queued_total"): p.queued,
        key("ptr_build_rows_pending"): max(0, p.queued - p.returned),
    }
    for kind, n in p.rows_out.items():
        out[key("ptr_build_rows_out_total", kind=kind)] = n
    for stage, reasons in p.dropped.items():
        for reason, n in reasons.items():
            out[key("ptr_build_rows_dropped_total", stage=stage, reason=reason)] = n
    for role, models in p.tokens.items():
        for model, counts in models.items():
            for kind in TOKEN_KINDS:
                if kind in counts:
                    out[key("ptr_build_tokens_total", role=role, model=model, kind=kind)] = counts[
                        kind
                    ]
    return out


MetricFactory = Callable[[str, str, str, tuple[str, ...]], Any]  # (kind, name, doc, keys)


def ray_metric(kind: str, name: str, description: str, tag_keys: tuple[str, ...]) -> Any:
    from ray.util import metrics as m

    if kind == "counter":
        return m.Counter(name, description=description, tag_keys=tag_keys)
    # held: "300 rows pending" for a minute must not age out of the endpoint after 20 s
    return HeldGauge(m.Gauge(name, description=description, tag_keys=tag_keys))


class BuildMetrics:
    """The build's counts as Ray metrics; a no-op until :meth:`attach` finds Ray.

    The candidates are prepared before Ray starts, so the first snapshot may come before
    :meth:`attach`: nothing is marked as exported until a metric took it, and the first
    :meth:`report` after attaching sends the whole total so far.
    """

    def __init__(self, build: str) -> None:
        self.build = build
        self.exported: dict[SeriesKey, float] = {}
        self._metrics: dict[str, Any] = {}

    @property
    def attached(self) -> bool:
        return bool(self._metrics)

    def attach(self, factory: MetricFactory | None = None) -> bool:
        """Make the metrics (Ray's, or ``factory``'s in tests); False when Ray is not running.
        Metrics must never stop a build: any error here is logged and the build goes on."""
        try:
            if factory is None:
                import ray

                if not ray.is_initialized():
                    return False
                factory = ray_metric
            self._metrics = {
                name: factory(kind, name, doc, keys) for name, (kind, doc, keys) in METRICS.items()
            }
        except Exception:  # pragma: no cover - depends on the Ray installation
            log.warning("build metrics unavailable", exc_info=True)
            self._metrics = {}
        return self.attached

    def report(self, progress: BuildProgress) -> None:
        """Export what changed since the last report (counters: the increase; gauges: the
        value). A counter that went down (it cannot, in one run) is left alone."""
        if not self._metrics:
            return
        try:
            for (name, tags), value in series(self.build, progress).items():
                before = self.exported.get((name, tags))
                metric = self._metrics[name]
                if METRICS[name][0] == "gauge":
                    if before != value:
                        metric.set(value, tags=dict(tags))
                elif value > (before or 0):
                    metric.inc(value - (before or 0), tags=dict(tags))
                else:
                    continue
                self.exported[(name, tags)] = value
        except Exception:  # pragma: no cover - metrics must never stop a build
            log.warning("build metrics report failed", exc_info=True)

    def close(self) -> None:
        """The build ended: its gauges stop being held (a driver that goes on to train must
        not report this build's last ``rows_pending`` for the rest of its life)."""
        for metric in self._metrics.values():
            if isinstance(metric, HeldGauge):
                metric.release()


def progress_of(
    prepared: Any, rejects: Any, tally: Any, kinds: Mapping[str, int], seen: int
) -> BuildProgress:
    """The snapshot :func:`ptr_ray.datagen.dataflow.run_build` reports: its prepared
    candidates, ``RejectLog``, ``Tally``, records written per kind and rows back so far."""
    return BuildProgress(
        rows_in=prepared.rows_in,
        skipped=prepared.skipped_existing,
        queued=prepared.num_candidates,
        returned=seen,
        rows_out=dict(kinds),
        dropped=rejects.by_stage,
        tokens=tally.token_stats(),
    )
