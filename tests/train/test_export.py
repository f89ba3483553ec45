"""Per-step export (``export_steps``): live weights -> the same HF folder a final export writes.

The Ray Train run that exports steps is in test_trainer_integration.py; here the pieces:
the config, the live state dict at every ZeRO stage, and the writer on the tiny model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ptr_ray.config import ConfigError, TrainConfig, load_config
from ptr_ray.train.export import (
    COMPLETE,
    ExportError,
    consolidated_state_dict,
    export_state_dict,
    live_state_dict,
)
from ptr_ray.train.worker import step_model_dir


def test_export_steps_config():
    cfg = load_config(
        TrainConfig, None, ["dataset=d", "output_dir=o", "export_steps=[40, 10, 10, 20]"]
    )
    assert cfg.export_steps == [10, 20, 40]
    assert load_config(TrainConfig, None, ["dataset=d", "output_dir=o"]).export_steps == []
    with pytest.raises(ConfigError, match="export_steps must be optimizer steps >= 1"):
        load_config(TrainConfig, None, ["dataset=d", "output_dir=o", "export_steps=[0, 5]"])
    assert step_model_dir("/runs/a", 20) == Path("/runs/a/models/step-20")


class _Engine:
    """What live_state_dict needs of a DeepSpeed engine."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.gathered = module, 0

    def _zero3_consolidated_16bit_state_dict(self):
        self.gathered += 1
        return self.module.state_dict()  # DeepSpeed: the dict on rank 0, None elsewhere


def test_live_state_dict_by_zero_stage_and_rank():
    module = torch.nn.Linear(3, 2)
    engine = _Engine(module)
    sd = live_state_dict(engine, 2, rank=0)
    assert sd is not None and torch.equal(sd["weight"], module.weight)
    sd["weight"].add_(1.0)  # a copy: training goes on with its own weights
    assert not torch.equal(sd["weight"], module.weight)
    assert live_state_dict(engine, 1, rank=1) is None and engine.gathered == 0
    # ZeRO-3: every rank takes part in the gather, rank 0 keeps the result
    assert live_state_dict(engine, 3, rank=1) is None
    assert live_state_dict(engine, 3, rank=0) is not None and engine.gathered == 2


def test_export_state_dict_writes_the_final_export_layout(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    out = export_state_dict(sd, tiny_model_dir, step_model_dir(tmp_path, 3), meta={"step": 3})
    assert out == tmp_path / "models" / "step-3"
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer_config.json",
        "generation_config.json",
        COMPLETE,
    ):
        assert (out / name).is_file(), name
    assert json.loads((out / "ptr_ray_export.json").read_text())["step"] == 3
    saved = load_file(out / "model.safetensors")
    for k, v in saved.items():
        assert v.dtype == torch.bfloat16 and torch.equal(v, sd[k].to(torch.bfloat16)), k
    with pytest.raises(ExportError, match="step 3 does not match") as info:
        export_state_dict(
            {"nope": torch.zeros(1)}, tiny_model_dir, tmp_path / "bad", origin="step 3"
        )
    assert str(tiny_model_dir) in str(info.value) and "base_model" in str(info.value)
    assert not (tmp_path / "bad").exists()


def test_weights_of_another_size_are_one_export_error(tiny_model_dir, tmp_path):
    """A wrong base_model of the same family: torch refuses the shapes even with strict off;
    the error is one ptr-ray line naming checkpoint, base model and tensor, not a bug."""
    from transformers import AutoModelForCausalLM

    sd = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    sd = {k: v.clone() for k, v in sd.items()}
    w = sd["model.embed_tokens.weight"]
    sd["model.embed_tokens.weight"] = torch.zeros(w.shape[0], w.shape[1] * 2)
    ckpt = str(tmp_path / "run" / "checkpoint_step0000004")
    with pytest.raises(ExportError) as info:
        export_state_dict(sd, tiny_model_dir, tmp_path / "out", origin=ckpt)
    msg = str(info.value)
    assert "\n" not in msg and not isinstance(info.value, RuntimeError)
    assert msg.startswith(f"checkpoint {ckpt} does not match {tiny_model_dir}: size mismatch")
    assert "model.embed_tokens.weight" in msg and "base_model" in msg
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [b"", b"not a torch file", b"PK\x03\x04truncated"])
def test_damaged_checkpoint_file_is_one_export_error_naming_it(tmp_path, content):
    tag = tmp_path / "checkpoint_step0000002" / "ds"
    tag.mkdir(parents=True)
    states = tag / "mp_rank_00_model_states.pt"
    states.write_bytes(content)
    with pytest.raises(ExportError) as info:
        consolidated_state_dict(tmp_path / "checkpoint_step0000002")
    msg = str(info.value)
    assert msg.startswith(f"{states}: not a readable DeepSpeed checkpoint") and "\n" not in msg
    assert "remove it" in msg
    torch.save({"no_module": 1}, states)  # a torch file, but not a DeepSpeed checkpoint
    with pytest.raises(ExportError, match="KeyError"):
        consolidated_state_dict(tmp_path / "checkpoint_step0000002")
    with pytest.raises(ExportError, match="holds no DeepSpeed checkpoint tag 'ds'"):
        consolidated_state_dict(tmp_path)


_ZERO3_SCRIPT = textwrap.dedent("""
    import os, sys, torch, deepspeed
    from transformers import AutoModelForCausalLM
    from ptr_ray.train.export import live_state_dict
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0")
    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
    want = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3},
           "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
    assert engine.module.model.embed_tokens.weight.numel() == 0, "ZeRO-3 did not partition"
    sd = live_state_dict(engine, 3, rank=0)
    assert set(sd) >= set(want) - {"lm_head.weight"}, sorted(set(want) - set(sd))[:5]
    for k, v in sd.items():
        assert torch.equal(v.float(), want[k]), k
    print("GATHERED", len(sd))
""")


@pytest.mark.integration
def test_zero3_live_state_dict_gathers_the_partitioned_weights(tiny_model_dir, tmp_path):
    """ZeRO-3 keeps only partitions on each rank: the gather rebuilds the full weights (one
    process, gloo; in a subprocess so no process group outlives the test)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "zero3.py"
    script.write_text(_ZERO3_SCRIPT)
    res = subprocess.run(
        [sys.executable, str(script), str(tiny_model_dir), str(port)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert res.returncode == 0 and "GATHERED" in res.stdout, res.stdout[-2000:] + res.stderr[-4000:]
