"""Whether a second ``ptr-ray train`` on the same ``output_dir`` continues the run found there.

A rerun restores the folder's last checkpoint: weights, optimizer, lr scheduler and data
position. That is right only when the rerun *is* the same run. Restoring a checkpoint under a
new learning rate, λ, model or dataset would silently mix two runs into one model, and the
rewritten ``train_config.yaml`` would then describe neither. So before any worker starts,
:func:`prepare_output` compares the run in the folder with the new one (docs/design.md,
"Errors and resumption"):

* the saved ``train_config.yaml`` (read through :class:`TrainConfig`, so a key added since
  compares as its default) against the new config, key by key;
* the dataset's content digest (``train_dataset.json``, :func:`dataset_digest`): a dataset
  rebuilt in place is a different run even though its path is the same.

Keys in :data:`RESUMABLE_KEYS` may differ: they decide where the run is stored, how often it
logs, checkpoints or exports, and which resources it gets, never the math of a step.
:data:`GROW_ONLY` keys (``max_steps``, ``epochs``) may be raised to extend a run, not lowered
(the checkpoint may already be past the new end). Any other difference is a change:
``on_config_change: refuse`` (the default) raises :class:`TrainConfigChanged`, one line naming
each changed key with its old and new value; ``move_aside`` renames the old folder to
``<output_dir>.old-<time>`` and starts afresh.

After a resume the steps past the restored checkpoint run again; :func:`trim_metrics` drops
their earlier lines from ``metrics.jsonl`` so it holds each step once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ptr_ray.config import TrainConfig, dump_config
from ptr_ray.config.base import one_line_error
from ptr_ray.errors import PtrRayValueError
from ptr_ray.fsutil import atomic_write, write_json_atomic
from ptr_ray.train.packing import PLAN_VERSION, PLAN_VERSIONS

log = logging.getLogger(__name__)

CONFIG_FILE = "train_config.yaml"
DATASET_FILE = "train_dataset.json"
METRICS_FILE = "metrics.jsonl"

#: Dotted config keys (a section name covers its keys) that may change when a run resumes.
RESUMABLE_KEYS: tuple[str, ...] = (
    "output_dir",  # the folder itself (it may have been moved)
    "dataset",  # the path; the content is compared by digest
    "max_steps",  # GROW_ONLY
    "epochs",  # GROW_ONLY (each epoch's data plan is seeded by (seed, epoch): earlier ones stay)
    "checkpoint_every",
    "keep_checkpoints",
    "max_failures",
    "log_every",
    "progress",
    "tracking",  # where charts and metrics go (TensorBoard, MLflow, W&B, Ray metrics)
    "export",
    "export_steps",
    "gradient_checkpointing",  # recomputes activations: memory for time, same values
    "scaling.cpus_per_worker",
    "scaling.gpus_per_worker",
    "scaling.placement_strategy",
    "scaling.resources",
    "ray",
    "on_config_change",
)
#: Resumable keys that may only be raised (None, no limit, is the largest ``max_steps``).
GROW_ONLY: tuple[str, ...] = ("max_steps", "epochs")


class TrainConfigChanged(PtrRayValueError):
    """The output folder holds a run with another config or dataset, and it was not moved."""


@dataclass(frozen=True)
class Change:
    """One difference between the run in the folder and the new one."""

    key: str
    old: Any
    new: Any
    note: str = ""

    def __str__(self) -> str:
        note = f" ({self.note})" if self.note else ""
        if self.new is _UNKNOWN:  # the saved side could not be read at all
            return f"{self.key}: {self.old}{note}"
        return f"{self.key}: {_show(self.old)} -> {_show(self.new)}{note}"


_UNKNOWN = object()


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def dataset_digest(records: Iterable[BaseModel]) -> str:
    """sha256 over the records in order (order counts: the data plan shuffles by index)."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps(r.model_dump(mode="json"), sort_keys=True).encode())
        h.update(b"\n")
    return h.hexdigest()


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:  # an empty mapping stays a key of its own
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _resumable(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS)


def _lowered(key: str, old: Any, new: Any) -> bool:
    if old is None or new is None:  # max_steps: None is no limit
        return old is None and new is not None
    return bool(new < old)


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    """The differences that make ``new`` another run than ``old`` (both ``model_dump``s)."""
    a, b = _flatten(old), _flatten(new)
    changes = []
    for key in sorted(a.keys() | b.keys()):
        was, now = a.get(key), b.get(key)
        if was == now:
            continue
        if key in GROW_ONLY and _lowered(key, was, now):
            changes.append(Change(key, was, now, "may only grow on resume"))
        elif not _resumable(key):
            changes.append(Change(key, was, now))
    return changes


def _saved_config(path: Path) -> dict[str, Any] | Change:
    try:
        data = yaml.safe_load(path.read_text())
        return TrainConfig.model_validate(data).model_dump(mode="json")
    except ValidationError as e:
        return Change(CONFIG_FILE, "unreadable", _UNKNOWN, one_line_error(e))
    except (OSError, yaml.YAMLError) as e:
        return Change(CONFIG_FILE, "unreadable", _UNKNOWN, type(e).__name__)


