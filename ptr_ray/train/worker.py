"""The per-worker training loop that Ray Train runs on every rank.

Each rank: builds its deterministic data plan (its shard of the seeded permutation, encoded,
thought-dropped and packed per epoch; all ranks agree on the number of steps), loads the model,
optionally wraps it with LoRA adapters (peft; only they train), wraps it with
``deepspeed.initialize`` (a plain torch AdamW unless the config asks for
DeepSpeed's own), restores the latest checkpoint if Ray Train has one (a restarted worker group
or a second run on the same output folder; ``metrics.jsonl`` then loses the lines of the
steps that run again), and trains, reporting metrics every
``log_every`` steps and a DeepSpeed checkpoint every ``checkpoint_every`` steps, and writing
``models/step-<N>/`` at each of ``export_steps`` (see :func:`export_step`).

Rank 0 alone logs each step's metrics, through one tracker (ptr_ray/tracking.py):
``metrics.jsonl``, the configured TensorBoard / MLflow / W&B backends and the Ray metrics
gauges of :data:`TRAIN_GAUGES`. The values are the ones the step already all-reduced, so
tracking adds no collective and no device sync.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ptr_ray.errors import PtrRayRuntimeError
from ptr_ray.fsutil import write_json_atomic
from ptr_ray.train.ds_config import deepspeed_config, lr_lambda
from ptr_ray.train.encode import EncodeError
from ptr_ray.train.resume import METRICS_FILE, trim_metrics

log = logging.getLogger(__name__)

CKPT_TAG = "ds"  # DeepSpeed tag inside every Ray checkpoint folder
STATE_FILE = "train_state.json"

#: metrics.jsonl keys that rank 0 also exports as Ray metrics gauges: on Ray's Prometheus
#: endpoint as ``ray_ptr_train_<key>{run="<run_name>"}`` (tracking.ray_metrics). ASCII only:
#: Ray encodes metric descriptions as ASCII.
TRAIN_GAUGES: dict[str, str] = {
    "step": "optimizer steps done",
    "loss": "PTR loss: the lambda-weighted sum of the three terms",
    "loss_ce": "answer cross-entropy term",
    "loss_consistency": "consistency term: mean 1 - cos of successive turns' hidden states",
    "loss_confidence": "confidence term: beta-weighted 1 - mean token probability",
    "lambda1": "lambda1, the answer CE weight, at this step",
    "lambda2": "lambda2, the consistency weight, at this step",
    "lambda3": "lambda3, the confidence weight, at this step",
    "lr": "learning rate",
    "tokens_per_s": "tokens per second, all workers",
    "step_time_s": "seconds per optimizer step",
}


# ------------------------------------------------------------------------------------------
# Data plan
# ------------------------------------------------------------------------------------------


def build_plans(
    cfg: Any, records: list, tokenizer: Any, rank: int, world: int, gas: int, mbs: int, all_reduce
) -> tuple[list, dict[str, int]]:
    """Every epoch's micro-batches for this rank, padded so all ranks take the same steps.

    ``all_reduce(values, op)`` reduces a list of ints over ranks ("max" or "sum").
    """
    from ptr_ray.train.encode import Encoder, EncodeStats, pad_plan, plan_epoch

    enc = Encoder(
        tokenizer,
        cfg.max_length,
        cfg.mode,
        cfg.prompt.refine_instruction,
        cfg.prompt.system_prompt,
        cfg.include_sft,
        cfg.thought_dropout if cfg.mode == "ptr" else 0.0,
        cfg.seed,
    )
    stats = EncodeStats()
    plans = []
    repeated = 0
    for epoch in range(cfg.epochs):
        order = list(range(len(records)))
        random.Random(f"data:{cfg.seed}:{epoch}").shuffle(order)
        episodes, st = enc.encode_many(records, order[rank::world], epoch)
        if epoch == 0:
            stats.add(st)
        plan = plan_epoch(episodes, cfg.max_length, mbs, cfg.pack, cfg.seed + rank, epoch)
        n = all_reduce([len(plan.micro_batches)], "max")[0]
        n = gas * math.ceil(n / gas)
        if n == 0:
            raise EncodeError("no episode fits max_length: nothing to train on")
        pad_plan(plan, n)
        repeated += plan.repeated
        plans.append(plan)
    keys = list(stats.as_dict())
    summed = all_reduce([stats.as_dict()[k] for k in keys] + [repeated], "sum")
    out = dict(zip(keys + ["repeated_micro_batches"], summed, strict=True))
    return plans, out


# ------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point (runs on every rank)."""
    import deepspeed
    import ray
    import ray.train
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ptr_ray.config import TrainConfig
    from ptr_ray.models import resolve_model
    from ptr_ray.train.encode import collate
    from ptr_ray.train.loss import lambdas_at, ptr_loss
    from ptr_ray.train.native_ops import prepare_deepspeed_ops

    cfg = TrainConfig.model_validate(config["cfg"])
    records = config["records"]
    if isinstance(records, ray.ObjectRef):
        records = ray.get(records)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    use_gpu = cfg.scaling.use_gpu and torch.cuda.is_available()
    device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.output_dir)

    def all_reduce(values: list[float], op: str) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return [int(v) if float(v).is_integer() else float(v) for v in t.tolist()]

    ds_cfg = deepspeed_config(cfg, world)
    mbs = int(ds_cfg["train_micro_batch_size_per_gpu"])
    gas = int(ds_cfg["gradient_accumulation_steps"])

    model_path = resolve_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )

    t0 = time.time()
    plans, enc_stats = build_plans(cfg, records, tokenizer, rank, world, gas, mbs, all_reduce)
    steps_per_epoch = [len(p.micro_batches) // gas for p in plans]
    total_steps = sum(steps_per_epoch)
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        log.info(
            "data plan in %.1fs: %s; %d steps (%s per epoch)",
            time.time() - t0,
            enc_stats,
            total_steps,
            steps_per_epoch,
        )
        write_json_atomic(
            out_dir / "encode_stats.json",
            {**enc_stats, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps},
            indent=1,
        )
        beyond = [n for n in cfg.export_steps if n > total_steps]
        if beyond:
            log.warning(
                "export_steps %s are past the last step (%d): not exported", beyond, total_steps
            )

    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=torch.float32, attn_implementation=cfg.attn_implementation
    )
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.lora.enabled:
        from ptr_ray.train.lora import wrap_lora

        model = wrap_lora(model, cfg.lora)  # before deepspeed.initialize: adapters only train
    model.train()
    if rank == 0:
        from ptr_ray.train.lora import count_params

        trainable, n_total = count_params(model)
        log.info(
            "parameters: %d trainable of %d (%.2f%%)%s",
            trainable,
            n_total,
            100.0 * trainable / n_total,
            " [LoRA]" if cfg.lora.enabled else "",
        )

    opt = cfg.optim
    sched_fn = lr_lambda(opt.warmup_steps, total_steps, opt.schedule, opt.min_lr_ratio)
    if "optimizer" in ds_cfg:
        optimizer = None
        scheduler: Any = lambda o: torch.optim.lr_scheduler.LambdaLR(o, sched_fn)  # noqa: E731
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
        # Only non-empty groups (LoRA adapters are all 2-D): ZeRO drops an empty group, which
        # would leave the scheduler with one lr more than the optimizer has groups.
        groups = [
            g
            for g in (
                {"params": decay, "weight_decay": opt.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            )
            if g["params"]
        ]
        optimizer = torch.optim.AdamW(groups, lr=opt.lr, betas=opt.betas, eps=opt.eps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, sched_fn)
        params = None
    prepare_deepspeed_ops()  # its CPU op built once per node, never stuck on a dead build's lock
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=ds_cfg,
        model_parameters=params,
        dist_init_required=False,
    )
    if world == 1 and engine.zero_optimization_stage() == 0:
        # No peer to reduce with, but DeepSpeed would still flatten every gradient into one
        # buffer, all-reduce it and copy it back after each backward, the largest part of its
        # overhead over a bare torch loop on CPU (benchmarks/train_throughput.py).
        engine.enable_backward_allreduce = False

    start_step = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            # DeepSpeed reads its files with torch.load(weights_only=False), hard-coded in its
            # TorchCheckpointEngine: the ZeRO optimizer shards pickle DeepSpeed objects
            # (LossScaler, ZeroStageEnum, fragment_address with DeepSpeed 0.19), so they are
            # not weights-only. They are this run's own checkpoints, in its own storage
            # (output_dir/ray or storage_path: keep it writable by the run's owner only).
            load_path, client = engine.load_checkpoint(d, tag=CKPT_TAG)
            if load_path is None:
                raise PtrRayRuntimeError(
                    f"could not load the DeepSpeed checkpoint in {d} (damaged or not written by "
                    "this run); remove it, or start in a new output_dir"
                )
            start_step = int(client["step"])
        if rank == 0:
            log.info("resumed from %s at step %d", ckpt.path, start_step)
    metrics_path = out_dir / METRICS_FILE
    tracker = None
    if rank == 0:
        # The steps after the restored checkpoint (all of them on a fresh start) run again:
        # their earlier lines go, so metrics.jsonl holds each step once.
        dropped = trim_metrics(metrics_path, start_step)
        if dropped:
            log.info("%s: dropped %d lines past step %d", metrics_path, dropped, start_step)
        from ptr_ray.tracking import open_tracker

        tracker = open_tracker(
            cfg.tracking,
            out_dir,
            run_name=cfg.run_name,
            prefix="train",
            jsonl=metrics_path,
            replay_from=start_step + 1,  # TensorBoard drops its events of the replayed steps
            params={**cfg.model_dump(mode="json"), "world_size": world, "total_steps": total_steps},
            ray_gauges=TRAIN_GAUGES if cfg.tracking.ray_metrics else None,
        )

    bar = None
    if rank == 0 and cfg.progress:
        from ray.experimental.tqdm_ray import tqdm

        bar = tqdm(total=total_steps, desc=f"train {cfg.mode}", unit="step")
        if start_step:
            bar.update(start_step)

    ce_only = cfg.mode == "ift"
    need_hidden = not ce_only
    micro_batches = [(e, mb) for e, p in enumerate(plans) for mb in p.micro_batches]
    step = start_step
    acc = torch.zeros(6, dtype=torch.float64)
    t_step = time.time()
    try:
        for i in range(start_step * gas, total_steps * gas):
            epoch, groups = micro_batches[i]
            lam = (
                (1.0, 0.0, 0.0)
                if ce_only
                else lambdas_at(cfg.loss.lambdas, cfg.loss.schedule, cfg.loss.warmup_steps, step)
            )
            batch = collate(plans[epoch].episodes, groups, pad_id)
            ids = batch["input_ids"].to(device)
            out = engine(
                input_ids=ids,
                position_ids=batch["position_ids"].to(device),
                output_hidden_states=need_hidden,
                use_cache=False,  # a cache disables packing masks
            )
            terms = ptr_loss(
                out.logits,
                out.hidden_states[-1] if need_hidden else None,
                ids,
                batch["labels"].to(device),
                batch["turns"],
                lam,
                ce_only=ce_only,
                confidence=cfg.loss.confidence,
            )
            engine.backward(terms.total)
            engine.step()
            f = terms.floats()
            acc += torch.tensor(
                [
                    f["loss"],
                    f["loss_ce"],
                    f["loss_consistency"],
                    f["loss_confidence"],
                    batch["n_tokens"],
                    terms.answer_tokens,
                ],
                dtype=torch.float64,
            )
            if (i + 1) % gas:
                continue
            step += 1
            dt = time.time() - t_step
            red = torch.tensor(all_reduce(acc.tolist(), "sum"), dtype=torch.float64)
            n = gas * world
            metrics = {
                "step": step,
                "epoch": epoch,
                "loss": red[0].item() / n,
                "loss_ce": red[1].item() / n,
                "loss_consistency": red[2].item() / n,
                "loss_confidence": red[3].item() / n,
                "lambda1": lam[0],
                "lambda2": lam[1],
                "lambda3": lam[2],
                "lr": float(engine.get_lr()[0]),
                "tokens": int(red[4]),
                "answer_tokens": int(red[5]),
                "tokens_per_s": red[4].item() / dt,
                "step_time_s": dt,
                "total_steps": total_steps,
            }
            acc.zero_()
            if tracker is not None:  # rank 0: metrics.jsonl, TensorBoard, ..., Ray gauges
                tracker.log_scalars(metrics, step)
            if rank == 0:
                if bar is not None:
                    bar.set_description(f"train {cfg.mode} loss {metrics['loss']:.3f}")
                    bar.update(1)
            if step in cfg.export_steps:
                export_step(engine, cfg, model_path, step, rank)
            if step % cfg.checkpoint_every == 0 or step == total_steps:
                _save_and_report(engine, metrics, step, total_steps, rank)
            elif step % cfg.log_every == 0:
                ray.train.report(metrics)
            t_step = time.time()
    finally:
        if bar is not None:
            bar.close()
        if tracker is not None:
            tracker.close()  # flushes TensorBoard, ends the MLflow / W&B run


