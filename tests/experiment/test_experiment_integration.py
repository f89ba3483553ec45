"""``run_experiment`` end to end on the tiny model: train PTR and IFT for real (Ray Train +
DeepSpeed), evaluate with two refine instructions, test, report; then a re-run redoes nothing.

The dataset is the hand-written fixture (``dataset:``): a random tiny model writes blank turns,
which the build rightly rejects, and the build's own reuse is covered in test_runner.py and
tests/test_pipeline.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ptr_ray.config import ExperimentConfig, load_config

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ptr_small"


@pytest.mark.integration
def test_experiment_end_to_end_then_resume(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from ptr_ray.experiment.runner import run_experiment

    cfg = load_config(
        ExperimentConfig,
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            f"base_model={tiny_model_dir}",
            f"dataset={FIXTURE}",
            "heldout.n=3",
            "ray.address=local",
            "ray.num_cpus=8",
            "train.max_length=512",
            "train.max_steps=2",
            "train.checkpoint_every=2",
            "train.scaling.num_workers=1",
            "train.deepspeed.zero_stage=1",
            "train.progress=false",
            "eval.tasks=[arc_challenge]",
            "eval.limit=3",
            "eval.rounds=3",
            "eval.engine.backend=hf",
            "eval.engine.dtype=float32",
            "eval.engine.max_model_len=1024",
            "eval.sampling.max_tokens=8",
            "refine_instructions=[Please continue thinking and refine your answer., Check again.]",
            "n_boot=200",
        ],
    )
    out = run_experiment(cfg)
    root = tmp_path / "run"
    for mode in ("ptr", "ift"):
        assert (root / f"train-{mode}" / "model" / "config.json").is_file()
        saved = yaml.safe_load((root / f"train-{mode}" / "train_config.yaml").read_text())
        assert saved["mode"] == mode and saved["dataset"] == str(root / "dataset-train")
    md = (root / "report.md").read_text()
    assert md.index("## Protocol") < md.index("## Hypotheses")
    assert "| hyp. | task | metric | A vs B |" in md
    assert "### heldout (synthetic): similarity" in md and "### arc_challenge: accuracy" in md
    assert (root / "accuracy_by_round.png").is_file()
    hyps = json.loads((root / "hypotheses.json").read_text())
    primary = [h for h in hyps if h["instruction"] == 1]
    assert len(primary) == 8  # H1-H4 x (arc_challenge, heldout)
    assert all(h["verdict"] for h in primary)
    assert {h["n"] for h in primary if h["task"] == "heldout"} == {3}
    assert (root / "eval" / "instruction-2" / "results.json").is_file()
    assert len((root / "heldout.jsonl").read_text().splitlines()) == 3
    assert "report:" in capsys.readouterr().out

    # A second run reuses every finished stage: training or generating again would raise.
    def boom(*a, **k):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr("ptr_ray.train.trainer.run_train", boom)
    monkeypatch.setattr("ptr_ray.eval.runner.evaluate_task", boom)
    again = run_experiment(cfg)
    assert again == out
    assert json.loads((root / "hypotheses.json").read_text()) == hyps
