"""LoRA through peft: wrap the model for training, merge the adapters back for export.

Training wraps the Hugging Face model with :func:`peft.get_peft_model` *before*
``deepspeed.initialize``, so DeepSpeed sees one module whose only trainable parameters are the
adapters (the optimizer gets nothing else) and checkpoints it like any other module (frozen
base weights included, so a checkpoint is self-contained). The PTR loss needs the hidden
states of the same forward: the peft wrapper passes ``output_hidden_states``/``position_ids``
straight to the base model.

Export rebuilds the same wrapper on the base weights, loads the consolidated checkpoint and
merges (``merge_and_unload``), so ``model/`` is a plain model that vLLM loads with no adapter.
"""

from __future__ import annotations

import logging
from typing import Any

from ptr_ray.config import ConfigError
from ptr_ray.train.export import MISMATCH_HINT, ExportError, load_matching

log = logging.getLogger(__name__)

ADAPTER_MARK = "lora_"  # every peft LoRA parameter name contains it


def peft_lora_config(section: Any) -> Any:
    """The :class:`peft.LoraConfig` for a :class:`~ptr_ray.config.LoraConfig`."""
    from peft import LoraConfig, TaskType

    targets = section.target_modules
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=section.r,
        lora_alpha=section.alpha,
        lora_dropout=section.dropout,
        bias="none",
        target_modules=targets if isinstance(targets, str) else list(targets),
    )


def check_targets(model: Any, section: Any) -> None:
    """Fail with one line when a named target module does not exist in ``model``.

    peft matches a target name against the full module name or its last dotted parts; this
    mirrors that so a typo fails on the driver, before any worker starts.
    """
    if isinstance(section.target_modules, str):
        return
    names = [n for n, _ in model.named_modules()]
    missing = [
        t for t in section.target_modules if not any(n == t or n.endswith("." + t) for n in names)
    ]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names if n and not n[-1].isdigit()})
        raise ConfigError(
            f"lora.target_modules {missing} not found in the model; "
            f"module names include {leaves[:20]}"
        )


def count_params(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def wrap_lora(model: Any, section: Any) -> Any:
    """``model`` wrapped with LoRA adapters; only adapter parameters require grad."""
    from peft import get_peft_model

    if getattr(model, "is_gradient_checkpointing", False):
        # Frozen embeddings give checkpointed blocks inputs without grad: re-enable it so
        # the adapters inside still receive gradients (reentrant checkpointing).
        model.enable_input_require_grads()
    peft_model = get_peft_model(model, peft_lora_config(section))
    bad = [n for n, p in peft_model.named_parameters() if p.requires_grad and ADAPTER_MARK not in n]
    if bad:
        raise RuntimeError(f"LoRA left non-adapter parameters trainable: {bad[:5]}")
    return peft_model


def merged_model(state_dict: dict, base_model: Any, section: Any, ckpt: str = "") -> Any:
    """The base model with the LoRA adapters of ``state_dict`` merged in (fp32, no peft).

    ``state_dict`` is the consolidated checkpoint of the peft-wrapped module; base weights it
    lacks (a checkpoint saved without frozen parameters) come from ``base_model``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    check_targets(model, section)  # a base_model without those modules: one line, not peft's
    peft_model = wrap_lora(model, section)
    origin = ckpt or "(state dict)"
    missing, unexpected = load_matching(peft_model, state_dict, origin, base_model)
    missing_adapters = [k for k in missing if ADAPTER_MARK in k]
    if unexpected or missing_adapters:
        raise ExportError(
            f"checkpoint {origin} does not match {base_model} with LoRA {section.model_dump()}: "
            f"missing adapters {missing_adapters[:5]}, unexpected {unexpected[:5]}; {MISMATCH_HINT}"
        )
    n_adapters = sum(ADAPTER_MARK in k for k in state_dict)
    if n_adapters == 0:  # (only when the wrapper itself has no adapters: caught above else)
        raise ExportError(
            f"checkpoint {origin} holds no LoRA adapter weights; it is not from a LoRA run: "
            "export it with lora.enabled=false"
        )
    merged = peft_model.merge_and_unload()
    left = [n for n, _ in merged.named_parameters() if ADAPTER_MARK in n]
    if left:
        raise RuntimeError(f"LoRA merge left adapter parameters: {left[:5]}")
    log.info("merged %d LoRA tensors into %s", n_adapters, base_model)
    return merged
