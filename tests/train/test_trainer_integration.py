"""Ray Train + DeepSpeed end to end on the tiny model: kill-and-resume, rerun-resumes, export -> vLLM.

Slow (each ``fit()`` has ~20-30 s fixed cost), so few and small: 2 CPU workers, ZeRO-2,
6 optimizer steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptr_ray.config import TrainConfig, load_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "ptr_small"


def _cfg(model: Path, out: Path, **over) -> TrainConfig:
    base = [
        f"model={model}", f"dataset={FIXTURE}", f"output_dir={out}", "max_length=512",
        "epochs=2", "max_steps=6", "checkpoint_every=2", "keep_checkpoints=5", "progress=false",
        "optim.lr=1e-3", "optim.warmup_steps=1", "loss.schedule=constant",
    ]
    return load_config(TrainConfig, ROOT / "jobs" / "configs" / "train_local.yaml",
                       base + [f"{k}={v}" for k, v in over.items()])


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_killed_worker_resumes_and_exported_model_generates_with_vllm(ray_local, tiny_model_dir, tmp_path):
    from ptr_ray.train.trainer import run_train

    out = tmp_path / "run"
    model_dir = run_train(_cfg(tiny_model_dir, out, fail_at_step=3, max_failures=1))
    assert (out / ".fail_at_step_3.done").is_file()  # the hook really killed rank 0 once
    rows = _metrics(out)
    steps = [r["step"] for r in rows]
    # first attempt 1,2,3 -> killed after 3 -> restarted from the step-2 checkpoint: 3,4,5,6
    assert steps == [1, 2, 3, 3, 4, 5, 6]
    before, after = rows[2], rows[3]
    # same weights, optimizer state and data position: step 3 is replayed exactly
    assert before["tokens"] == after["tokens"]
    assert after["loss"] == pytest.approx(before["loss"], rel=1e-4)
    assert after["lr"] == pytest.approx(before["lr"])
    for r in rows:
        assert {"loss_ce", "loss_consistency", "loss_confidence", "tokens_per_s", "step_time_s"} <= r.keys()
    assert rows[-1]["loss_ce"] < rows[0]["loss_ce"]  # it learns
    stats = json.loads((out / "encode_stats.json").read_text())
    assert stats["episodes"] == 24 and stats["total_steps"] == 6

    # export: bf16 safetensors + tokenizer + chat template + generation config, vLLM loads it
    assert model_dir == out / "model"
    for name in ("model.safetensors", "config.json", "tokenizer_config.json", "generation_config.json"):
        assert (model_dir / name).is_file(), name
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"
    from ptr_ray.config import EngineConfig, SamplingConfig
    from ptr_ray.engine import VLLMEngine

    eng = VLLMEngine(EngineConfig(model=str(model_dir), max_model_len=512, max_num_seqs=4))
    try:
        assert eng.tokenizer.chat_template
        gen = eng.generate([[{"role": "user", "content": "What is 2 + 3?"}]],
                           SamplingConfig(max_tokens=8))
        assert gen[0].completions[0].tokens > 0
    finally:
        eng.close()


def test_second_run_on_same_output_folder_resumes(ray_local, tiny_model_dir, tmp_path):
    from ptr_ray.train.trainer import run_train

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="training failed"):
        run_train(_cfg(tiny_model_dir, out, fail_at_step=4, max_failures=0, export="false"))
    first = _metrics(out)
    assert [r["step"] for r in first] == [1, 2, 3, 4]
    run_train(_cfg(tiny_model_dir, out, max_failures=0, export="false"))
    rows = _metrics(out)
    # the checkpoint at step 4 was saved before the kill: the second run goes on at 5
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    state = json.loads(next((out / "ray" / "train").glob("checkpoint_step0000006/train_state.json")).read_text())
    assert state == {"step": 6, "total_steps": 6, "done": True, "tag": "ds"}
