"""Export: DeepSpeed checkpoint -> Hugging Face folder (bf16 safetensors) that vLLM loads.

ZeRO stages 1-3 keep the fp32 master weights in per-rank optimizer shards; DeepSpeed's
``zero_to_fp32`` utilities consolidate them into one fp32 state dict. Stage 0 checkpoints
hold the module's state dict directly. The weights are loaded into the base model's
architecture (tied embeddings re-tied), cast to the export dtype and saved with the base
model's tokenizer, chat template and generation config, into a temporary folder renamed into
place, so a half-written ``model/`` never exists. A LoRA run's adapters are merged into the
base weights first (ptr_ray/train/lora.py): ``model/`` never needs peft to load.

Per-step exports (``TrainConfig.export_steps``, the emergence curve of the paper's Figure 2)
take the live weights instead of a checkpoint: :func:`live_state_dict` gathers them on rank 0
(ZeRO-3 partitions gathered layer by layer, every rank taking part) and
:func:`export_state_dict` writes them exactly as a final export would.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from pathlib import Path
from typing import Any

from ptr_ray.errors import PtrRayValueError
from ptr_ray.fsutil import atomic_dir

log = logging.getLogger(__name__)

COMPLETE = ".complete"


class ExportError(PtrRayValueError):
    """A checkpoint or base model that cannot be exported (no DeepSpeed tag, no chat template,
    a damaged checkpoint file, weights that do not fit ``base_model``)."""


MISMATCH_HINT = "export with the base_model (and lora settings) the run was trained from"


def load_matching(model: Any, sd: dict, origin: str, base_model: Any) -> tuple[list, list]:
    """``model.load_state_dict(sd, strict=False)``; a tensor of the wrong shape is an
    :class:`ExportError` naming both sides, not torch's multi-line ``RuntimeError``.

    A wrong ``base_model`` of the same family (another size) fails exactly here: torch refuses
    a shape mismatch even when ``strict`` is off. Returns (missing, unexpected) keys.
    """
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # torch's state-dict mismatch report ("size mismatch for ...")
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        first = next((ln for ln in lines if ln.startswith("size mismatch")), " ".join(lines))
        raise ExportError(
            f"checkpoint {origin} does not match {base_model}: {first.rstrip('.')}; {MISMATCH_HINT}"
        ) from e  # --debug shows torch's full report
    return list(missing), list(unexpected)


def consolidated_state_dict(ckpt_dir: str | Path, tag: str = "ds") -> dict:
    """The full fp32 state dict of a DeepSpeed checkpoint folder (any ZeRO stage)."""
    import torch

    root = Path(ckpt_dir)
    tag_dir = root / tag
    if not tag_dir.is_dir():
        raise ExportError(f"{root} holds no DeepSpeed checkpoint tag {tag!r}")
    if list(tag_dir.glob("*optim_states.pt")) and any(
        "zero_pp_rank" in p.name for p in tag_dir.iterdir()
    ):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        # zero_to_fp32 loads with torch.load(weights_only=False), hard-coded: the ZeRO optimizer
        # shards pickle DeepSpeed objects (LossScaler, ZeroStageEnum, fragment_address), so they
        # are not weights-only; they are the run's own checkpoints, in its own storage.
        try:
            sd = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
        except (RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as e:
            raise ExportError(_damaged(tag_dir, e)) from e
    else:
        states = tag_dir / "mp_rank_00_model_states.pt"
        if not states.is_file():
            raise ExportError(f"{tag_dir} has neither ZeRO shards nor {states.name}")
        try:  # stage 0's model states are tensors, dicts and plain values (fp32 and bf16)
            sd = torch.load(states, map_location="cpu", weights_only=True)["module"]
        except (RuntimeError, KeyError, EOFError, TypeError, pickle.UnpicklingError) as e:
            raise ExportError(_damaged(states, e)) from e
    return {k: v.float() for k, v in sd.items()}


def _damaged(path: Path, e: BaseException) -> str:
    """One line for a checkpoint that torch or DeepSpeed cannot read (a truncated copy, a
    foreign file): what failed and what to do, instead of the loader's traceback."""
    what = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return (
        f"{path}: not a readable DeepSpeed checkpoint ({type(e).__name__}: {what}); "
        "it is damaged or was not written by ptr-ray: remove it or export another checkpoint"
    )


def live_state_dict(engine: Any, zero_stage: int, rank: int) -> dict | None:
    """The full state dict of a training DeepSpeed engine's module, on rank 0 (None elsewhere).

    ZeRO-3 partitions the weights: every rank must call this (it gathers collectively). ZeRO
    0-2 keep whole weights on every rank, so rank 0 reads its own (in the training dtype;
    the fp32 masters' bf16 rounding when training in bf16, which is what export writes anyway).
    """
    if zero_stage == 3:
        sd = engine._zero3_consolidated_16bit_state_dict()
        return dict(sd) if rank == 0 and sd is not None else None
    if rank != 0:
        return None
    return {k: v.detach().cpu().clone() for k, v in engine.module.state_dict().items()}


def export_model(
    ckpt_dir: str | Path,
    base_model: str | Path,
    out_dir: str | Path,
    dtype: str = "bfloat16",
    tag: str = "ds",
    meta: dict | None = None,
    lora: Any = None,
) -> Path:
    """Write ``out_dir`` (safetensors + tokenizer + chat template + generation config) from a
    DeepSpeed checkpoint folder.

    ``lora`` (an enabled :class:`~ptr_ray.config.LoraConfig`) says the checkpoint is of a
    peft-wrapped model: its adapters are merged into the base weights, so ``out_dir`` is a
    plain model either way.
    """
    sd = consolidated_state_dict(ckpt_dir, tag)
    return export_state_dict(
        sd,
        base_model,
        out_dir,
        dtype,
        {"checkpoint": str(ckpt_dir), **(meta or {})},
        lora,
        str(ckpt_dir),
    )


def export_state_dict(
    sd: dict,
    base_model: str | Path,
    out_dir: str | Path,
    dtype: str = "bfloat16",
    meta: dict | None = None,
    lora: Any = None,
    origin: str = "live weights",
) -> Path:
    """Write ``out_dir`` from a full state dict of the trained module (``lora``: of the
    peft-wrapped module, merged here); ``origin`` names where the weights came from in errors
    and logs; ``meta`` goes to ``ptr_ray_export.json``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    t0 = time.time()
    out = Path(out_dir)
    sd = {k: v.float() for k, v in sd.items()}
    if lora is not None and lora.enabled:
        from ptr_ray.train.lora import merged_model

        model = merged_model(sd, base_model, lora, origin)
        del sd
    else:
        config = AutoConfig.from_pretrained(base_model)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = load_matching(model, sd, origin, base_model)
        tied = set(getattr(model, "_tied_weights_keys", None) or [])
        if isinstance(getattr(model, "_tied_weights_keys", None), dict):
            tied = set(model._tied_weights_keys)
        missing = [k for k in missing if k not in tied and not k.startswith("lm_head.")]
        if missing or unexpected:
            raise ExportError(
                f"checkpoint {origin} does not match {base_model}: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}; {MISMATCH_HINT}"
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
        (tmp / "ptr_ray_export.json").write_text(
            json.dumps({"base_model": str(base_model), "dtype": dtype, **(meta or {})}, indent=1)
        )
        (tmp / COMPLETE).write_text("")
    log.info("exported %s -> %s (%s) in %.1fs", origin, out, dtype, time.time() - t0)
    return out