def _saved_digest(out: Path) -> str | None:
    try:
        return str(json.loads((out / DATASET_FILE).read_text())["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _saved_plan(out: Path) -> int | None:
    """The data plan version the run in ``out`` was trained on (None: no readable file; a file
    from before versions were recorded holds version 1)."""
    try:
        return int(json.loads((out / DATASET_FILE).read_text()).get("data_plan", 1))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def run_changes(cfg: TrainConfig, out: Path, digest: str, run_dir: Path | None) -> list[Change]:
    """What differs between the run in ``out`` and ``cfg`` + ``digest`` (empty: none, or no
    run there). ``run_dir`` is Ray Train's folder of this run's checkpoints, when local."""
    saved = out / CONFIG_FILE
    if not saved.is_file():
        if run_dir is not None and any(run_dir.glob("checkpoint_*")):
            return [Change(CONFIG_FILE, "missing", _UNKNOWN, f"but {run_dir} holds checkpoints")]
        return []
    old = _saved_config(saved)
    if isinstance(old, Change):
        return [old]
    changes = config_changes(old, cfg.model_dump(mode="json"))
    was = _saved_digest(out)
    if was != digest:
        changes.append(
            Change(
                "dataset content",
                f"sha256:{was[:12]}" if was else "unknown",
                f"sha256:{digest[:12]}",
            )
        )
    plan = _saved_plan(out)
    if plan is not None and plan != PLAN_VERSION:  # packing changed: other steps, other data
        changes.append(
            Change("data plan", f"v{plan}", f"v{PLAN_VERSION}", PLAN_VERSIONS[PLAN_VERSION])
        )
    return changes


def _free_name(path: Path) -> Path:
    n, candidate = 1, path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def move_aside(out: Path, run_dir: Path | None) -> Path:
    """Rename ``out`` to ``<out>.old-<time>`` (and Ray Train's run folder, when it is stored
    outside ``out``, beside itself), so the new run starts with no checkpoint to restore."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = _free_name(out.with_name(f"{out.name}.old-{stamp}"))
    if out.exists():
        out.rename(dest)
    if run_dir is not None and run_dir.exists():  # storage_path outside output_dir
        run_dir.rename(_free_name(run_dir.with_name(f"{run_dir.name}.old-{stamp}")))
    return dest


def prepare_output(cfg: TrainConfig, out: Path, digest: str, storage: str, run_name: str) -> None:
    """Refuse, move aside or resume the run in ``out``, then record the new run's identity.

    ``storage`` is Ray Train's storage path and ``run_name`` the run's folder inside it.
    Raises :class:`TrainConfigChanged` when the folder holds another run and
    ``cfg.on_config_change`` is ``refuse`` (or the checkpoints are in remote storage, which
    cannot be renamed).
    """
    remote = "://" in storage
    run_dir = None if remote else Path(storage).expanduser() / run_name
    changes = run_changes(cfg, out, digest, run_dir)
    if changes:
        listed = "; ".join(str(c) for c in changes)
        if cfg.on_config_change == "refuse":
            raise TrainConfigChanged(
                f"{out} holds a training run with another config or dataset ({listed}); "
                "resuming would mix the two runs: use a new output_dir, or set "
                "on_config_change=move_aside (train.on_config_change in a run or experiment "
                "config) to move the old run to <output_dir>.old-<time>"
            )
        if remote:
            raise TrainConfigChanged(
                f"{out} holds a training run with another config or dataset ({listed}), and "
                f"its checkpoints are in remote storage {storage}, which on_config_change="
                "move_aside cannot rename: delete them, or set a new storage_path or output_dir"
            )
        dest = move_aside(out, run_dir)
        log.warning(
            "the training config or dataset changed (%s); moved the old run to %s", listed, dest
        )
    elif (out / CONFIG_FILE).is_file():
        log.info("resuming the run in %s (same config and dataset)", out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        out / DATASET_FILE, {"path": cfg.dataset, "sha256": digest, "data_plan": PLAN_VERSION}
    )
    dump_config(cfg, out / CONFIG_FILE)  # written last: it marks the folder as holding a run


def trim_metrics(path: Path, last_step: int) -> int:
    """Keep one line per step up to ``last_step`` (the restored checkpoint's; 0 = none).

    The steps after it run again and log again, so their earlier lines go; so does a
    half-written line of a killed worker. Where a step was logged twice (a folder from before
    this rule), the later line is kept: it is the one the checkpoint continued from. Returns
    how many lines were dropped.
    """
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    by_step: dict[int, str] = {}
    for line in lines:
        try:
            step = int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
        if step <= last_step:
            by_step[step] = line
    dropped = len(lines) - len(by_step)
    if dropped:
        atomic_write(path, "".join(by_step[s] + "\n" for s in sorted(by_step)))
    return dropped
