"""Experiment tracking: one small logger interface in front of several backends.

Training (from rank 0) and evaluation log through a :class:`Tracker`: ``log_params`` once,
``log_scalars(values, step)`` as they go, ``close`` at the end. The tracker hands each call to
its backends:

* ``jsonl``: ``metrics.jsonl``, one JSON line per step. Always on in training and the record
  the rest of the code reads (a resume trims it, tests and benchmarks read it); the other
  backends are views of the same numbers.
* ``tensorboard``: event files (tensorboardX, which Ray Train already depends on) beside
  ``metrics.jsonl``, so ``tensorboard --logdir runs/`` shows every run below it; no server runs
  during training.
* ``mlflow`` and ``wandb``: imported only when named in ``tracking.backends``. W&B runs
  offline (files under the output folder, ``wandb sync`` uploads them) unless the config or
  ``$WANDB_MODE`` says otherwise; MLflow logs to ``$MLFLOW_TRACKING_URI`` or, without one, to
  a local store in the output folder.
* ``ray``: Ray metrics gauges (training only), so loss terms, λ, lr and tokens/s appear on
  Ray's Prometheus endpoint with a ``run`` tag.

Rules. No tracking package is imported when this module is (``ptr-ray --help`` stays fast,
and nothing reaches the network unless a backend is asked for). A named backend whose package
is missing is a one-line :class:`~ptr_ray.config.ConfigError` before any work starts
(:func:`check_tracking`). A backend that fails while a run is going is switched off with one
warning: a chart is not worth a training run. The jsonl writer is the exception, since it is
the record: its errors propagate.

After a resume the steps past the restored checkpoint run again (``replay_from``): TensorBoard
is told to drop its earlier events for those steps (a ``purge_step``), as ``metrics.jsonl``
drops its lines. MLflow and W&B start a new run each time a process opens the tracker, like
the Hugging Face integrations do.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ptr_ray.config import ConfigError, TrackingConfig
from ptr_ray.errors import PtrRayRuntimeError
from ptr_ray.held_gauges import HeldGauge

log = logging.getLogger(__name__)

#: backend name -> (module that must be importable, package to install)
PACKAGES: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboardX", "tensorboardX"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}
TENSORBOARD_FLUSH_S = 10  # tensorboardX's default is 120 s: too slow to watch a run
_PARAM_CHARS = 500  # MLflow caps a parameter value; long values are cut, with "..."
_MLFLOW_BATCH = 100  # MLflow's limit of params per log_batch call
_WANDB_MODES = {"offline": "offline", "online": "online", "disabled": "disabled"}
_WANDB_MODES.update({"dryrun": "offline", "run": "online"})  # W&B's older spellings

T = TypeVar("T", bound=TrackingConfig)


class Backend(Protocol):
    """What the tracker needs of a backend."""

    name: str

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_scalars(self, values: Mapping[str, Any], step: int) -> None: ...

    def close(self) -> None: ...


def numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The values a chart can show: ints and floats (not bools), without ``step`` itself."""
    return {
        k: float(v)
        for k, v in values.items()
        if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
    }


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"optim.lr": "1e-05", ...}``; lists as JSON; long values cut."""
    out: dict[str, str] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
            continue
        text = v if isinstance(v, str) else json.dumps(v)
        out[key] = text if len(text) <= _PARAM_CHARS else text[: _PARAM_CHARS - 3] + "..."
    return out


# ------------------------------------------------------------------------------- backends


class JsonlBackend:
    """``metrics.jsonl``: ``{"step": N, ...values, "time": t}`` per call.

    The file is opened and closed for every line, so a reader (or a killed writer) only ever
    sees whole lines, plus at most one torn last line that the next resume trims."""

    name = "jsonl"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Nothing: the run's config is saved beside the file (train_config.yaml)."""

    def log_scalars(self, values: Mapping[str, Any], step: int) -> None:
        row = {"step": step, **{k: v for k, v in values.items() if k != "step"}}
        with open(self.path, "a") as fh:
            fh.write(json.dumps({**row, "time": time.time()}) + "\n")

    def close(self) -> None:
        pass


class TensorBoardBackend:
    """Event files through tensorboardX's ``SummaryWriter`` (a background thread writes them).

    ``purge_step``: TensorBoard hides this folder's earlier events at or past that step (the
    replayed steps of a resumed run). The file name ends in a nanosecond stamp, so two writers
    opened in the same second (same host) neither clobber nor misorder each other's files."""

    name = "tensorboard"

    def __init__(self, log_dir: str | Path, prefix: str, purge_step: int | None = None) -> None:
        from tensorboardX import SummaryWriter

        Path(log_dir).mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self._writer = SummaryWriter(
            logdir=str(log_dir),
            purge_step=purge_step,
            flush_secs=TENSORBOARD_FLUSH_S,
            filename_suffix=f".{time.time_ns()}",
        )

    def log_params(self, params: Mapping[str, Any]) -> None:
        lines = [f"    {k}: {v}" for k, v in flatten(params).items()]  # markdown code block
        self._writer.add_text(f"{self.prefix}/config", "\n".join(lines), 0)

    def log_scalars(self, values: Mapping[str, Any], step: int) -> None:
        # One event holding every value of the step (add_scalar would write one per value).
        from tensorboardX.proto.summary_pb2 import Summary

        found = numbers(values)
        if not found:
            return
        summary = Summary(
            value=[
                Summary.Value(tag=f"{self.prefix}/{k}", simple_value=v) for k, v in found.items()
            ]
        )
        self._writer.file_writer.add_summary(summary, step, time.time())

    def close(self) -> None:
        self._writer.close()


