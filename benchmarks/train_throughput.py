"""Training throughput: Ray Train + DeepSpeed (1 worker) vs. a bare torch loop; packing efficiency.

    .venv/bin/python benchmarks/train_throughput.py                     # SmolLM2-135M, fixture data
    .venv/bin/python benchmarks/train_throughput.py --model /tmp/tiny --steps 20

Both loops train the same model on the same packed micro-batches with the same PTR loss and
AdamW, with the same number of CPU threads; the ratio isolates the orchestration overhead
(Ray Train worker, DeepSpeed engine, per-step metric all-reduce and ray.train.report).
Tokens/s is the median over steps after ``--warmup`` steps. Packing efficiency is non-pad
tokens / all tokens of the micro-batches, packed vs. padding each micro-batch to its longest
episode, on the same data.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bare_loop(cfg, steps: int, threads: int) -> list[float]:
    """tokens/s of each step of a single-process torch loop over rank 0's plan."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ptr_ray.models import resolve_model
    from ptr_ray.records import read_records
    from ptr_ray.train.encode import collate
    from ptr_ray.train.loss import lambdas_at, ptr_loss
    from ptr_ray.train.worker import build_plans

    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    path = resolve_model(cfg.model)
    tok = AutoTokenizer.from_pretrained(path)
    records = read_records(cfg.dataset)
    plans, _ = build_plans(
        cfg, records, tok, 0, 1, 1, cfg.deepspeed.micro_batch_size, lambda v, op: v
    )
    mbs = [(e, mb) for e, p in enumerate(plans) for mb in p.micro_batches]
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation=cfg.attn_implementation
    )
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas)
    rates = []
    for i in range(min(steps, len(mbs))):
        epoch, groups = mbs[i]
        t0 = time.time()
        b = collate(plans[epoch].episodes, groups, tok.pad_token_id or 0)
        out = model(
            input_ids=b["input_ids"],
            position_ids=b["position_ids"],
            output_hidden_states=True,
            use_cache=False,
        )
        lam = lambdas_at(cfg.loss.lambdas, cfg.loss.schedule, cfg.loss.warmup_steps, i)
        loss = ptr_loss(
            out.logits, out.hidden_states[-1], b["input_ids"], b["labels"], b["turns"], lam
        )
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.deepspeed.gradient_clipping)
        opt.step()
        opt.zero_grad(set_to_none=True)
        rates.append(b["n_tokens"] / (time.time() - t0))
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--dataset", default=str(ROOT / "tests" / "fixtures" / "ptr_small"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--micro-batch", type=int, default=4, help="for the packing-efficiency figure")
    args = ap.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    from transformers import AutoTokenizer

    from ptr_ray.config import TrainConfig, load_config
    from ptr_ray.models import resolve_model
    from ptr_ray.records import read_records
    from ptr_ray.train.encode import Encoder, padding_efficiency
    from ptr_ray.train.trainer import run_train

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
        ],
    )

    # packing efficiency on the same episodes
    tok = AutoTokenizer.from_pretrained(resolve_model(cfg.model))
    records = read_records(cfg.dataset)
    eps, _ = Encoder(tok, cfg.max_length, cfg.mode).encode_many(records, range(len(records)))
    eff = padding_efficiency([len(e) for e in eps], cfg.max_length, args.micro_batch)

    t0 = time.time()
    bare = bare_loop(cfg, args.steps, args.threads)
    t_bare = time.time() - t0
    t0 = time.time()
    run_train(cfg)
    t_ray = time.time() - t0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    ray_rates = [r["tokens_per_s"] for r in rows]

    b = statistics.median(bare[args.warmup :] or bare)
    r = statistics.median(ray_rates[args.warmup :] or ray_rates)
    print(
        json.dumps(
            {
                "model": args.model,
                "steps": args.steps,
                "threads": args.threads,
                "bare_tokens_per_s": round(b, 1),
                "ray_deepspeed_tokens_per_s": round(r, 1),
                "ratio_ray_over_bare": round(r / b, 3),
                "goal_ratio": 0.9,
                "ray_wall_s_incl_startup": round(t_ray, 1),
                "bare_wall_s_incl_load": round(t_bare, 1),
                "packing_efficiency": round(eff["packed"], 4),
                "padding_to_longest_efficiency": round(eff["padded_to_longest"], 4),
                "packing_micro_batch": args.micro_batch,
                "episodes": eff["episodes"],
                "packed_sequences": eff["packed_sequences"],
                "goal_packing": 0.95,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
