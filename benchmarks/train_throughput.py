"""Training throughput: Ray Train + DeepSpeed (1 worker) vs. a bare torch loop, with a profile.

    .venv/bin/python benchmarks/train_throughput.py                     # SmolLM2-135M, fixture data
    .venv/bin/python benchmarks/train_throughput.py --model /tmp/tiny --steps 20

Four loops train the same model on the same packed micro-batches (rank 0's plan) with the
same PTR loss, AdamW, lr schedule and gradient clipping, at the same precision (fp32) and
number of CPU threads, one after the other in one run:

1. ``bare``: a plain torch loop (the reference);
2. ``deepspeed``: ``deepspeed.initialize`` in this process (gloo, world size 1), DeepSpeed's
   defaults: after every backward it flattens all gradients into one buffer, all-reduces it
   and copies it back, even with no peer to reduce with;
3. ``deepspeed_no_reduce``: the same engine with that all-reduce skipped, as the training
   worker does at world size 1 (``ptr_ray/train/worker.py``);
4. ``ray``: ``ptr-ray train`` itself (Ray Train worker + DeepSpeed, ZeRO 0), its metrics.jsonl.

Each in-process loop is timed part by part (collate, forward, loss, backward, gradient
all-reduce, optimizer step), so the difference between two loops is explained, not only
measured. Tokens/s is the median over steps after ``--warmup``; for ``ray`` both the worker's
own step time and the wall time between logged steps (which also holds the metric all-reduce,
logging and ``ray.train.report``). The headline is ray / bare with the goal beside it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOAL = 0.95


def _setup(cfg: Any, threads: int) -> tuple[Any, Any, list, Any]:
    """Tokenizer, model, rank 0's micro-batches and the plans, as the worker builds them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ptr_ray.models import resolve_model
    from ptr_ray.records import read_records
    from ptr_ray.train.worker import build_plans

    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    path = resolve_model(cfg.model)
    tok = AutoTokenizer.from_pretrained(path)
    records = read_records(cfg.dataset)
    mbs = cfg.deepspeed.micro_batch_size
    gas = cfg.deepspeed.gradient_accumulation_steps
    plans, _ = build_plans(cfg, records, tok, 0, 1, gas, mbs, lambda v, op: v)
    batches = [(e, mb) for e, p in enumerate(plans) for mb in p.micro_batches]
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation=cfg.attn_implementation
    )
    model.config.use_cache = False
    model.train()
    return tok, model, batches, plans


def _optimizer(cfg: Any, model: Any, total: int) -> tuple[Any, Any]:
    """AdamW with the worker's parameter groups and lr schedule."""
    import torch

    from ptr_ray.train.ds_config import lr_lambda

    o = cfg.optim
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": o.weight_decay},
            {"params": no_decay, "weight_decay": 0},
        ],
        lr=o.lr,
        betas=o.betas,
        eps=o.eps,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(o.warmup_steps, total, o.schedule, o.min_lr_ratio)
    )
    return opt, sched


