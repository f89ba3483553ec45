"""Ray Train + DeepSpeed end to end on the tiny model: kill-and-resume, rerun-resumes (and an
extended rerun), export -> vLLM. metrics.jsonl holds each step once after every resume.

Slow (each ``fit()`` has ~20-30 s fixed cost), so few and small: 2 CPU workers, ZeRO-2,
6 optimizer steps. Rank 0 is SIGKILLed from outside (conftest.RankZeroKiller) after the
controller registered a checkpoint and rank 0 logged a later step; which checkpoint that is
depends on timing, so the tests check the resume invariants rather than fixed step lists.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ptr_ray.config import TrainConfig, load_config
from ptr_ray.train.resume import TrainConfigChanged
from ptr_ray.train.worker import STATE_FILE as STATE

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "ptr_small"


def _cfg(model: Path, out: Path, **over) -> TrainConfig:
    base = [
        f"model={model}",
        f"dataset={FIXTURE}",
        f"output_dir={out}",
        "max_length=512",
        "epochs=2",
        "max_steps=6",
        "checkpoint_every=2",
        "keep_checkpoints=5",
        "progress=false",
        "optim.lr=1e-3",
        "optim.warmup_steps=1",
        "loss.schedule=constant",
    ]
    return load_config(
        TrainConfig,
        ROOT / "jobs" / "configs" / "train_local.yaml",
        base + [f"{k}={v}" for k, v in over.items()],
    )


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_killed_worker_resumes_and_exported_model_generates_with_vllm(
    ray_local, tiny_model_dir, tmp_path, kill_rank_zero
):
    from ptr_ray.train.trainer import run_train

    out = tmp_path / "run"
    killer = kill_rank_zero(out)
    model_dir = run_train(_cfg(tiny_model_dir, out, max_failures=1, export_steps="[1,6]"))
    killer.stop()
    assert killer.error is None, killer.error
    kill = killer.kill
    assert kill is not None, "the run finished before rank 0 could be killed"
    rows = _metrics(out)
    # first attempt 1..m (m: the step rank 0 had logged when killed) -> restarted from the
    # checkpoint c the controller had registered (2 <= c < m): c+1..6, so c+1..m are replayed.
    # Typically c=2 and m=3 (what a fixed kill after step 3 gave).
    attempts = killer.attempts()
    c, m = kill.registered_step, kill.logged_step
    assert attempts == [list(range(1, m + 1)), list(range(c + 1, 7))], (kill, attempts)
    assert c % 2 == 0 and c < m
    # metrics.jsonl holds each step once: the lines up to the checkpoint as they were, the
    # replayed steps' lines replaced by the resumed attempt's
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert rows[:c] == list(kill.rows[:c])
    before, after = kill.rows[c], rows[c]
    assert before["step"] == after["step"] == c + 1
    assert after["time"] > kill.rows[-1]["time"]  # logged by the resumed attempt
    # same weights, optimizer state and data position: step c+1 is replayed exactly
    assert before["tokens"] == after["tokens"]
    assert after["loss"] == pytest.approx(before["loss"], rel=1e-4)
    assert after["lr"] == pytest.approx(before["lr"])
    for r in rows:
        assert {
            "loss_ce",
            "loss_consistency",
            "loss_confidence",
            "tokens_per_s",
            "step_time_s",
        } <= r.keys()
    assert rows[-1]["loss_ce"] < rows[0]["loss_ce"]  # it learns
    stats = json.loads((out / "encode_stats.json").read_text())
    assert stats["episodes"] == 24 and stats["total_steps"] == 6

    # export: bf16 safetensors + tokenizer + chat template + generation config, vLLM loads it
    assert model_dir == out / "model"
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer_config.json",
        "generation_config.json",
    ):
        assert (model_dir / name).is_file(), name
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"
    from ptr_ray.config import EngineConfig, SamplingConfig
    from ptr_ray.engine import VLLMEngine

    eng = VLLMEngine(EngineConfig(model=str(model_dir), max_model_len=512, max_num_seqs=4))
    try:
        assert eng.tokenizer.chat_template
        gen = eng.generate(
            [[{"role": "user", "content": "What is 2 + 3?"}]], SamplingConfig(max_tokens=8)
        )
        assert gen[0].completions[0].tokens > 0
    finally:
        eng.close()

    # export_steps: models/step-<N>/ written during training, the layout of model/; step 1
    # (before the kill) differs from step 6, which is the final model to the bit
    from safetensors.torch import load_file

    step1, step6 = out / "models" / "step-1", out / "models" / "step-6"
    assert sorted(p.name for p in step1.iterdir()) == sorted(p.name for p in model_dir.iterdir())
    assert json.loads((step1 / "ptr_ray_export.json").read_text())["step"] == 1
    assert json.loads((step6 / "config.json").read_text()) == cfg
    final, at6, at1 = (load_file(d / "model.safetensors") for d in (model_dir, step6, step1))
    assert final.keys() == at6.keys() == at1.keys()
    assert all(torch.equal(final[k], at6[k]) for k in final)
    assert not all(torch.equal(final[k], at1[k]) for k in final)
    assert sorted(p.name for p in (out / "models").iterdir()) == ["step-1", "step-6"]


def test_second_run_on_same_output_folder_resumes(
    ray_local, tiny_model_dir, tmp_path, kill_rank_zero
):
    from ptr_ray.train.trainer import run_train

    out = tmp_path / "run"
    killer = kill_rank_zero(out)
    with pytest.raises(RuntimeError, match="training failed"):  # max_failures=0: no restart
        run_train(_cfg(tiny_model_dir, out, max_failures=0, export="false"))
    killer.stop()
    assert killer.error is None, killer.error
    kill = killer.kill
    assert kill is not None, "the run finished before rank 0 could be killed"
    first = [r["step"] for r in _metrics(out)]
    assert first == list(range(1, kill.logged_step + 1))
    # the killed run left checkpoint c registered (the one it had when rank 0 died)
    c = killer.registered_step()
    assert c == kill.registered_step and c % 2 == 0 and c < kill.logged_step
    run_train(_cfg(tiny_model_dir, out, max_failures=0, export="false"))
    rows = _metrics(out)
    # the second run goes on right after that checkpoint; metrics.jsonl keeps each step once
    # (the lines up to c as they were, c+1..m replaced by the second run's)
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert rows[:c] == list(kill.rows[:c])
    assert all(r["time"] > kill.rows[-1]["time"] for r in rows[c:])
    state = json.loads((out / "ray" / "train" / "checkpoint_step0000006" / STATE).read_text())
    assert state == {"step": 6, "total_steps": 6, "done": True, "tag": "ds"}
    second = rows

    # a change that alters the run (the learning rate) is refused before anything starts,
    # naming the key with both values; the folder is left as it was
    with pytest.raises(TrainConfigChanged, match=r"optim\.lr: 0\.001 -> 0\.01"):
        run_train(_cfg(tiny_model_dir, out, max_failures=0, export="false", **{"optim.lr": 0.01}))
    assert _metrics(out) == second
    assert "lr: 0.001" in (out / "train_config.yaml").read_text()

    # a third run with a key that may change on resume (max_steps raised: the run is
    # extended) resumes from the step-6 checkpoint and appends steps 7 and 8 only
    run_train(_cfg(tiny_model_dir, out, max_failures=0, export="false", max_steps=8, epochs=3))
    rows = _metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert rows[:6] == second  # the first six lines untouched
    assert json.loads((out / "encode_stats.json").read_text())["total_steps"] == 8
    state = json.loads((out / "ray" / "train" / "checkpoint_step0000008" / STATE).read_text())
    assert state == {"step": 8, "total_steps": 8, "done": True, "tag": "ds"}
