"""The evaluation through vLLM: the tiny model, 2 rounds, a few items of two tasks."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def test_vllm_two_rounds_two_tasks_via_cli(tmp_path, tiny_model_dir, capsys):
    from ptr_ray.cli import main

    out = tmp_path / "eval"
    rc = main(
        [
            "eval",
            f"methods=[{{name: tiny, model: {tiny_model_dir}}}]",
            "tasks=[gsm8k, arc_challenge]",
            "limit=3",
            "rounds=2",
            "sampling.max_tokens=24",
            "engine.backend=vllm",
            "engine.max_model_len=1024",
            "engine.dtype=float32",
            f"output_dir={out}",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert (
        "| tiny | gsm8k | exact | 3 |" in printed
        and "| tiny | arc_challenge | accuracy | 3 |" in printed
    )

    data = json.loads((out / "results.json").read_text())
    summary = data["summary"]
    assert {(s["task"], s["round"]) for s in summary} == {
        (t, k) for t in ("gsm8k", "arc_challenge") for k in (1, 2)
    }
    for res in data["results"]:
        for item in res["items"]:
            r1, r2 = item["rounds"]
            assert r1["tokens"] > 0 and r2["tokens"] > 0
            # round 2's prompt is round 1's conversation plus the answer and the instruction
            assert r2["prompt_tokens"] > r1["prompt_tokens"] + r1["tokens"] - 1
    # vLLM's prefix cache served part of the round-2 prompts (the shared conversation prefix)
    r2 = [s for s in summary if s["round"] == 2]
    assert all(s["cached_frac"] > 0 for s in r2)
    assert (out / "accuracy_by_round.png").stat().st_size > 10_000
    assert (out / "results" / "tiny" / "gsm8k.json").is_file()


def test_evaluation_inside_a_ray_task(tmp_path, tiny_model_dir, ray_local):
    """The cluster path (`ray:` set, as jobs/evaluate.py with eval_gpu.yaml): the whole
    evaluation runs in a Ray task holding the engine's resources; the driver writes the report."""
    from ptr_ray.config import EvalConfig
    from ptr_ray.eval.runner import run_eval

    cfg = EvalConfig.model_validate(
        {
            "methods": [{"name": "tiny", "model": str(tiny_model_dir)}],
            "tasks": ["arc_challenge"],
            "limit": 2,
            "rounds": 2,
            "engine": {"backend": "hf", "max_model_len": 1024},
            "sampling": {"max_tokens": 8},
            "output_dir": str(tmp_path / "o"),
            "ray": {"address": "auto"},
        }
    )
    report = run_eval(cfg)
    assert len(report.accuracy("tiny", "arc_challenge")) == 2
    r1, r2 = report.results[0].items[0].rounds
    assert r2.prompt_tokens > r1.prompt_tokens  # round 2 carried the conversation
    assert (tmp_path / "o" / "report.md").is_file()
    assert (tmp_path / "o" / "results" / "tiny" / "arc_challenge.json").is_file()