class MlflowBackend:
    """An MLflow run through ``MlflowClient`` (no global active run), metrics sent
    asynchronously (MLflow >= 2.8) so a slow tracking server does not stall the step."""

    name = "mlflow"

    def __init__(
        self, uri: str | None, experiment: str, run_name: str, prefix: str, tags: Mapping[str, str]
    ) -> None:
        from mlflow import MlflowClient

        self.prefix = prefix
        self._client = MlflowClient(tracking_uri=uri)
        exp = self._client.get_experiment_by_name(experiment)
        exp_id = (
            exp.experiment_id if exp is not None else self._client.create_experiment(experiment)
        )
        run = self._client.create_run(exp_id, run_name=run_name, tags=dict(tags))
        self.run_id: str = run.info.run_id
        self._pending: list[Any] = []

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(params).items()]
        for i in range(0, len(items), _MLFLOW_BATCH):
            self._client.log_batch(self.run_id, params=items[i : i + _MLFLOW_BATCH])

    def log_scalars(self, values: Mapping[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        ms = int(time.time() * 1000)
        metrics = [Metric(f"{self.prefix}/{k}", v, ms, step) for k, v in numbers(values).items()]
        if metrics:
            op = self._client.log_batch(self.run_id, metrics=metrics, synchronous=False)
            self._pending.append(op)

    def close(self) -> None:
        for op in self._pending:
            if op is not None:
                op.wait()
        self._pending.clear()
        self._client.set_terminated(self.run_id)


class WandbBackend:
    """A W&B run; ``mode`` is already resolved (offline unless the user asked otherwise)."""

    name = "wandb"

    def __init__(
        self,
        project: str,
        entity: str | None,
        mode: str,
        run_name: str,
        directory: str | Path,
        prefix: str,
    ) -> None:
        import wandb

        Path(directory).mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self._run = wandb.init(
            project=project,
            entity=entity,
            name=run_name,
            dir=str(directory),  # W&B writes <directory>/wandb/
            mode=mode,
            tags=[prefix],
        )

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._run.config.update(dict(params), allow_val_change=True)

    def log_scalars(self, values: Mapping[str, Any], step: int) -> None:
        data = {f"{self.prefix}/{k}": v for k, v in numbers(values).items()}
        if data:
            self._run.log(data, step=step)

    def close(self) -> None:
        self._run.finish()


class RayMetricsBackend:
    """Ray metrics gauges ``<prefix>_<key>`` (Prometheus: ``ray_<prefix>_<key>``) tagged
    ``run=<run>``, one per key of ``gauges`` (key -> description); other keys are ignored.
    Setting a gauge is a local call into the Ray worker; the node's agent exports the values."""

    name = "ray"

    def __init__(self, prefix: str, run: str, gauges: Mapping[str, str]) -> None:
        from ray.util.metrics import Gauge

        self._gauges: dict[str, Any] = {}
        for key, description in gauges.items():
            # Ray encodes descriptions as ASCII (a "λ" raises UnicodeEncodeError)
            text = description.encode("ascii", "replace").decode()
            g = Gauge(f"{prefix}_{key}", text, tag_keys=("run",))
            g.set_default_tags({"run": run})
            # held: a slow step must not make the series age out between two logs
            self._gauges[key] = HeldGauge(g)

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_scalars(self, values: Mapping[str, Any], step: int) -> None:
        for key, g in self._gauges.items():
            v = values.get(key)
            if isinstance(v, int | float) and not isinstance(v, bool):
                g.set(float(v))

    def close(self) -> None:
        for g in self._gauges.values():
            g.release()


# -------------------------------------------------------------------------------- tracker


class Tracker:
    """Fans each call out to the backends; a failing backend (not jsonl) is switched off."""

    def __init__(self, backends: list[Backend]) -> None:
        self._backends = list(backends)

    @property
    def backends(self) -> list[str]:
        return [b.name for b in self._backends]

    def log_params(self, params: Mapping[str, Any]) -> None:
        for b in list(self._backends):
            self._call(b, "log_params", params)

    def log_scalars(self, values: Mapping[str, Any], step: int) -> None:
        for b in list(self._backends):
            self._call(b, "log_scalars", values, step)

    def close(self) -> None:
        for b in list(self._backends):
            self._call(b, "close")
        self._backends.clear()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, backend: Backend, method: str, *args: Any) -> None:
        try:
            getattr(backend, method)(*args)
        except Exception as e:
            if backend.name == "jsonl":
                raise
            self._backends.remove(backend)
            log.warning(
                "tracking backend %s failed in %s (%s: %s); it is off for the rest of this run",
                backend.name,
                method,
                type(e).__name__,
                str(e).splitlines()[0][:200] if str(e) else "",
            )


def check_tracking(cfg: TrackingConfig) -> None:
    """ConfigError (one line) when a named backend's package is not installed; imports none."""
    for name in cfg.backends:
        module, package = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"tracking.backends names {name}, but the {package} package is not installed: "
                f"pip install {package}, or remove {name} from tracking.backends"
            )


