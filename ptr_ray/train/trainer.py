"""``ptr-ray train``: validate, run Ray Train + DeepSpeed, export ``model/``.

The driver does everything that can fail on bad input *before* a worker starts (dataset
folder, columns, blank answers, chat template, ``max_length`` vs the shortest answer), then
hands the validated records to a :class:`ray.train.torch.TorchTrainer`. The run is named
``run_name`` (``train`` unless set; the Ray dashboard's Train view lists it by that name) and
lives under ``<output_dir>/ray/<run_name>`` (or ``storage_path``): Ray Train keeps a snapshot
of its checkpoints there, so a second ``ptr-ray train`` on the same output folder resumes (step,
optimizer, data position) and a crashed worker group restarts from the last checkpoint
(``max_failures``). A second run resumes only the *same* run: one whose config differs in a
key that changes the math, or whose dataset content differs, is refused or moved aside
(ptr_ray/train/resume.py).

Output folder::

    train_config.yaml   the resolved config
    train_dataset.json  the dataset's path and content digest (what a resume compares)
    encode_stats.json   episodes, tokens, truncated/skipped/dropped thoughts, steps
    metrics.jsonl       one line per optimizer step (loss terms, lr, tokens/s, step time);
                        after a resume, still one per step (the replayed steps' lines replaced)
    events.out.tfevents.*  the same per-step values for TensorBoard (tracking.backends:
                        [tensorboard]); also MLflow / W&B and Ray metrics (ptr_ray/tracking.py)
    ray/<run_name>/checkpoint_stepNNNNNNN/   DeepSpeed checkpoints (ZeRO shards of every rank)
    model/              bf16 safetensors + tokenizer + chat template + generation config
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from ptr_ray.config import ConfigError, TrainConfig
from ptr_ray.errors import PtrRayError
from ptr_ray.train.resume import dataset_digest, prepare_output

log = logging.getLogger(__name__)


class TrainingFailed(PtrRayError, RuntimeError):
    """The worker group failed more often than ``max_failures`` allows.

    A :class:`PtrRayError`, so the CLI prints its one line; also a ``RuntimeError``, for
    callers written against the builtin."""


def _worker_env(cfg: TrainConfig) -> dict[str, str]:
    env = {"PYTHONWARNINGS": "ignore::FutureWarning"}  # on top of ptr_ray.runtime_env's table
    if not cfg.scaling.use_gpu:
        env["DS_ACCELERATOR"] = "cpu"
    return env


def _ensure_ray(cfg: TrainConfig) -> bool:
    """Start/attach Ray per config unless already initialized; True when we started it."""
    from ptr_ray.ray_utils import init_ray

    # Logical CPUs: every worker needs its share, plus Ray Train's controller.
    need = int(cfg.scaling.num_workers * cfg.scaling.cpus_per_worker) + 1
    return init_ray(cfg.ray, min_cpus=need, env_vars=_worker_env(cfg))


def check_inputs(cfg: TrainConfig) -> tuple[str, list, dict[str, Any]]:
    """Driver-side checks: model resolves, records valid, max_length sane. No worker yet."""
    from transformers import AutoTokenizer

    from ptr_ray.models import resolve_model
    from ptr_ray.records import read_records
    from ptr_ray.tracking import check_tracking
    from ptr_ray.train.encode import check_dataset

    check_tracking(cfg.tracking)  # a named backend that is not installed: one line, now
    records = read_records(cfg.dataset)  # DatasetError names file and problem
    model_path = resolve_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    info = check_dataset(tokenizer, records, cfg)
    if cfg.scaling.use_gpu is False and cfg.attn_implementation == "flash_attention_2":
        raise ConfigError("attn_implementation=flash_attention_2 needs scaling.use_gpu=true")
    from ptr_ray.train.ds_config import deepspeed_config

    deepspeed_config(
        cfg, cfg.scaling.num_workers
    )  # a bad DeepSpeed JSON fails here, not in a worker
    if cfg.lora.enabled:
        _check_lora_targets(model_path, cfg)
    return model_path, records, info


def _check_lora_targets(model_path: str, cfg: TrainConfig) -> None:
    """A misspelt ``lora.target_modules`` fails here (meta-device model: no weights loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ptr_ray.train.lora import check_targets

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    check_targets(model, cfg.lora)


def run_train(cfg: TrainConfig) -> Path:
    """Train per ``cfg``; returns the exported model folder (or the output folder if no export)."""
    t0 = time.time()
    out = Path(cfg.output_dir).expanduser().resolve()
    model_path, records, info = check_inputs(cfg)
    cfg = cfg.model_copy(update={"output_dir": str(out)})
    storage = cfg.storage_path or str(out / "ray")
    # Resume only the same run: refuse (or move aside) a folder whose run had another config
    # or dataset; then train_config.yaml and train_dataset.json describe this run.
    prepare_output(cfg, out, dataset_digest(records), storage, cfg.run_name)
    log.info(
        "dataset %s: %d records (%d usable in mode %s); shortest answer %d tokens",
        cfg.dataset,
        info["records"],
        info["usable"],
        cfg.mode,
        info["shortest_answer_tokens"],
    )

    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from ptr_ray.tracking import resolve_tracking
    from ptr_ray.train.export import export_model
    from ptr_ray.train.worker import STATE_FILE, train_loop_per_worker

    # The workers log where the driver's user would: $MLFLOW_TRACKING_URI, $WANDB_MODE and
    # relative folders are resolved here, not on a worker node.
    tracking = resolve_tracking(cfg.tracking, out)
    if "tensorboard" in tracking.backends:
        log.info("TensorBoard: tensorboard --logdir %s", tracking.tensorboard_dir)

    os.environ.update({k: v for k, v in _worker_env(cfg).items() if k not in os.environ})
    started = _ensure_ray(cfg)
    try:
        sc = cfg.scaling
        resources = {"CPU": sc.cpus_per_worker}
        if sc.use_gpu:
            resources["GPU"] = sc.gpus_per_worker
        resources.update(sc.resources)  # custom resources: only nodes advertising them
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={
                "cfg": cfg.model_copy(update={"tracking": tracking}).model_dump(mode="json"),
                "records": ray.put(records),
            },
            torch_config=TorchConfig(backend="nccl" if sc.use_gpu else "gloo"),
            scaling_config=ScalingConfig(
                num_workers=sc.num_workers,
                use_gpu=sc.use_gpu,
                resources_per_worker=resources,
                placement_strategy=sc.placement_strategy,
            ),
            run_config=RunConfig(
                name=cfg.run_name,  # the dashboard's Train view, and the storage folder
                storage_path=storage,
                worker_runtime_env={"env_vars": _worker_env(cfg)},
                failure_config=FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            ),
        )
        try:
            result = trainer.fit()
        except Exception as e:  # WorkerGroupError, ControllerError, ...: one line for the CLI
            lines = [x.strip() for x in str(e).splitlines() if x.strip()]
            first = (lines[-1] if lines else type(e).__name__)[:300]
            raise TrainingFailed(
                f"training failed ({type(e).__name__}: {first}); checkpoints are kept in {storage}, "
                "run the same command again to resume"
            ) from e
    finally:
        if started:
            ray.shutdown()
    if result.error is not None:
        raise TrainingFailed(f"training failed: {result.error}")
    ckpt = result.checkpoint
    if ckpt is None:
        raise RuntimeError("training finished without a checkpoint")
    with ckpt.as_directory() as ckpt_dir:
        state = json.loads((Path(ckpt_dir) / STATE_FILE).read_text())
        log.info(
            "training done at step %d/%d in %.1fs; checkpoint %s",
            state["step"],
            state["total_steps"],
            time.time() - t0,
            ckpt.path,
        )
        if not cfg.export:
            return out
        meta = {"step": state["step"], "mode": cfg.mode, "dataset": cfg.dataset}
        if cfg.lora.enabled:
            meta["lora_merged"] = cfg.lora.model_dump(mode="json")
        return export_model(
            ckpt_dir,
            model_path,
            out / "model",
            meta=meta,
            lora=cfg.lora if cfg.lora.enabled else None,
        )