class Parts:
    """Seconds per named part of each step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.cur: dict[str, float] = defaultdict(float)
        self.t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.cur[name] += now - self.t
        self.t = now

    def add(self, name: str, seconds: float) -> None:
        self.cur[name] += seconds

    def end_step(self, tokens: int) -> None:
        self.lap("other")
        self.steps.append({**self.cur, "tokens": tokens})
        self.cur = defaultdict(float)

    def summary(self, warmup: int) -> dict[str, Any]:
        rows = self.steps[warmup:] or self.steps
        names = list(dict.fromkeys(k for r in rows for k in r if k != "tokens"))
        total = [sum(r.get(k, 0.0) for k in names) for r in rows]
        parts = {k: round(statistics.median(r.get(k, 0.0) for r in rows), 4) for k in names}
        rates = [r["tokens"] / t for r, t in zip(rows, total, strict=True)]
        return {
            "tokens_per_s": round(statistics.median(rates), 1),
            "step_s": round(statistics.median(total), 4),
            "parts_s": parts,
            "steps": len(rows),
        }


def _step_inputs(cfg: Any, plans: list, batch: tuple, pad_id: int, step: int) -> tuple[Any, Any]:
    from ptr_ray.train.encode import collate
    from ptr_ray.train.loss import lambdas_at

    epoch, groups = batch
    lam = lambdas_at(cfg.loss.lambdas, cfg.loss.schedule, cfg.loss.warmup_steps, step)
    return collate(plans[epoch].episodes, groups, pad_id), lam


def _loss(cfg: Any, out: Any, b: dict, lam: Any) -> Any:
    from ptr_ray.train.loss import ptr_loss

    return ptr_loss(
        out.logits,
        out.hidden_states[-1],
        b["input_ids"],
        b["labels"],
        b["turns"],
        lam,
        confidence=cfg.loss.confidence,
    )


def _timed_step(
    parts: Parts,
    cfg: Any,
    plans: Any,
    batch: Any,
    pad: int,
    step: int,
    forward: Callable[..., Any],
    backward: Callable[[Any], Any],
    optimize: Callable[[], Any],
) -> None:
    """One optimizer step, timed part by part: the same body for every loop compared, so only
    the model call, the backward and the optimizer step differ between them."""
    parts.t = time.perf_counter()
    b, lam = _step_inputs(cfg, plans, batch, pad, step)
    parts.lap("collate")
    out = forward(
        input_ids=b["input_ids"],
        position_ids=b["position_ids"],
        output_hidden_states=True,
        use_cache=False,
    )
    parts.lap("forward")
    terms = _loss(cfg, out, b, lam)
    parts.lap("loss")
    backward(terms.total)
    parts.lap("backward")
    optimize()
    parts.lap("optimizer")
    terms.floats()
    parts.end_step(b["n_tokens"])


def bare_loop(cfg: Any, steps: int, threads: int) -> Parts:
    """A single-process torch loop over rank 0's plan (gradient accumulation 1)."""
    import torch

    tok, model, batches, plans = _setup(cfg, threads)
    opt, sched = _optimizer(cfg, model, steps)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    parts = Parts()

    def optimize() -> None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.deepspeed.gradient_clipping)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()

    for i in range(min(steps, len(batches))):
        _timed_step(parts, cfg, plans, batches[i], pad, i, model, lambda t: t.backward(), optimize)
    return parts


