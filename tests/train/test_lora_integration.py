"""LoRA end to end on Ray Train + DeepSpeed (1 CPU worker, ZeRO-2): train, kill-and-resume, merged export.

The worker is SIGKILLed from outside (conftest.RankZeroKiller) once the step-2 checkpoint is
registered and step 3 is logged.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ptr_ray.config import TrainConfig, load_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "ptr_small"


def test_lora_trains_resumes_and_exports_a_merged_plain_model(
    ray_local, tiny_model_dir, tmp_path, kill_rank_zero
):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from ptr_ray.train.export import consolidated_state_dict
    from ptr_ray.train.trainer import run_train

    out = tmp_path / "run"
    cfg = load_config(
        TrainConfig,
        ROOT / "jobs" / "configs" / "train_local.yaml",
        [
            f"model={tiny_model_dir}",
            f"dataset={FIXTURE}",
            f"output_dir={out}",
            "max_length=512",
            "max_steps=4",
            "checkpoint_every=2",
            "keep_checkpoints=5",
            "progress=false",
            "scaling.num_workers=1",
            "deepspeed.zero_stage=2",
            "optim.lr=1e-2",
            "optim.warmup_steps=0",
            "optim.schedule=constant",
            "loss.schedule=constant",
            "thought_dropout=0",
            "lora.enabled=true",
            "lora.r=4",
            "lora.alpha=8",
            "lora.dropout=0",
            "max_failures=1",
        ],
    )
    killer = kill_rank_zero(out)
    model_dir = run_train(cfg)
    killer.stop()
    assert killer.error is None, killer.error
    assert killer.kill is not None, "the run finished before the worker could be killed"
    # step 2 is the only checkpoint before the last step (4): killed after step 3 (or 4),
    # restarted from the step-2 checkpoint of the peft-wrapped module: 3, 4 again
    assert killer.kill.registered_step == 2 and killer.kill.logged_step in (3, 4)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    m = killer.kill.logged_step
    assert killer.attempts() == [list(range(1, m + 1)), [3, 4]]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # each step once after the resume
    before = killer.kill.rows[2]  # step 3 as the killed attempt logged it
    assert rows[2]["loss"] == pytest.approx(before["loss"], rel=1e-4)  # step 3 replayed exactly
    assert rows[2]["tokens"] == before["tokens"]
    assert all(math.isfinite(r[k]) for r in rows for k in ("loss", "loss_ce", "loss_consistency"))

    # model/ is a plain merged model: no adapter tensors, loads without peft
    sd = load_file(model_dir / "model.safetensors")
    assert not any("lora_" in k or k.startswith("base_model.") for k in sd)
    assert not (model_dir / "adapter_config.json").exists()
    assert json.loads((model_dir / "ptr_ray_export.json").read_text())["lora_merged"]["r"] == 4
    loaded = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert not any("lora_" in n for n, _ in loaded.named_parameters())

    # exported weight = base + (alpha / r) * B @ A of the final checkpoint; non-targets unchanged
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    ckpt = consolidated_state_dict(out / "ray" / "train" / "checkpoint_step0000004")
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    delta = 2.0 * ckpt[f"{prefix}.lora_B.default.weight"] @ ckpt[f"{prefix}.lora_A.default.weight"]
    assert delta.abs().max() > 1e-3  # the adapters trained
    q = "model.layers.0.self_attn.q_proj.weight"
    want = (base[q] + delta).to(torch.bfloat16)
    assert torch.equal(sd[q], want)
    assert not torch.equal(sd[q], base[q].to(torch.bfloat16))
    emb = "model.embed_tokens.weight"
    assert torch.equal(sd[emb], base[emb].to(torch.bfloat16))  # frozen, not a LoRA target
