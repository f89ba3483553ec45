"""DeepSpeed's configuration and the learning-rate schedule of a training run.

Kept apart from the per-worker loop (:mod:`ptr_ray.train.worker`) because the driver needs
them too: ``ptr-ray train`` validates the DeepSpeed config before any worker starts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ptr_ray.config import ConfigError

# ------------------------------------------------------------------------------------------
# DeepSpeed configuration
# ------------------------------------------------------------------------------------------


def _fill_auto(node: Any, values: dict[str, Any], path: str = "") -> Any:
    """Replace "auto" values of a DeepSpeed JSON by ours (the HF Trainer convention)."""
    if isinstance(node, dict):
        return {k: _fill_auto(v, values, f"{path}.{k}" if path else k) for k, v in node.items()}
    if node == "auto":
        if path not in values:
            raise ConfigError(f"DeepSpeed config: no value for 'auto' at {path}")
        return values[path]
    return node


def deepspeed_config(cfg: Any, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config dict for a :class:`~ptr_ray.config.TrainConfig`.

    With ``deepspeed.config_file`` the JSON is used as is, only its "auto" values filled in.
    A torch optimizer on ZeRO needs ``zero_allow_untested_optimizer`` (and with optimizer
    offload ``zero_force_ds_cpu_optimizer: false``): both set here, both safe for AdamW.
    """
    ds, opt = cfg.deepspeed, cfg.optim
    auto = {
        "train_micro_batch_size_per_gpu": ds.micro_batch_size,
        "gradient_accumulation_steps": ds.gradient_accumulation_steps,
        "train_batch_size": ds.micro_batch_size * ds.gradient_accumulation_steps * world_size,
        "gradient_clipping": ds.gradient_clipping,
        "bf16.enabled": ds.bf16,
        "zero_optimization.stage": ds.zero_stage,
        "optimizer.params.lr": opt.lr,
        "optimizer.params.betas": list(opt.betas),
        "optimizer.params.eps": opt.eps,
        "optimizer.params.weight_decay": opt.weight_decay,
    }
    if ds.config_file:
        p = Path(ds.config_file)
        if not p.is_file():
            raise ConfigError(f"deepspeed.config_file {p} does not exist")
        try:
            raw = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"deepspeed.config_file {p} is not valid JSON ({e.msg})") from None
        out = _fill_auto(raw, auto)
        out.setdefault("train_micro_batch_size_per_gpu", ds.micro_batch_size)
        out.setdefault("gradient_accumulation_steps", ds.gradient_accumulation_steps)
        out.pop("train_batch_size", None)  # derived from the two above and the world size
    else:
        zero: dict[str, Any] = {"stage": ds.zero_stage}
        if ds.zero_stage > 0:
            zero.update(overlap_comm=False, contiguous_gradients=True)
        if ds.offload_optimizer and ds.zero_stage > 0:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cfg.scaling.use_gpu}
        if ds.offload_param:
            if ds.zero_stage != 3:
                raise ConfigError("deepspeed.offload_param needs deepspeed.zero_stage=3")
            zero["offload_param"] = {"device": "cpu", "pin_memory": cfg.scaling.use_gpu}
        if ds.zero_stage == 3:
            zero["stage3_gather_16bit_weights_on_model_save"] = False
        out = {
            "train_micro_batch_size_per_gpu": ds.micro_batch_size,
            "gradient_accumulation_steps": ds.gradient_accumulation_steps,
            "gradient_clipping": ds.gradient_clipping,
            "bf16": {"enabled": ds.bf16},
            "zero_optimization": zero,
        }
        if opt.optimizer == "deepspeed":
            out["optimizer"] = {
                "type": "AdamW",
                "params": {
                    "lr": opt.lr,
                    "betas": list(opt.betas),
                    "eps": opt.eps,
                    "weight_decay": opt.weight_decay,
                },
            }
    out.setdefault("steps_per_print", 1 << 30)
    out.setdefault("wall_clock_breakdown", False)
    if "optimizer" not in out:
        out["zero_allow_untested_optimizer"] = True
        out["zero_force_ds_cpu_optimizer"] = False
    return out


def lr_lambda(warmup: int, total: int, schedule: str, min_ratio: float):
    """Multiplier of the peak lr at a step: linear warm-up, then cosine/linear/constant."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or total <= warmup:
            return 1.0
        frac = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - (1.0 - min_ratio) * frac
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))

    return f
