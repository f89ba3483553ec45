"""The runner's data stages without engines: build reuse, the held-out split, eval configs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ptr_ray.config import ConfigError, ExperimentConfig, dump_config, load_config
from ptr_ray.experiment import runner
from ptr_ray.records import read_records

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ptr_small"  # 20 ptr + 4 sft rows


def _cfg(tmp_path, *over: str) -> ExperimentConfig:
    return load_config(
        ExperimentConfig,
        None,
        [f"output_dir={tmp_path / 'run'}", "eval.tasks=[arc_challenge]", *over],
    )


def test_split_holds_out_ptr_rows_only_and_is_seeded(tmp_path):
    records = read_records(FIXTURE)
    cfg = _cfg(tmp_path, "heldout.fraction=0.25", "heldout.seed=3")
    train, held = runner.split_records(records, cfg)
    assert len(held) == 5 and all(r.kind == "ptr" for r in held)  # 25% of the 20 PTR rows
    assert len(train) == 19 and sum(r.kind == "sft" for r in train) == 4
    assert not {r.id for r in train} & {r.id for r in held}
    _, held2 = runner.split_records(list(reversed(records)), cfg)  # file order is irrelevant
    assert [r.id for r in held2] == [r.id for r in held]
    _, held3 = runner.split_records(records, _cfg(tmp_path, "heldout.n=2"))
    assert len(held3) == 2
    assert runner.split_records(records, _cfg(tmp_path, "heldout.enabled=false"))[1] == []
    with pytest.raises(runner.ExperimentError, match="training would be left without data"):
        runner.split_records(records, _cfg(tmp_path, "heldout.n=21"))


def test_write_split_files_and_resume(tmp_path):
    cfg = _cfg(tmp_path, "heldout.n=4")
    root = Path(cfg.output_dir)
    train_dir, held_path, changed = runner.write_split(cfg, FIXTURE, root)
    assert changed and held_path == root / "heldout.jsonl"
    train = read_records(train_dir)  # what training reads: a valid dataset folder
    items = [json.loads(line) for line in held_path.read_text().splitlines()]
    assert len(train) == 20 and len(items) == 4
    assert set(items[0]) == {"id", "question", "answer"}
    assert not {r.id for r in train} & {i["id"] for i in items}
    by_id = {r.id: r for r in read_records(FIXTURE)}
    assert all(by_id[i["id"]].answer == i["answer"] for i in items)  # the strong answer
    split = json.loads((train_dir / runner.SPLIT_FILE).read_text())
    assert split["held_out"] == 4 and sorted(split["held_out_ids"]) == sorted(
        i["id"] for i in items
    )

    mtime = (train_dir / "data" / "train.jsonl").stat().st_mtime_ns
    assert runner.write_split(cfg, FIXTURE, root)[2] is False  # same content: kept as it is
    assert (train_dir / "data" / "train.jsonl").stat().st_mtime_ns == mtime
    assert runner.write_split(_cfg(tmp_path, "heldout.n=5"), FIXTURE, root)[2] is True


def test_build_is_reused_when_finished_with_the_same_config(tmp_path, monkeypatch):
    calls = []

    def fake_build(build):
        out = Path(build.output.path)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIXTURE / "records.jsonl", out / "records.jsonl")
        (out / "stats.json").write_text(json.dumps({"status": "finished", "rows_out": 24}))
        dump_config(build, out / "config.yaml")
        calls.append(build)

    monkeypatch.setattr("ptr_ray.datagen.dataflow.run_build", fake_build)
    cfg = _cfg(tmp_path)
    root = Path(cfg.output_dir)
    assert runner.build_dataset(cfg, root) == root / "dataset"
    assert runner.build_dataset(cfg, root) == root / "dataset"
    assert len(calls) == 1
    runner.build_dataset(_cfg(tmp_path, "build.seed=1"), root)  # reconfigured: built again
    assert len(calls) == 2
    # An existing dataset is used as it is: no build.
    assert runner.build_dataset(_cfg(tmp_path, f"dataset={FIXTURE}"), root) == FIXTURE
    assert len(calls) == 2


def test_eval_config_per_instruction(tmp_path):
    cfg = _cfg(tmp_path, "refine_instructions=[First one., Second one.]")
    root = Path(cfg.output_dir)
    models = {"ptr": "/m/ptr", "ift": "/m/ift"}
    ecfg = runner.eval_config(cfg, root, models, root / "heldout.jsonl", 1)
    assert [(m.name, m.model) for m in ecfg.methods] == [
        ("base", cfg.base_model),
        ("ptr", "/m/ptr"),
        ("ift", "/m/ift"),
    ]
    assert ecfg.prompt.refine_instruction == "Second one."
    assert ecfg.output_dir == str(root / "eval" / "instruction-2")
    (task,) = ecfg.custom_tasks
    assert (task.name, task.metric, task.id_field) == ("heldout", "similarity", "id")
    assert cfg.train_config("ptr").prompt.refine_instruction == "First one."
    notes = runner.synthetic_notes(cfg, root / "dataset", root / "heldout.jsonl")
    assert any("not correctness" in n for n in notes)
    assert cfg.build.strong.model.model in notes[0]
    refs = _cfg(
        tmp_path,
        "build.strong.source=references",
        "build.sources=[{kind: synthetic, name: arith-train, limit: 8}]",
    )
    notes = runner.synthetic_notes(refs, root / "dataset", None)
    assert "strong.source: references" in notes[0]
    assert refs.build.strong.model.model not in notes[0]  # no model wrote those answers


def test_robustness_instructions_use_their_own_tasks_and_limit(tmp_path):
    cfg = _cfg(
        tmp_path,
        "refine_instructions=[First one., Second one.]",
        "robustness_tasks=[heldout]",
        "robustness_limit=7",
    )
    root = Path(cfg.output_dir)
    models = {"ptr": "/m/ptr", "ift": "/m/ift"}
    primary = runner.eval_config(cfg, root, models, root / "heldout.jsonl", 0)
    extra = runner.eval_config(cfg, root, models, root / "heldout.jsonl", 1)
    assert primary.tasks == cfg.eval.tasks and primary.limit == cfg.eval.limit
    assert extra.tasks == [] and [t.name for t in extra.custom_tasks] == ["heldout"]
    assert extra.limit == 7
    with pytest.raises(ConfigError, match="robustness_tasks names unknown"):
        _cfg(tmp_path, "robustness_tasks=[nope]")