def step_model_dir(output_dir: str | Path, step: int) -> Path:
    """Where ``export_steps`` writes the model of optimizer step ``step``."""
    return Path(output_dir) / "models" / f"step-{step}"


def export_step(engine: Any, cfg: Any, base_model: str, step: int, rank: int) -> None:
    """Write ``models/step-<N>/`` from the weights after optimizer step ``step``.

    Every rank calls this (ZeRO-3 gathers its partitions collectively); rank 0 writes, with
    the code of the final export (ptr_ray/train/export.py), so a step model loads in vLLM like
    ``model/``. A step replayed after a restart is written again, from the resumed weights.
    """
    from ptr_ray.train.export import export_state_dict, live_state_dict

    t0 = time.time()
    sd = live_state_dict(engine, cfg.deepspeed.zero_stage, rank)
    if rank != 0 or sd is None:
        return
    meta = {"step": step, "mode": cfg.mode, "dataset": cfg.dataset}
    if cfg.lora.enabled:
        meta["lora_merged"] = cfg.lora.model_dump(mode="json")
    out = export_state_dict(
        sd,
        base_model,
        step_model_dir(cfg.output_dir, step),
        meta=meta,
        lora=cfg.lora if cfg.lora.enabled else None,
        origin=f"step {step}",
    )
    log.info("step %d: exported %s in %.1fs", step, out, time.time() - t0)


def _save_and_report(
    engine: Any, metrics: dict[str, Any], step: int, total: int, rank: int
) -> None:
    """Save a DeepSpeed checkpoint on every rank and hand it to Ray Train (merged in storage)."""
    import ray.train
    from ray.train import Checkpoint

    tmp = Path(tempfile.mkdtemp(prefix=f"ptr-ckpt-{step}-"))
    try:
        engine.save_checkpoint(str(tmp), tag=CKPT_TAG, client_state={"step": step})
        if rank == 0:
            (tmp / STATE_FILE).write_text(
                json.dumps(
                    {"step": step, "total_steps": total, "done": step >= total, "tag": CKPT_TAG}
                )
            )
        ray.train.report(
            metrics,
            checkpoint=Checkpoint.from_directory(str(tmp)),
            checkpoint_dir_name=f"checkpoint_step{step:07d}",
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
