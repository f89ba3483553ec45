"""Packing efficiency: data plan version 1 (best-fit decreasing) vs 2 (ptr_ray/train/packing.py).

    .venv/bin/python benchmarks/packing.py --dataset runs/experiment/dataset   # a real build
    .venv/bin/python benchmarks/packing.py                                    # the 24-record fixture

Encodes the dataset's records with the real tokenizer exactly as rank 0 of a one-worker
``ptr-ray train`` does (seeded order, thought dropout per epoch, truncation), then plans each
epoch with both versions on the same episodes and prints, side by side:

* ``fill``: real tokens / (sequences x max_length), the headline (goal >= 0.97);
* ``slots``: real tokens / cells of the micro-batch tensors (rows x longest row), for each
  ``--micro-batch`` size (at 1 there is no padding, so slots is 1.0 for both);
* the optimizer steps an epoch takes (fewer sequences, fewer steps for the same tokens);
* ``best_possible_fill``: tokens / (a lower bound on the sequences any packing needs x
  max_length): the token bound and, tighter, the cutting-stock LP bound; when the goal is
  out of reach of every packing, this says so;
* the time each packer took.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOAL = 0.97


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=str(ROOT / "tests" / "fixtures" / "ptr_small"))
    ap.add_argument("--model", default="builtin:smollm2-135m", help="its tokenizer is used")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--micro-batch", default="1,4", help="comma-separated micro-batch sizes")
    ap.add_argument("--grad-accum", type=int, default=4, help="for the steps per epoch")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--thought-dropout", type=float, default=0.2)
    ap.add_argument("--mode", default="ptr", choices=["ptr", "ift"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sizes = [int(x) for x in args.micro_batch.split(",")]

    from transformers import AutoTokenizer

    from ptr_ray.models import resolve_model
    from ptr_ray.records import read_records
    from ptr_ray.train.encode import Encoder, plan_efficiency, plan_epoch
    from ptr_ray.train.packing import (
        PLAN_VERSIONS,
        min_sequences,
        pack,
        pack_best_fit,
        pack_patterns,
    )

    tok = AutoTokenizer.from_pretrained(resolve_model(args.model))
    records = read_records(args.dataset)
    enc = Encoder(
        tok,
        args.max_length,
        args.mode,
        thought_dropout=args.thought_dropout if args.mode == "ptr" else 0.0,
        seed=args.seed,
    )
    per_epoch = []
    totals: dict[str, dict[str, float]] = {}
    for epoch in range(args.epochs):
        order = list(range(len(records)))
        random.Random(f"data:{args.seed}:{epoch}").shuffle(order)
        eps, stats = enc.encode_many(records, order, epoch)
        lengths = [len(e) for e in eps]
        row: dict[str, Any] = {
            "epoch": epoch,
            "episodes": len(eps),
            "tokens": sum(lengths),
            "episode_tokens_min_median_max": [
                min(lengths),
                sorted(lengths)[len(lengths) // 2],
                max(lengths),
            ],
            "truncated": stats.truncated_episodes,
            "skipped": stats.skipped_too_long,
        }
        for v, packer in ((1, pack_best_fit), (2, pack)):
            t0 = time.perf_counter()
            packer(lengths, args.max_length)
            row[f"v{v}_pack_s"] = round(time.perf_counter() - t0, 3)
            for mb in sizes:
                plan = plan_epoch(eps, args.max_length, mb, True, args.seed, epoch, version=v)
                eff = plan_efficiency(lengths, plan.micro_batches, args.max_length)
                key = f"v{v}_mb{mb}"
                row[key] = {
                    "fill": round(eff["fill"], 4),
                    "slots": round(eff["slots"], 4),
                    "sequences": eff["sequences"],
                    "optimizer_steps": math.ceil(len(plan.micro_batches) / args.grad_accum),
                }
                t = totals.setdefault(key, {"tokens": 0, "capacity": 0, "cells": 0, "steps": 0})
                t["tokens"] += eff["tokens"]
                t["capacity"] += eff["sequences"] * args.max_length
                t["cells"] += eff["tokens"] / eff["slots"]
                t["steps"] += row[key]["optimizer_steps"]
        _, lp_floor = pack_patterns(
            lengths, args.max_length, pack_best_fit(lengths, args.max_length)
        )
        floor = min_sequences(lengths, args.max_length)
        row["best_possible_fill"] = {
            "token_bound": round(sum(lengths) / (floor * args.max_length), 4),
            "lp_bound": round(sum(lengths) / (max(floor, lp_floor) * args.max_length), 4),
        }
        row["min_sequences_lp"] = max(floor, lp_floor)
        per_epoch.append(row)
        print(json.dumps(row), flush=True)

    def total(key: str) -> dict[str, Any]:
        t = totals[key]
        return {
            "fill": round(t["tokens"] / t["capacity"], 4),
            "slots": round(t["tokens"] / t["cells"], 4),
            "optimizer_steps": int(t["steps"]),
        }

    mb0 = sizes[0]
    old, new = total(f"v1_mb{mb0}"), total(f"v2_mb{mb0}")
    report = {
        "dataset": args.dataset,
        "records": len(records),
        "episodes_per_epoch": [r["episodes"] for r in per_epoch],
        "max_length": args.max_length,
        "micro_batch_sizes": sizes,
        "grad_accum": args.grad_accum,
        "epochs": args.epochs,
        "thought_dropout": args.thought_dropout,
        "v1": PLAN_VERSIONS[1],
        "v2": PLAN_VERSIONS[2],
        **{f"{k}_all_epochs": total(k) for k in totals},
        "fill_v1": old["fill"],
        "fill_v2": new["fill"],
        "ratio_fill_v2_over_v1": round(new["fill"] / old["fill"], 4),
        "best_possible_fill_lp": round(
            sum(r["tokens"] for r in per_epoch)
            / (sum(r["min_sequences_lp"] for r in per_epoch) * args.max_length),
            4,
        ),
        "goal_fill": GOAL,
        "goal_reached": new["fill"] >= GOAL,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
