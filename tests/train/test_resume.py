"""A rerun on an existing ``output_dir`` resumes only the same run (ptr_ray/train/resume.py).

Fast: no worker starts. The run in the folder is what :func:`prepare_output` recorded for it
(``train_config.yaml``, ``train_dataset.json``) plus a stand-in checkpoint folder; the real
resume (Ray Train + DeepSpeed, metrics.jsonl with each step once, an extended rerun, a refused
rerun) is in test_trainer_integration.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ptr_ray.config import ConfigError, TrainConfig, load_config
from ptr_ray.errors import PtrRayError
from ptr_ray.records import Record
from ptr_ray.train.packing import PLAN_VERSION
from ptr_ray.train.resume import (
    CONFIG_FILE,
    DATASET_FILE,
    GROW_ONLY,
    RESUMABLE_KEYS,
    TrainConfigChanged,
    _flatten,
    config_changes,
    dataset_digest,
    prepare_output,
    trim_metrics,
)
from ptr_ray.train.trainer import TrainingFailed

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "ptr_small"
DIGEST = "a" * 64
RUN = "train"


def _cfg(out: Path, *over: str) -> TrainConfig:
    cfg = load_config(TrainConfig, None, [f"dataset={FIXTURE}", f"output_dir={out}", *over])
    return cfg


def _previous_run(out: Path, *over: str, digest: str = DIGEST) -> TrainConfig:
    """A folder as a run leaves it: its identity files and a checkpoint under ray/train."""
    cfg = _cfg(out, *over)
    prepare_output(cfg, out, digest, str(out / "ray"), RUN)
    (out / "ray" / RUN / "checkpoint_step0000002").mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    return cfg


def _changes(old: TrainConfig, new: TrainConfig) -> list[str]:
    return [
        str(c) for c in config_changes(old.model_dump(mode="json"), new.model_dump(mode="json"))
    ]


# ----------------------------------------------------------------------------- the rule


def test_keys_that_change_the_math_are_changes(tmp_path):
    base = _cfg(tmp_path)
    assert _changes(base, base) == []
    assert _changes(base, _cfg(tmp_path, "optim.lr=1e-3")) == ["optim.lr: 1e-05 -> 0.001"]
    assert _changes(base, _cfg(tmp_path, "loss.lambdas=[0.6,0.2,0.2]", "model=builtin:x")) == [
        "loss.lambdas: [0.8, 0.1, 0.1] -> [0.6, 0.2, 0.2]",
        "model: builtin:smollm2-135m -> builtin:x",
    ]
    for key in ("seed=1", "scaling.num_workers=1", "deepspeed.zero_stage=3", "storage_path=s"):
        assert len(_changes(base, _cfg(tmp_path, key))) == 1, key


def test_resumable_keys_may_change(tmp_path):
    base = _cfg(tmp_path, "max_steps=6")
    changed = _cfg(
        tmp_path.parent / "moved",  # the folder itself may have been moved
        "max_steps=8",
        "epochs=2",
        "checkpoint_every=3",
        "keep_checkpoints=4",
        "log_every=5",
        "max_failures=3",
        "progress=false",
        "export=false",
        "export_steps=[2,4]",
        "gradient_checkpointing=true",
        "scaling.cpus_per_worker=2",
        "ray.address=auto",
        "on_config_change=move_aside",
        "dataset=elsewhere",  # the path; the content is compared by digest
    )
    assert _changes(base, changed) == []


def test_max_steps_and_epochs_only_grow(tmp_path):
    six = _cfg(tmp_path, "max_steps=6", "epochs=2")
    assert _changes(six, _cfg(tmp_path, "max_steps=4", "epochs=2")) == [
        "max_steps: 6 -> 4 (may only grow on resume)"
    ]
    assert _changes(six, _cfg(tmp_path, "max_steps=6", "epochs=1")) == [
        "epochs: 2 -> 1 (may only grow on resume)"
    ]
    unlimited = _cfg(tmp_path, "epochs=2")  # max_steps None: no limit, the largest
    assert _changes(six, unlimited) == []
    assert _changes(unlimited, six) == ["max_steps: null -> 6 (may only grow on resume)"]


def test_every_resumable_key_is_a_config_key():
    keys = _flatten(TrainConfig(dataset="d", output_dir="o").model_dump(mode="json"))
    for k in RESUMABLE_KEYS:
        assert any(key == k or key.startswith(k + ".") for key in keys), k
    assert set(GROW_ONLY) <= set(RESUMABLE_KEYS)


def test_on_config_change_values():
    assert TrainConfig(dataset="d", output_dir="o").on_config_change == "refuse"
    with pytest.raises(ConfigError, match="on_config_change"):
        load_config(TrainConfig, None, ["dataset=d", "output_dir=o", "on_config_change=keep"])


def test_dataset_digest_follows_content_and_order():
    a = Record(id="1", query="q1", answer="a1", thoughts=["t"])
    b = Record(id="2", query="q2", answer="a2")
    assert dataset_digest([a, b]) == dataset_digest([a.model_copy(), b.model_copy()])
    assert dataset_digest([a, b]) != dataset_digest([b, a])
    assert dataset_digest([a, b]) != dataset_digest([a, b.model_copy(update={"answer": "x"})])


# ----------------------------------------------------------------------------- the folder


def test_first_run_records_config_and_dataset(tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(out)
    prepare_output(cfg, out, DIGEST, str(out / "ray"), RUN)
    assert yaml.safe_load((out / CONFIG_FILE).read_text()) == cfg.model_dump(mode="json")
    assert json.loads((out / DATASET_FILE).read_text()) == {
        "path": str(FIXTURE),
        "sha256": DIGEST,
        "data_plan": PLAN_VERSION,  # the packing the steps refer to (ptr_ray/train/packing.py)
    }


def test_changed_lr_is_refused_naming_the_key_and_both_values(tmp_path):
    out = tmp_path / "run"
    _previous_run(out)
    saved = (out / CONFIG_FILE).read_text()
    with pytest.raises(TrainConfigChanged) as e:
        prepare_output(_cfg(out, "optim.lr=2e-5"), out, DIGEST, str(out / "ray"), RUN)
    msg = str(e.value)
    assert "\n" not in msg and str(out) in msg
    assert "optim.lr: 1e-05 -> 2e-05" in msg and "on_config_change=move_aside" in msg
    assert isinstance(e.value, PtrRayError)  # the CLI prints it as one line
    # nothing was touched: the old run can still be resumed with its own config
    assert (out / CONFIG_FILE).read_text() == saved
    assert (out / "ray" / RUN / "checkpoint_step0000002").is_dir()


def test_changed_dataset_content_is_a_change(tmp_path):
    out = tmp_path / "run"
    _previous_run(out)
    with pytest.raises(TrainConfigChanged, match=r"dataset content: sha256:aaaaaaaaaaaa -> "):
        prepare_output(_cfg(out), out, "b" * 64, str(out / "ray"), RUN)
    (out / DATASET_FILE).unlink()  # a folder without a digest: its data is unknown
    with pytest.raises(TrainConfigChanged, match=r"dataset content: unknown -> sha256:aaaa"):
        prepare_output(_cfg(out), out, DIGEST, str(out / "ray"), RUN)


def test_same_run_or_resumable_change_resumes(tmp_path):
    out = tmp_path / "run"
    _previous_run(out, "max_steps=6")
    prepare_output(_cfg(out, "max_steps=6"), out, DIGEST, str(out / "ray"), RUN)
    extended = _cfg(out, "max_steps=10", "log_every=2")
    prepare_output(extended, out, DIGEST, str(out / "ray"), RUN)
    assert (out / "ray" / RUN / "checkpoint_step0000002").is_dir()  # resumed, not moved
    assert yaml.safe_load((out / CONFIG_FILE).read_text())["max_steps"] == 10
    assert list(tmp_path.iterdir()) == [out]


def test_a_key_added_since_compares_as_its_default(tmp_path):
    out = tmp_path / "run"
    cfg = _previous_run(out)
    saved = yaml.safe_load((out / CONFIG_FILE).read_text())
    del saved["on_config_change"], saved["loss"]["confidence"]
    (out / CONFIG_FILE).write_text(yaml.safe_dump(saved))
    prepare_output(cfg, out, DIGEST, str(out / "ray"), RUN)  # no error


def test_unreadable_or_missing_saved_config_is_refused(tmp_path):
    out = tmp_path / "run"
    _previous_run(out)
    (out / CONFIG_FILE).write_text("optim: {lr: -1}\n")
    with pytest.raises(TrainConfigChanged, match="train_config.yaml: unreadable"):
        prepare_output(_cfg(out), out, DIGEST, str(out / "ray"), RUN)
    (out / CONFIG_FILE).unlink()  # checkpoints, but no saying which config made them
    with pytest.raises(TrainConfigChanged, match="train_config.yaml: missing .*holds checkpoints"):
        prepare_output(_cfg(out), out, DIGEST, str(out / "ray"), RUN)


def test_move_aside_renames_the_old_run_and_starts_afresh(tmp_path):
    out = tmp_path / "run"
    _previous_run(out)
    new = _cfg(out, "optim.lr=1e-3", "on_config_change=move_aside")
    prepare_output(new, out, DIGEST, str(out / "ray"), RUN)
    (old,) = [p for p in tmp_path.iterdir() if p != out]
    assert old.name.startswith("run.old-")
    assert yaml.safe_load((old / CONFIG_FILE).read_text())["optim"]["lr"] == 1e-5
    assert (old / "ray" / RUN / "checkpoint_step0000002").is_dir()
    assert (old / "metrics.jsonl").is_file()
    # the new folder holds only the new run's identity: nothing to restore, no old metrics
    assert sorted(p.name for p in out.iterdir()) == sorted([DATASET_FILE, CONFIG_FILE])
    assert yaml.safe_load((out / CONFIG_FILE).read_text())["optim"]["lr"] == 1e-3
    # a second move in the same second gets its own name
    second = _cfg(out, "seed=5", "on_config_change=move_aside")
    prepare_output(second, out, DIGEST, str(out / "ray"), RUN)
    assert len(list(tmp_path.iterdir())) == 3


def test_move_aside_moves_checkpoints_kept_outside_the_output_folder(tmp_path):
    out, storage = tmp_path / "run", tmp_path / "storage"
    cfg = _cfg(out, f"storage_path={storage}")
    prepare_output(cfg, out, DIGEST, str(storage), RUN)
    (storage / RUN / "checkpoint_step0000002").mkdir(parents=True)
    new = _cfg(out, f"storage_path={storage}", "seed=1", "on_config_change=move_aside")
    with pytest.raises(TrainConfigChanged, match="seed: 0 -> 1"):
        prepare_output(
            new.model_copy(update={"on_config_change": "refuse"}), out, DIGEST, str(storage), RUN
        )
    prepare_output(new, out, DIGEST, str(storage), RUN)
    assert not (storage / RUN).exists()  # Ray Train finds no checkpoint to restore
    (moved,) = storage.iterdir()
    assert moved.name.startswith(f"{RUN}.old-") and (moved / "checkpoint_step0000002").is_dir()


def test_move_aside_cannot_rename_remote_checkpoints(tmp_path):
    out = tmp_path / "run"
    _previous_run(out, "storage_path=s3://bucket/runs")
    new = _cfg(out, "storage_path=s3://bucket/runs", "seed=1", "on_config_change=move_aside")
    with pytest.raises(TrainConfigChanged, match="remote storage s3://bucket/runs"):
        prepare_output(new, out, DIGEST, "s3://bucket/runs", RUN)
    assert (out / CONFIG_FILE).is_file()


def test_run_train_refuses_before_any_worker(tmp_path, tiny_model_dir, monkeypatch):
    """The entry point checks before Ray starts (a refused rerun costs seconds, not a fit)."""
    from ptr_ray.records import read_records
    from ptr_ray.train import trainer

    def no_ray(cfg):
        raise AssertionError("Ray was started for a refused run")

    monkeypatch.setattr(trainer, "_ensure_ray", no_ray)
    out = tmp_path / "run"
    over = [f"model={tiny_model_dir}", "max_length=512"]
    _previous_run(out, *over, digest=dataset_digest(read_records(FIXTURE)))
    saved = (out / CONFIG_FILE).read_text()
    with pytest.raises(TrainConfigChanged, match=r"loss\.lambdas: \[0\.8, 0\.1, 0\.1\] -> "):
        trainer.run_train(_cfg(out, *over, "loss.lambdas=[1,0,0]"))
    assert (out / CONFIG_FILE).read_text() == saved
    # the same config and dataset get past the check (to Ray, stopped here)
    with pytest.raises(AssertionError, match="Ray was started"):
        trainer.run_train(_cfg(out, *over))


def test_training_failed_is_a_one_line_ptr_ray_error():
    assert issubclass(TrainingFailed, PtrRayError) and issubclass(TrainingFailed, RuntimeError)


# ----------------------------------------------------------------------------- metrics.jsonl


def _lines(*steps: int) -> str:
    return "".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in steps)


def test_trim_metrics_keeps_each_step_once_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(_lines(1, 2, 3, 4, 5) + '{"step": 6, "lo')  # killed mid-line
    assert trim_metrics(path, 4) == 2
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3, 4]
    # a folder from before the rule (steps replayed after a resume): the later line is kept
    path.write_text(_lines(1, 2, 3) + '{"step": 3, "loss": 9}\n' + _lines(4))
    assert trim_metrics(path, 3) == 2
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["loss"] == 9
    assert trim_metrics(path, 0) == 3 and path.read_text() == ""  # a fresh start
    assert trim_metrics(tmp_path / "absent.jsonl", 3) == 0


def test_trim_metrics_leaves_a_clean_file_alone(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(_lines(1, 2))
    before = path.stat().st_mtime_ns
    assert trim_metrics(path, 2) == 0 and trim_metrics(path, 5) == 0
    assert path.stat().st_mtime_ns == before
