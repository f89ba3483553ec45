"""Build progress counters (ptr_ray/datagen/metrics.py) without Ray: a fake metric factory
records what would reach Ray's endpoint, so the increments can be checked exactly."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ptr_ray.datagen.metrics import (
    METRICS,
    BuildMetrics,
    BuildProgress,
    progress_of,
    series,
)


class FakeMetric:
    def __init__(self, kind: str, name: str, keys: tuple[str, ...]) -> None:
        self.kind, self.name, self.keys = kind, name, keys
        self.values: dict[tuple, float] = {}
        self.calls: list[tuple[str, float, dict]] = []

    def _key(self, tags: dict[str, str]) -> tuple:
        assert set(tags) == set(self.keys), (self.name, tags)  # Ray rejects missing/extra keys
        assert all(isinstance(v, str) for v in tags.values())
        return tuple(sorted(tags.items()))

    def inc(self, value: float, tags: dict[str, str]) -> None:
        assert self.kind == "counter" and value > 0  # Ray's Counter refuses value <= 0
        k = self._key(tags)
        self.values[k] = self.values.get(k, 0) + value
        self.calls.append(("inc", value, tags))

    def set(self, value: float, tags: dict[str, str]) -> None:
        assert self.kind == "gauge"
        self.values[self._key(tags)] = value
        self.calls.append(("set", value, tags))


@pytest.fixture
def fake():
    made: dict[str, FakeMetric] = {}

    def factory(kind, name, description, keys):
        assert description
        made[name] = FakeMetric(kind, name, keys)
        return made[name]

    return made, factory


def value(made, name, **tags) -> float:
    return made[name].values.get(tuple(sorted(tags.items())), 0)


def progress(**kw) -> BuildProgress:
    base = dict(
        rows_in=10,
        skipped=1,
        queued=6,
        returned=0,
        rows_out={"ptr": 0, "sft": 0},
        dropped={"prepare": {"duplicate": 2, "contaminated": 1}},
        tokens={},
    )
    base.update(kw)
    return BuildProgress(**base)


def test_every_metric_has_the_build_label_and_a_known_kind():
    for name, (kind, doc, keys) in METRICS.items():
        assert kind in ("counter", "gauge") and doc and keys[0] == "build"
        assert name.startswith("ptr_build_")
        assert name.endswith("_total") == (kind == "counter")  # Ray exports counters as _total


def test_series_flattens_a_snapshot():
    s = series(
        "ds",
        progress(
            returned=4,
            rows_out={"ptr": 3},
            tokens={"weak": {"m1": {"prompt": 50, "generated": 20, "cached": 8, "calls": 4}}},
        ),
    )
    key = lambda name, **t: (name, tuple(sorted({"build": "ds", **t}.items())))  # noqa: E731
    assert s[key("ptr_build_rows_in_total")] == 10
    assert s[key("ptr_build_rows_pending")] == 2
    assert s[key("ptr_build_rows_out_total", kind="ptr")] == 3
    assert s[key("ptr_build_rows_dropped_total", stage="prepare", reason="duplicate")] == 2
    assert s[key("ptr_build_tokens_total", role="weak", model="m1", kind="cached")] == 8
    assert not any(dict(tags).get("kind") == "calls" for _, tags in s)  # calls are no tokens


def test_reports_send_increments_and_totals_match_the_snapshot(fake):
    made, factory = fake
    m = BuildMetrics("ds")
    assert m.attach(factory) and set(made) == set(METRICS)
    m.report(progress())
    assert value(made, "ptr_build_rows_in_total", build="ds") == 10
    assert (
        value(made, "ptr_build_rows_dropped_total", build="ds", stage="prepare", reason="duplicate")
        == 2
    )
    assert value(made, "ptr_build_rows_pending", build="ds") == 6

    later = progress(
        returned=6,
        rows_out={"ptr": 4, "sft": 1},
        dropped={"prepare": {"duplicate": 2, "contaminated": 1}, "generate": {"empty_answer": 1}},
        tokens={"strong": {"big": {"prompt": 100, "generated": 40, "cached": 0}}},
    )
    calls_before = len(made["ptr_build_rows_in_total"].calls)
    m.report(later)
    m.report(later)  # nothing changed: nothing sent
    assert len(made["ptr_build_rows_in_total"].calls) == calls_before  # rows_in did not grow
    assert value(made, "ptr_build_rows_out_total", build="ds", kind="ptr") == 4
    assert value(made, "ptr_build_rows_out_total", build="ds", kind="sft") == 1
    assert (
        value(
            made,
            "ptr_build_rows_dropped_total",
            build="ds",
            stage="generate",
            reason="empty_answer",
        )
        == 1
    )
    assert value(made, "ptr_build_rows_pending", build="ds") == 0
    assert (
        value(
            made, "ptr_build_tokens_total", build="ds", role="strong", model="big", kind="generated"
        )
        == 40
    )
    # every exported total is exactly the snapshot's number
    for (name, tags), v in series("ds", later).items():
        if v:
            assert made[name].values[tags] == v, (name, tags)


def test_counts_before_attach_are_sent_whole_on_the_first_report(fake):
    made, factory = fake
    m = BuildMetrics("ds")
    m.report(progress())  # Ray not up yet (the candidates are prepared first): a no-op
    assert not m.attached and not made
    m.attach(factory)
    m.report(progress(returned=2))
    assert value(made, "ptr_build_rows_in_total", build="ds") == 10
    assert value(made, "ptr_build_rows_pending", build="ds") == 4


def test_a_counter_never_goes_down(fake):
    made, factory = fake
    m = BuildMetrics("ds")
    m.attach(factory)
    m.report(progress(rows_in=10))
    m.report(progress(rows_in=7))
    assert value(made, "ptr_build_rows_in_total", build="ds") == 10


def test_without_ray_attach_is_false_and_report_is_a_no_op():
    import sys

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        pytest.skip("Ray is initialized in this session")
    m = BuildMetrics("ds")
    assert m.attach() is False
    m.report(progress())
    assert m.exported == {}


def test_progress_of_reads_the_builds_own_objects():
    prepared = SimpleNamespace(rows_in=9, skipped_existing=2, num_candidates=3)
    rejects = SimpleNamespace(by_stage={"generate": {"prompt_too_long": 1}})
    tally = SimpleNamespace(token_stats=lambda: {"weak": {"m": {"generated": 5}}})
    p = progress_of(prepared, rejects, tally, {"ptr": 1, "sft": 0}, seen=2)
    assert (p.rows_in, p.skipped, p.queued, p.returned) == (9, 2, 3, 2)
    assert p.rows_out == {"ptr": 1, "sft": 0} and p.dropped == rejects.by_stage
    assert p.tokens == {"weak": {"m": {"generated": 5}}}