def resolve_tracking(cfg: T, out_dir: str | Path, env: Mapping[str, str] | None = None) -> T:
    """Fill the ``None`` defaults: the TensorBoard folder (the output folder), MLflow's URI
    (``$MLFLOW_TRACKING_URI``, else ``<output_dir>/mlflow.db``, SQLite) and W&B's mode (``$WANDB_MODE``,
    else offline). Run it where the user's environment is (the driver), so workers on other
    nodes log to the same place."""
    env = os.environ if env is None else env
    out = Path(out_dir).expanduser().resolve()
    mode: str | None = cfg.wandb.mode
    if mode is None:
        given = env.get("WANDB_MODE", "").strip().lower()
        if given and given not in _WANDB_MODES and "wandb" in cfg.backends:
            raise ConfigError(
                f"WANDB_MODE={given!r} is not one of {sorted(_WANDB_MODES)}; fix it, or set "
                "tracking.wandb.mode"
            )
        mode = _WANDB_MODES.get(given, "offline")
    # MLflow 3.18 refuses its file store ("maintenance mode"; 6 Dec 2026): a SQLite file in the
    # output folder is the local store it asks for (needs `pip install mlflow`, not -skinny).
    local = f"sqlite:///{out / 'mlflow.db'}"
    uri = cfg.mlflow.tracking_uri or env.get("MLFLOW_TRACKING_URI") or local
    return cfg.model_copy(
        update={
            "tensorboard_dir": str(Path(cfg.tensorboard_dir or out).expanduser().resolve()),
            "mlflow": cfg.mlflow.model_copy(update={"tracking_uri": uri}),
            "wandb": cfg.wandb.model_copy(update={"mode": mode}),
        }
    )


def open_tracker(
    cfg: TrackingConfig,
    out_dir: str | Path,
    *,
    run_name: str,
    prefix: str,
    jsonl: str | Path | None = None,
    replay_from: int = 1,
    params: Mapping[str, Any] | None = None,
    ray_gauges: Mapping[str, str] | None = None,
) -> Tracker:
    """A tracker with ``jsonl`` (when a path is given), the configured backends and Ray gauges.

    ``prefix`` names the stage in tags and metric names (``train/loss``, ``eval/gsm8k/ptr``);
    ``replay_from`` is the first step this process logs (steps from there on that the folder
    holds from an earlier attempt are replaced); ``params`` (the run's config) is logged once.
    A configured backend that cannot start is an error, before any step runs; Ray gauges that
    cannot be made are only a warning (metrics must never stop training).
    """
    check_tracking(cfg)
    cfg = resolve_tracking(cfg, out_dir)
    out = Path(out_dir).expanduser().resolve()
    tags = {"ptr_ray.stage": prefix, "ptr_ray.output_dir": str(out)}
    backends: list[Backend] = []
    if jsonl is not None:
        backends.append(JsonlBackend(jsonl))
    try:
        for name in cfg.backends:
            backends.append(_make(name, cfg, out, run_name, prefix, replay_from, tags))
    except Exception as e:
        Tracker(backends).close()
        raise PtrRayRuntimeError(
            f"tracking backend {name} could not start ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''}); fix tracking.{name} or remove "
            f"{name} from tracking.backends"
        ) from e
    if ray_gauges:
        try:
            backends.append(RayMetricsBackend(f"ptr_{prefix}", run_name, ray_gauges))
        except Exception as e:
            log.warning("Ray metrics are off for this run (%s: %s)", type(e).__name__, e)
    tracker = Tracker(backends)
    if params is not None:
        tracker.log_params(params)
    return tracker


def _make(
    name: str,
    cfg: TrackingConfig,
    out: Path,
    run_name: str,
    prefix: str,
    replay_from: int,
    tags: Mapping[str, str],
) -> Backend:
    if name == "tensorboard":
        assert cfg.tensorboard_dir is not None  # resolved
        return TensorBoardBackend(cfg.tensorboard_dir, prefix, purge_step=replay_from)
    if name == "mlflow":
        return MlflowBackend(cfg.mlflow.tracking_uri, cfg.mlflow.experiment, run_name, prefix, tags)
    if name == "wandb":
        assert cfg.wandb.mode is not None  # resolved
        return WandbBackend(
            cfg.wandb.project, cfg.wandb.entity, cfg.wandb.mode, run_name, out, prefix
        )
    raise ConfigError(f"unknown tracking backend {name!r}")  # the config's Literal prevents it
