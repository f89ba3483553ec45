"""Export: DeepSpeed checkpoint -> Hugging Face folder (bf16 safetensors) that vLLM loads.

ZeRO stages 1-3 keep the fp32 master weights in per-rank optimizer shards; DeepSpeed's
``zero_to_fp32`` utilities consolidate them into one fp32 state dict. Stage 0 checkpoints
hold the module's state dict directly. The weights are loaded into the base model's
architecture (tied embeddings re-tied), cast to the export dtype and saved with the base
model's tokenizer, chat template and generation config, into a temporary folder renamed into
place, so a half-written ``model/`` never exists. A LoRA run's adapters are merged into the
base weights first (ptr_ray/train/lora.py): ``model/`` never needs peft to load.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from ptr_ray.errors import PtrRayValueError
from ptr_ray.fsutil import atomic_dir

log = logging.getLogger(__name__)

COMPLETE = ".complete"


class ExportError(PtrRayValueError):
    """A checkpoint or base model that cannot be exported (no DeepSpeed tag, no chat template)."""


def consolidated_state_dict(ckpt_dir: str | Path, tag: str = "ds") -> dict:
    """The full fp32 state dict of a DeepSpeed checkpoint folder (any ZeRO stage)."""
    import torch

    root = Path(ckpt_dir)
    tag_dir = root / tag
    if not tag_dir.is_dir():
        raise ExportError(f"{root} holds no DeepSpeed checkpoint tag {tag!r}")
    if list(tag_dir.glob("*optim_states.pt")) and any("zero_pp_rank" in p.name for p in tag_dir.iterdir()):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
    else:
        states = tag_dir / "mp_rank_00_model_states.pt"
        if not states.is_file():
            raise ExportError(f"{tag_dir} has neither ZeRO shards nor {states.name}")
        sd = torch.load(states, map_location="cpu", weights_only=False)["module"]
    return {k: v.float() for k, v in sd.items()}


def export_model(
    ckpt_dir: str | Path, base_model: str | Path, out_dir: str | Path, dtype: str = "bfloat16",
    tag: str = "ds", meta: dict | None = None, lora: Any = None,
) -> Path:
    """Write ``out_dir`` (safetensors + tokenizer + chat template + generation config).

    ``lora`` (an enabled :class:`~ptr_ray.config.LoraConfig`) says the checkpoint is of a
    peft-wrapped model: its adapters are merged into the base weights, so ``out_dir`` is a
    plain model either way.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    t0 = time.time()
    out = Path(out_dir)
    sd = consolidated_state_dict(ckpt_dir, tag)
    if lora is not None and lora.enabled:
        from ptr_ray.train.lora import merged_model

        model = merged_model(sd, base_model, lora, str(ckpt_dir))
        del sd
    else:
        config = AutoConfig.from_pretrained(base_model)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(sd, strict=False)
        tied = set(getattr(model, "_tied_weights_keys", None) or [])
        if isinstance(getattr(model, "_tied_weights_keys", None), dict):
            tied = set(model._tied_weights_keys)
        missing = [k for k in missing if k not in tied and not k.startswith("lm_head.")]
        if missing or unexpected:
            raise RuntimeError(
                f"checkpoint {ckpt_dir} does not match {base_model}: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
    model.tie_weights()
    torch_dtype = getattr(torch, dtype)
    model = model.to(torch_dtype)
    model.config.dtype = torch_dtype
    try:
        model.generation_config = GenerationConfig.from_pretrained(base_model)
    except OSError:
        log.info("base model has no generation_config.json; deriving one from its config")
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.chat_template is None:
        raise ExportError(f"tokenizer of {base_model} has no chat template")

    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "ptr_ray_export.json").write_text(json.dumps(
            {"checkpoint": str(ckpt_dir), "base_model": str(base_model), "dtype": dtype,
             **(meta or {})}, indent=1))
        (tmp / COMPLETE).write_text("")
    log.info("exported %s -> %s (%s) in %.1fs", ckpt_dir, out, dtype, time.time() - t0)
    return out
