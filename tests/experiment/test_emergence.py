"""Emergence (Figure 2 analogue): step models evaluated round by round, tabled and plotted."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from ptr_ray.config import ExperimentConfig, dump_config, load_config
from ptr_ray.eval.report import EvalReport
from ptr_ray.experiment import emergence, runner
from ptr_ray.experiment.runner import ExperimentError


def _cfg(tmp_path: Path, *over: str) -> ExperimentConfig:
    return load_config(
        ExperimentConfig,
        None,
        [f"output_dir={tmp_path / 'exp'}", "eval.tasks=[arc_easy, arith]", "eval.limit=50", *over],
    )


def test_eval_config_has_base_as_step_zero_and_the_step_models(tmp_path):
    cfg = _cfg(
        tmp_path,
        "emergence.enabled=true",
        "emergence.steps=[20, 10]",
        "emergence.tasks=[arith]",
        "emergence.limit=9",
    )
    root = Path(cfg.output_dir)
    primary = runner.eval_config(cfg, root, {"ptr": "/m/ptr", "ift": "/m/ift"}, None, 0)
    ecfg = emergence.emergence_eval_config(cfg, primary, root / "train-ptr")
    assert [(m.name, m.model) for m in ecfg.methods] == [
        ("step-0", cfg.base_model),
        ("step-10", str(root / "train-ptr" / "models" / "step-10")),
        ("step-20", str(root / "train-ptr" / "models" / "step-20")),
    ]
    assert ecfg.tasks == ["arith"] and ecfg.limit == 9
    assert ecfg.output_dir == str(root / "eval" / "emergence")
    assert ecfg.prompt.refine_instruction == cfg.refine_instructions[0]


def test_training_exports_the_emergence_steps(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, "emergence.enabled=true", "emergence.steps=[3, 6]")
    seen = {}

    def fake_train(tcfg):
        seen[tcfg.mode] = list(tcfg.export_steps)
        model = Path(tcfg.output_dir) / "model"
        model.mkdir(parents=True)
        (model / "config.json").write_text("{}")

    monkeypatch.setattr("ptr_ray.train.trainer.run_train", fake_train)
    runner.train_models(cfg, Path(cfg.output_dir), split_changed=False)
    assert seen == {"ptr": [3, 6], "ift": []}


def test_the_final_model_ends_the_curve_and_unreached_steps_are_left_out(tmp_path):
    cfg = _cfg(tmp_path, "emergence.enabled=true", "emergence.steps=[10, 20, 30]")
    root = Path(cfg.output_dir)
    primary = runner.eval_config(cfg, root, {"ptr": "/m/ptr", "ift": "/m/ift"}, None, 0)
    ecfg = emergence.emergence_eval_config(cfg, primary, root / "train-ptr", total_steps=20)
    assert [(m.name, m.model) for m in ecfg.methods] == [
        ("step-0", cfg.base_model),
        ("step-10", str(root / "train-ptr" / "models" / "step-10")),
        ("step-20", str(root / "train-ptr" / "model")),
    ]


def _finished_run(root: Path, total_steps: int) -> Path:
    run = root / "train-ptr"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    (run / "encode_stats.json").write_text(f'{{"total_steps": {total_steps}}}')
    return run


def test_missing_step_models_are_a_clear_error(tmp_path):
    cfg = _cfg(tmp_path, "emergence.enabled=true", "emergence.steps=[3]")
    root = Path(cfg.output_dir)
    with pytest.raises(ExperimentError, match="is not a finished training run"):
        runner.evaluate_emergence(cfg, root, {"ptr": "p", "ift": "i"}, None)
    _finished_run(root, total_steps=8)
    with pytest.raises(ExperimentError, match=r"no exported model for step\(s\) \[3\]"):
        runner.evaluate_emergence(cfg, root, {"ptr": "p", "ift": "i"}, None)


def test_points_table_and_plot(tmp_path, make_task_result):
    report = EvalReport(
        [
            make_task_result("step-0", "arc", [[1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]]),
            make_task_result("step-10", "arc", [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]]),
        ],
        rounds=3,
    )
    points = emergence.emergence_points(report)
    assert [(p.step, p.round, p.value) for p in points] == [
        (0, 1, 0.25),
        (0, 2, 0.25),
        (0, 3, 0.25),
        (10, 1, 0.25),
        (10, 2, 0.5),
        (10, 3, 0.75),
    ]
    md = emergence.markdown_section(points)
    assert "| 10 | 0.250" in md and "0.750 [" in md and "round 3" in md
    paths = emergence.write_emergence(points, tmp_path)
    rows = list(csv.DictReader(open(paths["emergence_csv"])))
    assert len(rows) == 6 and rows[-1]["step"] == "10" and float(rows[-1]["value"]) == 0.75
    assert paths["emergence_png"].stat().st_size > 1000


def _primary_report(make_task_result) -> EvalReport:
    return EvalReport(
        [
            make_task_result("base", "arith", [[0, 0], [0, 1], [0, 1]]),
            make_task_result("ptr", "arith", [[1, 0], [1, 0], [1, 1]]),
            make_task_result("ift", "arith", [[1, 1], [1, 1], [1, 1]]),
            make_task_result("ptr", "arc_easy", [[1, 1], [1, 1], [1, 1]]),
        ],
        rounds=3,
    )


def test_base_and_final_points_reuse_the_primary_evaluation(
    tmp_path, monkeypatch, make_task_result
):
    """Steps 0 and N are the base and the final PTR model on the primary evaluation's items:
    they are taken from it (renamed), and only the step models in between are generated."""
    cfg = _cfg(tmp_path, "emergence.enabled=true", "emergence.steps=[3]", "emergence.tasks=[arith]")
    root = Path(cfg.output_dir)
    run = _finished_run(root, total_steps=8)
    (run / "models" / "step-3").mkdir(parents=True)
    evaluated = []

    def fake_run_eval(ecfg):
        evaluated.append([m.name for m in ecfg.methods])
        return EvalReport([make_task_result("step-3", "arith", [[0, 1], [1, 1], [1, 1]])], 3)

    monkeypatch.setattr("ptr_ray.eval.runner.run_eval", fake_run_eval)
    models = {"ptr": str(run / "model"), "ift": "i"}
    points = runner.evaluate_emergence(cfg, root, models, None, _primary_report(make_task_result))
    assert evaluated == [["step-3"]]
    assert [(p.step, p.round, p.value) for p in points if p.round == 3] == [
        (0, 3, 0.5),
        (3, 3, 1.0),
        (8, 3, 1.0),
    ]
    assert {p.task for p in points} == {"arith"}


def test_ends_are_evaluated_again_when_the_items_differ(tmp_path, make_task_result):
    """Another emergence.limit means other items: nothing is borrowed."""
    cfg = _cfg(tmp_path, "emergence.enabled=true", "emergence.steps=[3]", "emergence.limit=9")
    root = Path(cfg.output_dir)
    primary = runner.eval_config(cfg, root, {"ptr": "p", "ift": "i"}, None, 0)
    report = _primary_report(make_task_result)
    assert emergence.primary_ends(cfg, primary, report, 8) is None
    same = _cfg(tmp_path, "emergence.enabled=true", "emergence.steps=[3]")
    ends = emergence.primary_ends(same, primary, report, 8)
    # arc_easy has no base result in this report: the caller must evaluate the ends itself.
    assert ends is None
    only_arith = _cfg(
        tmp_path, "emergence.enabled=true", "emergence.steps=[3]", "emergence.tasks=[arith]"
    )
    ends = emergence.primary_ends(only_arith, primary, report, 8)
    assert ends is not None and [(r.method, r.task) for r in ends] == [
        ("step-0", "arith"),
        ("step-8", "arith"),
    ]
    assert report.results[0].method == "base"  # the primary report is left as it was


def test_a_loss_ablation_retrains_ptr_only(tmp_path, monkeypatch):
    """IFT ignores the PTR loss section, so changing it (one factor) keeps the IFT model."""
    trained = []

    def fake_train(tcfg):
        trained.append(tcfg.mode)
        out = Path(tcfg.output_dir)
        (out / "model").mkdir(parents=True, exist_ok=True)
        (out / "model" / "config.json").write_text("{}")
        dump_config(tcfg, out / "train_config.yaml")

    monkeypatch.setattr("ptr_ray.train.trainer.run_train", fake_train)
    root = Path(_cfg(tmp_path).output_dir)
    runner.train_models(_cfg(tmp_path), root, split_changed=False)
    runner.train_models(_cfg(tmp_path), root, split_changed=False)
    assert trained == ["ptr", "ift"]  # both reused on the second call
    runner.train_models(_cfg(tmp_path, "train.loss.confidence=final"), root, split_changed=False)
    assert trained == ["ptr", "ift", "ptr"]
    runner.train_models(_cfg(tmp_path, "train.optim.lr=3e-5"), root, split_changed=False)
    assert trained == ["ptr", "ift", "ptr", "ptr", "ift"]