def deepspeed_loop(cfg: Any, steps: int, threads: int, skip_reduce: bool) -> Parts:
    """The worker's DeepSpeed engine in this process (gloo group of one), timed by part."""
    import deepspeed
    import torch.distributed as dist

    from ptr_ray.testing import free_port
    from ptr_ray.train.ds_config import deepspeed_config
    from ptr_ray.train.native_ops import prepare_deepspeed_ops

    prepare_deepspeed_ops()  # built before the clock starts, as the worker does
    if not dist.is_initialized():
        port = free_port()
        # what a launcher (or Ray Train) sets; DeepSpeed checks LOCAL_RANK
        os.environ.update({"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1"})
        os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    tok, model, batches, plans = _setup(cfg, threads)
    opt, sched = _optimizer(cfg, model, steps)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=opt,
        lr_scheduler=sched,
        config=deepspeed_config(cfg, 1),
        dist_init_required=False,
    )
    if skip_reduce:
        engine.enable_backward_allreduce = False
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    parts = Parts()
    reduce = engine.allreduce_gradients

    def timed_reduce(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return reduce(*a, **k)
        finally:
            dt = time.perf_counter() - t
            parts.add("grad_allreduce", dt)  # inside engine.backward: not counted twice
            parts.add("backward", -dt)

    engine.allreduce_gradients = timed_reduce
    for i in range(min(steps, len(batches))):
        _timed_step(parts, cfg, plans, batches[i], pad, i, engine, engine.backward, engine.step)
    return parts


def ray_loop(cfg: Any, warmup: int) -> dict[str, Any]:
    """``ptr-ray train`` on the same config; tokens/s from its metrics.jsonl."""
    from ptr_ray.train.trainer import run_train

    t0 = time.time()
    run_train(cfg)
    wall = time.time() - t0
    rows = [
        json.loads(x) for x in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()
    ]
    rows.sort(key=lambda r: r["step"])
    in_step = [r["tokens_per_s"] for r in rows][warmup:]
    # wall time between logged steps: the step plus logging, the metric all-reduce, report
    gaps = [
        (b["tokens"] / (b["time"] - a["time"]), b["time"] - a["time"] - b["step_time_s"])
        for a, b in zip(rows, rows[1:], strict=False)
        if "time" in a and "time" in b
    ][max(0, warmup - 1) :]
    out: dict[str, Any] = {
        "tokens_per_s": round(statistics.median(in_step), 1),
        "step_s": round(statistics.median(r["step_time_s"] for r in rows[warmup:]), 4),
        "steps": len(in_step),
        "wall_s_incl_startup": round(wall, 1),
    }
    if gaps:
        out["tokens_per_s_between_steps"] = round(statistics.median(g[0] for g in gaps), 1)
        out["outside_step_s"] = round(statistics.median(g[1] for g in gaps), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--dataset", default=str(ROOT / "tests" / "fixtures" / "ptr_small"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument(
        "--loops",
        default="bare,deepspeed,deepspeed_no_reduce,ray",
        help="comma-separated subset of bare,deepspeed,deepspeed_no_reduce,ray",
    )
    args = ap.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from ptr_ray.config import TrainConfig, load_config

    out = Path(tempfile.mkdtemp(prefix="ptr-bench-train-"))
    cfg = load_config(
        TrainConfig,
        ROOT / "jobs" / "configs" / "train_local.yaml",
        [
            f"model={args.model}",
            f"dataset={args.dataset}",
            f"output_dir={out}",
            f"max_length={args.max_length}",
            "epochs=5",
            f"max_steps={args.steps}",
            "thought_dropout=0",
            "scaling.num_workers=1",
            f"scaling.cpus_per_worker={args.threads}",
            f"checkpoint_every={args.steps}",
            "export=false",
            "progress=false",
            "max_failures=0",
            "deepspeed.zero_stage=0",
            "deepspeed.gradient_accumulation_steps=1",
        ],
    )
    loops = [x.strip() for x in args.loops.split(",") if x.strip()]
    res: dict[str, Any] = {}
    for name in loops:
        if name == "bare":
            res[name] = bare_loop(cfg, args.steps, args.threads).summary(args.warmup)
        elif name in ("deepspeed", "deepspeed_no_reduce"):
            skip = name == "deepspeed_no_reduce"
            res[name] = deepspeed_loop(cfg, args.steps, args.threads, skip).summary(args.warmup)
        elif name == "ray":
            res[name] = ray_loop(cfg, args.warmup)
        else:
            raise SystemExit(f"unknown loop {name!r}")
        gc.collect()  # the loop's model, optimizer and engine (reference cycles)
        print(name, json.dumps(res[name]), flush=True)
    report: dict[str, Any] = {
        "model": args.model,
        "max_length": args.max_length,
        "steps": args.steps,
        "threads": args.threads,
        "load_1min": round(os.getloadavg()[0], 2),
        **{f"{k}_tokens_per_s": v["tokens_per_s"] for k, v in res.items()},
    }
    if "bare" in res:
        base = res["bare"]["tokens_per_s"]
        for k, v in res.items():
            if k != "bare":
                report[f"ratio_{k}_over_bare"] = round(v["tokens_per_s"] / base, 3)
        if "ray" in res:
            r = report["ratio_ray_over_bare"]
            report["goal_ratio"] = GOAL
            report["goal_reached"] = r >= GOAL
            if "tokens_per_s_between_steps" in res["ray"]:
                report["ratio_ray_between_steps_over_bare"] = round(
                    res["ray"]["tokens_per_s_between_steps"] / base, 3
                )
    report["loops"] = res
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
