"""HeldGauge keeps a gauge's last values alive (Ray drops a gauge ~20 s after its last set)."""

from __future__ import annotations

import gc
import threading
import time

import pytest

from ptr_ray import held_gauges
from ptr_ray.held_gauges import HeldGauge, _Refresher


class FakeGauge:
    """Records every set, like Ray's gauge (tags are per call; default tags by method)."""

    def __init__(self) -> None:
        self.sets: list[tuple[float, dict | None]] = []
        self._tag_keys = ("run",)
        self.lock = threading.Lock()

    def set(self, value, tags=None):
        if not isinstance(value, int | float):
            raise TypeError("value must be int or float")
        with self.lock:
            self.sets.append((value, tags))

    def set_default_tags(self, tags):
        self.default = tags


@pytest.fixture
def refresher(monkeypatch):
    """A process refresher of its own with a short period, so tests do not share state."""
    r = _Refresher(period_s=0.05)
    monkeypatch.setattr(held_gauges, "_REFRESHER", r)
    yield r
    r._wake.set()


def test_refresh_sets_the_last_value_of_each_series_again(refresher):
    fake = FakeGauge()
    g = HeldGauge(fake)
    g.set(1.0, tags={"run": "a"})
    g.set(2.0, tags={"run": "a"})  # replaces a's value
    g.set(5, tags={"run": "b"})
    g.set(None, tags={"run": "c"})  # Ray's no-op: not held either
    fake.sets.clear()
    g.refresh()
    assert sorted(fake.sets, key=str) == sorted([(2.0, {"run": "a"}), (5, {"run": "b"})], key=str)
    assert g.held == 2


def test_the_thread_keeps_setting_until_released(refresher):
    fake = FakeGauge()
    g = HeldGauge(fake, owner="vllm:weak")
    g.set(3.0, tags={"run": "a"})
    time.sleep(0.4)
    with fake.lock:
        n = len(fake.sets)
    assert n >= 4, "the refresher thread did not set the value again"
    assert held_gauges.release_owner("vllm:other") == 0
    assert held_gauges.release_owner("vllm:weak") == 1
    time.sleep(0.15)
    with fake.lock:
        after = len(fake.sets)
    time.sleep(0.3)
    assert len(fake.sets) == after, "a released gauge was set again"


def test_release_one_series(refresher):
    fake = FakeGauge()
    g = HeldGauge(fake)
    g.set(1.0, tags={"run": "a"})
    g.set(1.0, tags={"run": "b"})
    g.release({"run": "a"})
    fake.sets.clear()
    g.refresh()
    assert fake.sets == [(1.0, {"run": "b"})]


def test_bad_values_raise_and_are_not_held(refresher):
    g = HeldGauge(FakeGauge())
    with pytest.raises(TypeError):
        g.set("3", tags={"run": "a"})  # type: ignore[arg-type]
    assert g.held == 0


def test_passes_other_attributes_through_and_is_not_kept_alive(refresher):
    fake = FakeGauge()
    g = HeldGauge(fake)
    assert g._tag_keys == ("run",)
    g.set_default_tags({"run": "x"})
    assert fake.default == {"run": "x"}
    assert len(refresher.gauges()) == 1
    del g
    gc.collect()
    assert refresher.gauges() == []


def test_a_failing_gauge_does_not_stop_the_others(refresher):
    class Broken(FakeGauge):
        def set(self, value, tags=None):
            if getattr(self, "armed", False):
                raise RuntimeError("export broke")
            super().set(value, tags)

    broken, fine = Broken(), FakeGauge()
    a, b = HeldGauge(broken), HeldGauge(fine)
    a.set(1.0)
    b.set(2.0)
    broken.armed = True
    fine.sets.clear()
    refresher.refresh_all()
    assert fine.sets == [(2.0, None)]


def test_period_is_half_rays_export_interval():
    assert held_gauges.refresh_period_s() == 5.0  # metrics_report_interval_ms = 10000
