"""Tracking in a real Ray Train run: TensorBoard events that match metrics.jsonl, the run name
from the config in Ray Train's state (the dashboard's Train view) and in the storage folder,
and the training gauges on Ray's Prometheus endpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ptr_ray.config import TrainConfig, load_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "ptr_small"
RUN = "ptr-tracking-it"


def _cfg(model: Path, out: Path) -> TrainConfig:
    return load_config(
        TrainConfig,
        ROOT / "jobs" / "configs" / "train_local.yaml",
        [
            f"model={model}",
            f"dataset={FIXTURE}",
            f"output_dir={out}",
            f"run_name={RUN}",
            "tracking.backends=[tensorboard]",
            "max_length=512",
            "epochs=1",
            "max_steps=3",
            "checkpoint_every=3",
            "export=false",
            "progress=false",
            "optim.lr=1e-3",
            "loss.schedule=warmup",
            "loss.warmup_steps=2",
        ],
    )


def _train_runs(storage: Path) -> list:
    import ray
    from ray.train.v2._internal.state.state_actor import get_state_actor

    actor = get_state_actor()
    assert actor is not None, "Ray Train state tracking is off"
    return [
        r
        for r in ray.get(actor.get_train_runs.remote()).values()
        if Path(r.run_settings.run_config.storage_path).resolve() == storage.resolve()
    ]


def test_tiny_run_writes_tensorboard_events_that_match_metrics_jsonl(
    ray_local, tiny_model_dir, tmp_path, monkeypatch
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ptr_ray.train.trainer import run_train

    monkeypatch.setenv("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")  # what the Train view reads
    out = tmp_path / "run"
    assert run_train(_cfg(tiny_model_dir, out)) == out

    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    acc = EventAccumulator(str(out))
    acc.Reload()
    keys = [k for k in rows[0] if k not in ("step", "time")]
    assert set(acc.Tags()["scalars"]) == {f"train/{k}" for k in keys}
    for k in keys:
        events = acc.Scalars(f"train/{k}")
        assert [e.step for e in events] == [1, 2, 3], k
        assert [e.value for e in events] == pytest.approx([r[k] for r in rows], rel=1e-5), k
    lam2 = [e.value for e in acc.Scalars("train/lambda2")]
    assert lam2[0] < lam2[-1]  # the λ warm-up is what a person charts
    assert "train/config/text_summary" in acc.Tags()["tensors"]

    # the run name from the config: Ray Train's state (the Train view) and the storage folder
    assert (out / "ray" / RUN / "checkpoint_step0000003").is_dir()
    assert not (out / "ray" / "train").exists()
    runs = _train_runs(out / "ray")
    assert [r.name for r in runs] == [RUN]


def _prometheus_samples(prefix: str) -> dict[tuple[str, str], float]:
    import httpx
    import ray
    from prometheus_client.parser import text_string_to_metric_families

    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["Alive"])
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    return {
        (s.name, s.labels.get("run", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith(prefix)
    }


def test_training_gauges_reach_rays_prometheus_endpoint(ray_local):
    """The gauges rank 0 sets (same backend, same names) are exported with the run tag."""
    import ray

    @ray.remote(num_cpus=0)
    class RankZero:
        def __init__(self) -> None:
            from ptr_ray.config import TrackingConfig
            from ptr_ray.tracking import open_tracker
            from ptr_ray.train.worker import TRAIN_GAUGES

            self.t = open_tracker(
                TrackingConfig(),
                "unused",
                run_name="gauge-it",
                prefix="train",
                ray_gauges=TRAIN_GAUGES,
            )

        def log(self, values: dict, step: int) -> list[str]:
            self.t.log_scalars(values, step)
            return self.t.backends

    from ptr_ray.train.worker import TRAIN_GAUGES

    values = {k: float(i) + 0.5 for i, k in enumerate(TRAIN_GAUGES)}
    actor = RankZero.remote()
    assert ray.get(actor.log.remote(values, 1)) == ["ray"]
    want = {(f"ray_ptr_train_{k}", "gauge-it"): v for k, v in values.items()}
    deadline, seen = time.time() + 90, {}
    while time.time() < deadline:  # exported every metrics_report_interval_ms (10 s)
        seen = _prometheus_samples("ray_ptr_train_")
        if all(seen.get(key) == v for key, v in want.items()):
            break
        time.sleep(2)
    ray.kill(actor)
    missing = {key: v for key, v in want.items() if seen.get(key) != v}
    assert not missing, (missing, seen)
