"""The experiment's report files, written from the hand-made report."""

from __future__ import annotations

import csv
import json

import pytest

from ptr_ray.config import ConfigError, ExperimentConfig, load_config
from ptr_ray.errors import PtrRayValueError
from ptr_ray.experiment.analysis import analyse
from ptr_ray.experiment.report import InstructionRun, write_experiment_report


def _cfg(tmp_path) -> ExperimentConfig:
    return load_config(
        ExperimentConfig,
        None,
        [
            f"output_dir={tmp_path}",
            "eval.tasks=[arc_challenge]",
            "refine_instructions=[Please continue thinking and refine your answer., Check again.]",
            "n_boot=500",
        ],
    )


def test_report_files(tmp_path, report):
    cfg = _cfg(tmp_path)
    rows = analyse(report, cfg.hypotheses, cfg.alpha, cfg.correction, cfg.n_boot, cfg.seed)
    runs = [
        InstructionRun(0, cfg.refine_instructions[0], report, rows),
        InstructionRun(1, cfg.refine_instructions[1], report),  # descriptive only
    ]
    paths = write_experiment_report(cfg, runs, tmp_path, notes=["The data are made up."])

    md = paths["markdown"].read_text()
    # Protocol first, then results, hypotheses, robustness, the synthetic note.
    order = [
        "## Protocol",
        "## Results by round",
        "## Hypotheses",
        "## Prompt robustness",
        "## What is synthetic",
    ]
    positions = [md.index(h) for h in order]
    assert positions == sorted(positions)
    assert "| hyp. | task | metric | A vs B |" in md and "p adj." in md
    assert "**supported**" in md and "**not refuted**" in md
    assert "absence of evidence" in md and "Holm-Bonferroni" in md
    assert "> Check again." in md and "Descriptive only" in md
    assert "The data are made up." in md
    assert "### arc: accuracy" in md and "### heldout (synthetic): similarity" in md
    assert "paired bootstrap of the mean difference (500 resamples" in md
    assert md.count("| ptr | heldout (synthetic) | 8 | 0.425 [") == 2  # both instructions

    assert paths["plot"].is_file() and paths["plot"].stat().st_size > 0
    with open(paths["items_csv"], newline="") as f:
        items = list(csv.DictReader(f))
    # 2 instructions x (3 methods x (12 arc + 8 heldout) items) x 3 rounds
    assert len(items) == 2 * 3 * 20 * 3
    assert {"instruction", "method", "task", "item_id", "round", "accuracy", "similarity"} <= set(
        items[0]
    )
    hyps = json.loads(paths["hypotheses"].read_text())
    assert len(hyps) == 8 and {h["instruction"] for h in hyps} == {1}
    again = load_config(ExperimentConfig, paths["config"])
    assert again == cfg


def test_no_runs_is_a_one_line_value_error(tmp_path):
    with pytest.raises(PtrRayValueError, match="no evaluation runs to report") as info:
        write_experiment_report(_cfg(tmp_path), [], tmp_path / "out")
    assert "\n" not in str(info.value) and "refine_instructions" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_experiment_config_checks():
    with pytest.raises(ConfigError, match="round 3 > eval.rounds 2"):
        load_config(ExperimentConfig, None, ["eval.rounds=2"])
    with pytest.raises(ConfigError, match="method 'ift' is not evaluated"):
        load_config(ExperimentConfig, None, ["modes=[ptr]"])
    with pytest.raises(ConfigError, match="train.dataset is set by the experiment"):
        load_config(ExperimentConfig, None, ["train.dataset=x"])
    with pytest.raises(ConfigError, match="eval.methods is set by the experiment"):
        load_config(ExperimentConfig, None, ["eval.methods=[{name: a, model: b}]"])
    with pytest.raises(ConfigError, match="use refine_instructions"):
        load_config(ExperimentConfig, None, ["eval.prompt.refine_instruction=x"])
    with pytest.raises(ConfigError, match="clashes with an eval task"):
        load_config(ExperimentConfig, None, ["heldout.task=gsm8k"])
    with pytest.raises(ConfigError, match="unknown task"):
        load_config(
            ExperimentConfig,
            None,
            [
                "hypotheses=[{id: H1, statement: s, a: {method: ptr, round: 3}, "
                "b: {method: ptr, round: 1}, relation: greater, task: nope}]"
            ],
        )
    with pytest.raises(ConfigError, match="synthetic_tasks names unknown"):
        load_config(ExperimentConfig, None, ["synthetic_tasks=[nope]"])
    cfg = load_config(ExperimentConfig, None, ["synthetic_tasks=[gsm8k]"])
    assert cfg.synthetic == {"gsm8k", "heldout"} and cfg.continuous_test == "bootstrap"
    cfg = load_config(ExperimentConfig, None, ["modes=[ptr]", "hypotheses=[]"])
    assert cfg.methods == ["base", "ptr"]
    tcfg = cfg.train_config("ptr")
    assert tcfg.dataset.endswith("dataset-train") and tcfg.mode == "ptr"


def test_emergence_config_checks():
    with pytest.raises(ConfigError, match="needs emergence.steps"):
        load_config(ExperimentConfig, None, ["emergence.enabled=true"])
    with pytest.raises(ConfigError, match="emergence.mode 'ift' is not among modes"):
        load_config(
            ExperimentConfig,
            None,
            [
                "emergence.enabled=true",
                "emergence.steps=[5]",
                "emergence.mode=ift",
                "modes=[ptr]",
                "hypotheses=[]",
            ],
        )
    with pytest.raises(ConfigError, match="emergence.tasks names unknown"):
        load_config(ExperimentConfig, None, ["emergence.tasks=[nope]"])


def test_shipped_experiment_config_loads():
    cfg = load_config(ExperimentConfig, "jobs/configs/experiment_local.yaml")
    assert cfg.base_model == "builtin:smollm2-135m"
    assert [h.id for h in cfg.hypotheses] == ["H1", "H2", "H3", "H4"]
