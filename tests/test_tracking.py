"""The tracking interface and its backends, without Ray (ptr_ray/tracking.py).

TensorBoard is checked by reading the event files back with TensorBoard's own reader
(``EventAccumulator``). MLflow and W&B are not dev dependencies: their backends are checked
against stand-in modules that record the calls (and MLflow against a real local store when
it happens to be installed), and their missing-package path is checked for real.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import types
from pathlib import Path

import pytest

from ptr_ray.config import (
    ConfigError,
    EvalConfig,
    TrackingConfig,
    TrainConfig,
    load_config,
)
from ptr_ray.tracking import (
    JsonlBackend,
    Tracker,
    check_tracking,
    flatten,
    open_tracker,
    resolve_tracking,
)

ROW_KEYS = ["loss", "loss_ce", "lr", "tokens", "tokens_per_s"]


def _rows(n: int, scale: float = 1.0, start: int = 1) -> list[dict]:
    return [
        {
            "step": s,
            "epoch": 0,
            "loss": scale * s,
            "loss_ce": scale * s / 2,
            "lr": 1e-3 / s,
            "tokens": 100 * s,
            "tokens_per_s": 12.5 * s,
            "mode_name": "ptr",  # not a number: jsonl keeps it, charts skip it
        }
        for s in range(start, start + n)
    ]


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return acc


TB = TrackingConfig(backends=["tensorboard"])


# ------------------------------------------------------------------------- config


def test_tracking_is_off_by_default_and_ray_metrics_on():
    cfg = TrainConfig(dataset="d", output_dir="o")
    assert cfg.tracking.backends == [] and cfg.tracking.ray_metrics is True
    assert cfg.run_name == "train"  # the storage folder of every run before run_name existed
    assert cfg.tracking.wandb.mode is None and cfg.tracking.mlflow.tracking_uri is None
    assert EvalConfig().tracking.backends == []


def test_tracking_keys_parse_and_bad_values_are_one_line_errors():
    base = ["dataset=d", "output_dir=o"]
    cfg = load_config(
        TrainConfig,
        None,
        base
        + [
            "tracking.backends=[tensorboard, wandb]",
            "tracking.wandb.mode=online",
            "tracking.mlflow.experiment=exp",
            "run_name=ptr-7b.v2",
        ],
    )
    assert cfg.tracking.backends == ["tensorboard", "wandb"] and cfg.run_name == "ptr-7b.v2"
    bad = {
        "tracking.backends=[tensorbord]": "tracking.backends.0",
        "tracking.backends=[mlflow, mlflow]": "backends lists a backend twice",
        "tracking.wandb.mode=cloud": "tracking.wandb.mode",
        "tracking.tensorbord_dir=x": "unknown config key 'tracking.tensorbord_dir'",
        "run_name=my run": "run_name",
        "run_name=../up": "run_name",
    }
    for override, words in bad.items():
        with pytest.raises(ConfigError) as e:
            load_config(TrainConfig, None, [*base, override])
        assert words in str(e.value) and "\n" not in str(e.value), (override, e.value)
    ev = load_config(EvalConfig, None, ["tracking.backends=[tensorboard]"])
    assert ev.tracking.backends == ["tensorboard"]
    with pytest.raises(ConfigError, match="ray_metrics"):  # a training-only key
        load_config(EvalConfig, None, ["tracking.ray_metrics=false"])


def test_tracking_may_change_when_a_run_resumes_but_run_name_may_not():
    from ptr_ray.train.resume import config_changes

    old = TrainConfig(dataset="d", output_dir="o")
    new = old.model_copy(
        update={"tracking": old.tracking.model_copy(update={"backends": ["tensorboard"]})}
    )
    assert config_changes(old.model_dump(mode="json"), new.model_dump(mode="json")) == []
    renamed = old.model_copy(update={"run_name": "other"})
    changes = config_changes(old.model_dump(mode="json"), renamed.model_dump(mode="json"))
    assert [c.key for c in changes] == ["run_name"]  # another checkpoint folder: another run


def test_importing_tracking_loads_no_backend_package():
    code = (
        "import sys, ptr_ray.tracking; "
        "print([m for m in ('tensorboardX', 'tensorboard', 'mlflow', 'wandb', 'ray', 'torch') "
        "if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_resolve_fills_defaults_from_the_environment_then_the_output_folder(tmp_path):
    out = tmp_path / "run"
    r = resolve_tracking(TrackingConfig(), out, env={})
    assert r.tensorboard_dir == str(out.resolve())
    assert r.mlflow.tracking_uri == f"sqlite:///{out.resolve() / 'mlflow.db'}"
    assert r.wandb.mode == "offline"  # W&B never uploads unless asked
    env = {"MLFLOW_TRACKING_URI": "http://mlflow.internal:5000", "WANDB_MODE": "online"}
    r = resolve_tracking(TrackingConfig(), out, env=env)
    assert r.mlflow.tracking_uri == env["MLFLOW_TRACKING_URI"] and r.wandb.mode == "online"
    assert resolve_tracking(TrackingConfig(), out, env={"WANDB_MODE": "dryrun"}).wandb.mode == (
        "offline"
    )
    given = TrackingConfig.model_validate(
        {"tensorboard_dir": str(tmp_path / "tb"), "mlflow": {"tracking_uri": "file:///x"}}
        | {"wandb": {"mode": "disabled"}}
    )
    r = resolve_tracking(given, out, env=env)  # the config wins over the environment
    assert (r.tensorboard_dir, r.mlflow.tracking_uri, r.wandb.mode) == (
        str(tmp_path / "tb"),
        "file:///x",
        "disabled",
    )
    with pytest.raises(ConfigError, match="WANDB_MODE='cloud'"):
        resolve_tracking(TrackingConfig(backends=["wandb"]), out, env={"WANDB_MODE": "cloud"})
    # ... and only when W&B is used: a stray variable does not stop a run that logs elsewhere
    assert resolve_tracking(TrackingConfig(), out, env={"WANDB_MODE": "cloud"}).wandb.mode


def test_flatten_params_for_mlflow():
    flat = flatten({"a": {"b": 1, "c": [1, 2]}, "s": "x" * 600, "n": None})
    assert flat["a.b"] == "1" and flat["a.c"] == "[1, 2]" and flat["n"] == "null"
    assert len(flat["s"]) == 500 and flat["s"].endswith("...")


# -------------------------------------------------------------------------- jsonl


def test_jsonl_lines_are_the_metrics_dict_plus_time(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with Tracker([JsonlBackend(path)]) as t:
        for row in _rows(2):
            t.log_scalars(row, row["step"])
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [list(x) for x in lines] == [[*_rows(1)[0], "time"]] * 2  # step first, time last
    assert [{k: v for k, v in x.items() if k != "time"} for x in lines] == _rows(2)


# -------------------------------------------------------------------- tensorboard


def test_tensorboard_events_hold_every_numeric_value_by_step(tmp_path):
    out = tmp_path / "run"
    rows = _rows(3)
    params = {"mode": "ptr", "optim": {"lr": 1e-3}}
    with open_tracker(
        TB, out, run_name="r", prefix="train", jsonl=out / "m.jsonl", params=params
    ) as t:
        assert t.backends == ["jsonl", "tensorboard"]
        for row in rows:
            t.log_scalars(row, row["step"])
    acc = _events(out)
    tags = set(acc.Tags()["scalars"])
    assert tags == {f"train/{k}" for k in ["epoch", *ROW_KEYS]}
    for key in ["epoch", *ROW_KEYS]:
        events = acc.Scalars(f"train/{key}")
        assert [e.step for e in events] == [1, 2, 3]
        assert [e.value for e in events] == pytest.approx([r[key] for r in rows], rel=1e-6)
    assert "train/config/text_summary" in acc.Tags()["tensors"]  # the config as text
    text = acc.Tensors("train/config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "optim.lr: 0.001" in text
    assert len(list(out.glob("events.out.tfevents.*"))) == 1


def test_tensorboard_drops_the_replayed_steps_of_a_resumed_run(tmp_path):
    """Attempt 1 logs steps 1-4 and dies after checkpoint 2; attempt 2 replays 3-5. TensorBoard
    shows 1-2 from attempt 1 and 3-5 from attempt 2, as metrics.jsonl does."""
    out = tmp_path / "run"
    with open_tracker(TB, out, run_name="r", prefix="train") as t:
        for row in _rows(4):
            t.log_scalars(row, row["step"])
    with open_tracker(TB, out, run_name="r", prefix="train", replay_from=3) as t:
        for row in _rows(3, scale=10.0, start=3):
            t.log_scalars(row, row["step"])
    assert len(list(out.glob("events.out.tfevents.*"))) == 2  # same second: no clobbering
    events = _events(out).Scalars("train/loss")
    assert [e.step for e in events] == [1, 2, 3, 4, 5]
    assert [e.value for e in events] == pytest.approx([1, 2, 30, 40, 50])


def test_eval_report_is_logged_per_task_method_and_round(tmp_path):
    from ptr_ray.eval.report import EvalReport, ItemResult, ItemRound, TaskResult
    from ptr_ray.eval.runner import track_report

    def result(method: str, task: str, correct: list[list[int]]) -> TaskResult:
        items = [
            ItemResult(
                f"{task}-{i}",
                "B",
                "q",
                [
                    ItemRound(k + 1, "a", "B", {"accuracy": float(c[i])}, 5, "stop")
                    for k, c in enumerate(correct)
                ],
            )
            for i in range(len(correct[0]))
        ]
        return TaskResult(method, "m", task, "multiple_choice", ["accuracy", "x"], 3, items)

    report = EvalReport(
        [
            result("base", "arc", [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]]),
            result("ptr", "arc", [[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]),
        ],
        rounds=3,
    )
    out = tmp_path / "eval"
    cfg = EvalConfig(output_dir=str(out), tracking={"backends": ["tensorboard"]})
    track_report(report, cfg, out)
    acc = _events(out)
    assert set(acc.Tags()["scalars"]) == {"eval/arc/base", "eval/arc/ptr"}
    for tag, want in {"eval/arc/base": [0.25, 0.5, 0.75], "eval/arc/ptr": [0.5, 1.0, 0.0]}.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2, 3]
        assert [e.value for e in events] == pytest.approx(want)


# ------------------------------------------------------------ missing and failing


def test_a_backend_that_is_not_installed_is_a_one_line_config_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("mlflow", "wandb") else real(name, *a),
    )
    for name in ("mlflow", "wandb"):
        cfg = TrackingConfig(backends=["tensorboard", name])
        with pytest.raises(ConfigError) as e:
            check_tracking(cfg)
        msg = str(e.value)
        assert f"pip install {name}" in msg and "tracking.backends" in msg and "\n" not in msg
        with pytest.raises(ConfigError):
            open_tracker(cfg, tmp_path / name, run_name="r", prefix="train")
        assert not (tmp_path / name).exists()  # refused before anything was written
    check_tracking(TrackingConfig(backends=["tensorboard"]))  # tensorboardX comes with Ray Train


class _Boom:
    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    def log_params(self, params):
        pass

    def log_scalars(self, values, step):
        self.calls += 1
        raise OSError("disk full\nsecond line")

    def close(self):
        pass


def test_a_failing_backend_is_switched_off_with_one_warning(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    boom = _Boom("tensorboard")
    t = Tracker([JsonlBackend(path), boom])
    with caplog.at_level(logging.WARNING, logger="ptr_ray.tracking"):
        for row in _rows(3):
            t.log_scalars(row, row["step"])
    assert boom.calls == 1 and t.backends == ["jsonl"]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "tensorboard" in warnings[0] and "disk full" in warnings[0]
    assert len(path.read_text().splitlines()) == 3  # the record is complete
    t.close()


def test_metrics_jsonl_errors_propagate(tmp_path):
    t = Tracker([JsonlBackend(tmp_path / "missing" / "metrics.jsonl")])
    with pytest.raises(OSError):
        t.log_scalars({"loss": 1.0}, 1)


# ------------------------------------------------------------------ MLflow, W&B


class _FakeMlflowClient:
    instances: list[_FakeMlflowClient] = []

    def __init__(self, tracking_uri=None):
        self.uri = tracking_uri
        self.calls: list[tuple] = []
        self.waited = 0
        _FakeMlflowClient.instances.append(self)

    def get_experiment_by_name(self, name):
        return None

    def create_experiment(self, name):
        self.calls.append(("create_experiment", name))
        return "7"

    def create_run(self, experiment_id, run_name=None, tags=None):
        self.calls.append(("create_run", experiment_id, run_name, tags))
        return types.SimpleNamespace(info=types.SimpleNamespace(run_id="run-1"))

    def log_batch(self, run_id, metrics=(), params=(), tags=(), synchronous=None):
        self.calls.append(("log_batch", run_id, list(metrics), list(params), synchronous))
        client = self

        class Op:
            def wait(self):
                client.waited += 1

        return Op() if synchronous is False else None

    def set_terminated(self, run_id):
        self.calls.append(("set_terminated", run_id))


def _fake_mlflow(monkeypatch):
    mod = types.ModuleType("mlflow")
    mod.MlflowClient = _FakeMlflowClient  # type: ignore[attr-defined]
    entities = types.ModuleType("mlflow.entities")

    class Metric:
        def __init__(self, key, value, timestamp, step):
            self.key, self.value, self.timestamp, self.step = key, value, timestamp, step

    class Param:
        def __init__(self, key, value):
            self.key, self.value = key, value

    entities.Metric, entities.Param = Metric, Param  # type: ignore[attr-defined]
    mod.entities = entities  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mlflow", mod)
    monkeypatch.setitem(sys.modules, "mlflow.entities", entities)
    monkeypatch.setattr("ptr_ray.tracking.check_tracking", lambda cfg: None)
    _FakeMlflowClient.instances.clear()


def test_mlflow_backend_calls(tmp_path, monkeypatch):
    _fake_mlflow(monkeypatch)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    params = {f"k{i}": i for i in range(150)}  # two log_batch calls: MLflow takes 100 at a time
    with open_tracker(
        TrackingConfig(backends=["mlflow"]), out, run_name="ptr-a", prefix="train", params=params
    ) as t:
        for row in _rows(2):
            t.log_scalars(row, row["step"])
    (client,) = _FakeMlflowClient.instances
    assert client.uri == f"sqlite:///{out.resolve() / 'mlflow.db'}"
    kinds = [c[0] for c in client.calls]
    assert kinds == ["create_experiment", "create_run"] + ["log_batch"] * 4 + ["set_terminated"]
    assert client.calls[0] == ("create_experiment", "ptr-ray")
    assert client.calls[1][2] == "ptr-a" and client.calls[1][3]["ptr_ray.stage"] == "train"
    assert [len(c[3]) for c in client.calls[2:4]] == [100, 50]
    step1 = client.calls[4]
    assert step1[4] is False  # asynchronous: a slow server does not stall a step
    assert {m.key: (m.value, m.step) for m in step1[2]} == {
        f"train/{k}": (float(_rows(1)[0][k]), 1) for k in ["epoch", *ROW_KEYS]
    }
    assert client.waited == 2  # close waits for the queued metrics before ending the run


def test_mlflow_with_a_real_local_store(tmp_path):
    """Only where mlflow is installed (it is not a dev dependency). Its default store: on
    6 Dec 2026 MLflow 3.18 refused the old default (a ``mlruns`` file store), which no fake
    could have shown; the SQLite store needs the full package (SQLAlchemy)."""
    pytest.importorskip("mlflow", reason="mlflow is not installed")
    pytest.importorskip("sqlalchemy", reason="the local store needs `pip install mlflow`")
    from mlflow import MlflowClient

    cfg = TrackingConfig.model_validate({"backends": ["mlflow"]})
    with open_tracker(cfg, tmp_path, run_name="ptr-a", prefix="train", params={"a": 1}) as t:
        for row in _rows(3):
            t.log_scalars(row, row["step"])
    client = MlflowClient(f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("ptr-ray").experiment_id])
    assert run.info.run_name == "ptr-a" and run.data.params["a"] == "1"
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 2.0), (3, 3.0)]


def test_wandb_offline_for_real(tmp_path, monkeypatch):
    """Only where wandb is installed: an offline run's file is written, nothing uploaded."""
    pytest.importorskip("wandb", reason="wandb is not installed")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = TrackingConfig.model_validate({"backends": ["wandb"]})
    with open_tracker(cfg, tmp_path, run_name="ptr-a", prefix="train", params={"a": 1}) as t:
        for row in _rows(3):
            t.log_scalars(row, row["step"])
    (run,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    assert run.stat().st_size > 0


def _fake_wandb(monkeypatch) -> list[dict]:
    runs: list[dict] = []

    def init(**kwargs):
        run = {"init": kwargs, "config": {}, "log": [], "finished": False}
        runs.append(run)
        return types.SimpleNamespace(
            config=types.SimpleNamespace(
                update=lambda d, allow_val_change=False: run["config"].update(d)
            ),
            log=lambda data, step=None: run["log"].append((step, data)),
            finish=lambda: run.update(finished=True),
        )

    mod = types.ModuleType("wandb")
    mod.init = init  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", mod)
    monkeypatch.setattr("ptr_ray.tracking.check_tracking", lambda cfg: None)
    return runs


def test_wandb_backend_is_offline_by_default(tmp_path, monkeypatch):
    runs = _fake_wandb(monkeypatch)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    out = tmp_path / "run"
    cfg = TrackingConfig(backends=["wandb"])
    with open_tracker(cfg, out, run_name="ptr-a", prefix="train", params={"a": {"b": 1}}) as t:
        for row in _rows(2):
            t.log_scalars(row, row["step"])
    (run,) = runs
    init = run["init"]
    assert init["mode"] == "offline" and init["name"] == "ptr-a"
    assert init["dir"] == str(out.resolve()) and init["project"] == "ptr-ray"
    assert run["config"] == {"a": {"b": 1}}
    assert [s for s, _ in run["log"]] == [1, 2]
    assert run["log"][0][1] == {f"train/{k}": float(_rows(1)[0][k]) for k in ["epoch", *ROW_KEYS]}
    assert run["finished"]
    monkeypatch.setenv("WANDB_MODE", "online")  # the user's own setting is honoured
    open_tracker(cfg, out, run_name="b", prefix="train").close()
    assert runs[1]["init"]["mode"] == "online"


# ---------------------------------------------------------------------- Ray gauges


def test_ray_gauges_get_the_run_tag_and_only_their_keys(monkeypatch):
    made: dict[str, dict] = {}

    class Gauge:
        def __init__(self, name, description="", tag_keys=()):
            description.encode("ascii")  # as Ray's Cython gauge does: UnicodeEncodeError
            made[name] = {"tag_keys": tag_keys, "values": [], "description": description}
            self.name = name

        def set_default_tags(self, tags):
            made[self.name]["default_tags"] = tags

        def set(self, value, tags=None):
            made[self.name]["values"].append(value)

    mod = types.ModuleType("ray.util.metrics")
    mod.Gauge = Gauge  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray.util.metrics", mod)
    from ptr_ray.train.worker import TRAIN_GAUGES

    t = open_tracker(
        TrackingConfig(), "unused", run_name="ptr-a", prefix="train", ray_gauges=TRAIN_GAUGES
    )
    assert t.backends == ["ray"]
    t.log_scalars({"step": 3, "loss": 0.5, "lr": 1e-4, "tokens": 7, "flag": True}, 3)
    assert set(made) == {f"ptr_train_{k}" for k in TRAIN_GAUGES}
    assert all(
        g["tag_keys"] == ("run",) and g["default_tags"] == {"run": "ptr-a"} for g in made.values()
    )
    assert made["ptr_train_step"]["values"] == [3.0] and made["ptr_train_loss"]["values"] == [0.5]
    assert made["ptr_train_lambda1"]["values"] == []  # not in this call: left as it was
    assert made["ptr_train_loss"]["description"] == TRAIN_GAUGES["loss"]  # ASCII as written
    t.close()
    made.clear()
    open_tracker(TrackingConfig(), "u", run_name="r", prefix="x", ray_gauges={"a": "λ1 weight"})
    assert made["ptr_x_a"]["description"] == "?1 weight"  # made ASCII, not switched off


def test_ray_gauges_that_cannot_be_made_only_warn(monkeypatch, caplog):
    mod = types.ModuleType("ray.util.metrics")

    def broken(*a, **k):
        raise RuntimeError("no metrics agent")

    mod.Gauge = broken  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray.util.metrics", mod)
    with caplog.at_level(logging.WARNING, logger="ptr_ray.tracking"):
        t = open_tracker(
            TrackingConfig(), "unused", run_name="r", prefix="train", ray_gauges={"a": "b"}
        )
    assert t.backends == [] and "Ray metrics are off" in caplog.text
