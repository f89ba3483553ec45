"""LoRA through peft (ptr_ray/train/lora.py): wrapping, the forward the PTR loss uses, merging."""

from __future__ import annotations

import pytest
import torch

from ptr_ray.config import ConfigError, LoraConfig, TrainConfig
from ptr_ray.train.export import ExportError
from ptr_ray.train.lora import check_targets, count_params, merged_model, wrap_lora


def _base(path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def test_only_adapters_train_and_init_is_identity(tiny_model_dir):
    base = _base(tiny_model_dir)
    ids = torch.randint(0, base.config.vocab_size, (1, 12))
    pos = torch.arange(12)[None]
    with torch.no_grad():
        ref = base(input_ids=ids, position_ids=pos, output_hidden_states=True, use_cache=False)
    n_base = sum(p.numel() for p in base.parameters())

    model = wrap_lora(base, LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0)).eval()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    n_train, n_total = count_params(model)
    assert 0 < n_train < n_total and n_total == n_base + n_train
    # all-linear: every attention/MLP projection, never the (tied) output head
    assert any("q_proj" in n for n in trainable) and any("down_proj" in n for n in trainable)
    assert not any("lm_head" in n or "embed" in n for n in trainable)

    with torch.no_grad():  # the PTR forward: same kwargs as the worker passes
        out = model(input_ids=ids, position_ids=pos, output_hidden_states=True, use_cache=False)
    assert out.hidden_states is not None and len(out.hidden_states) == len(ref.hidden_states)
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=0)  # lora_B == 0 at init
    torch.testing.assert_close(out.hidden_states[-1], ref.hidden_states[-1], rtol=0, atol=0)

    # gradients reach the adapters only (B gets a gradient first; A once B is non-zero)
    model.train()
    model(input_ids=ids, position_ids=pos, use_cache=False).logits.sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0
        for n, p in model.named_parameters()
        if "lora_B" in n
    )


def test_merged_model_equals_base_plus_delta(tiny_model_dir):
    section = LoraConfig(
        enabled=True, r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"]
    )
    model = wrap_lora(_base(tiny_model_dir), section).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    ids = torch.randint(0, model.config.vocab_size, (1, 10))
    with torch.no_grad():
        want = model(input_ids=ids, use_cache=False).logits
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}

    merged = merged_model(sd, tiny_model_dir, section).eval()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert type(merged).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        got = merged(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    base = _base(tiny_model_dir)
    w0 = base.model.layers[0].self_attn.q_proj.weight
    a = sd["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"]
    b = sd["base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"]
    torch.testing.assert_close(
        merged.model.layers[0].self_attn.q_proj.weight,
        w0 + (section.alpha / section.r) * b @ a,
        rtol=1e-5,
        atol=1e-6,
    )
    torch.testing.assert_close(
        merged.model.layers[0].self_attn.k_proj.weight, base.model.layers[0].self_attn.k_proj.weight
    )  # not a target

    # a checkpoint without adapters (a non-LoRA run) is refused, not silently exported
    plain = {f"base_model.model.{k}": v for k, v in base.state_dict().items()}
    with pytest.raises(ExportError, match="missing adapters") as info:
        merged_model(plain, tiny_model_dir, section, "/runs/ift/checkpoint_step0000004")
    msg = str(info.value)
    assert msg.startswith(
        f"checkpoint /runs/ift/checkpoint_step0000004 does not match {tiny_model_dir}"
    )
    assert "\n" not in msg and "base_model" in msg

    # adapters of another shape (trained with another r, or on another base model): one line
    wrong = dict(sd)
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    wrong[key] = torch.zeros(wrong[key].shape[0] * 2, wrong[key].shape[1])
    with pytest.raises(ExportError) as info:
        merged_model(wrong, tiny_model_dir, section, "/runs/ptr/checkpoint_step0000004")
    msg = str(info.value)
    assert "\n" not in msg and "size mismatch" in msg and key in msg
    assert msg.startswith(
        f"checkpoint /runs/ptr/checkpoint_step0000004 does not match {tiny_model_dir}"
    )

    # a base model without the trained target modules: the config error, not peft's ValueError
    with pytest.raises(ConfigError, match=r"\['wq'\] not found"):
        merged_model(sd, tiny_model_dir, LoraConfig(enabled=True, target_modules=["wq"]), "c")


def test_bad_lora_config(tiny_model_dir):
    with pytest.raises(ValueError, match="target_modules"):
        TrainConfig(dataset="d", output_dir="o", lora={"enabled": True, "target_modules": []})
    with pytest.raises(ValueError):
        TrainConfig(dataset="d", output_dir="o", lora={"enabled": True, "rank": 8})  # typo
    with pytest.raises(ValueError, match=r"\['qproj'\] not found"):
        check_targets(
            _base(tiny_model_dir), LoraConfig(enabled=True, target_modules=["qproj", "v_proj"])
        )
