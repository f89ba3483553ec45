"""The end-to-end pipeline on the tiny model: every stage for real, then a resume that redoes nothing."""

import json

import pytest

from ptr_ray.config import ConfigError, PipelineConfig, load_config

QUERIES = [
    "Explain why the sky is blue in two sentences.",
    "Write a Python function that returns the sum of a list of numbers.",
    "What is the capital of France and why is it important?",
    "Natalia sold clips to her friends in April and May; how would you count them?",
    "Give three tips for writing clear technical documentation.",
    "How does a binary search work on a sorted list of numbers?",
]


def _cfg(tmp_path, tiny_model_dir) -> PipelineConfig:
    src = tmp_path / "queries.jsonl"
    src.write_text("".join(json.dumps({"query": q}) + "\n" for q in QUERIES))
    tiny = str(tiny_model_dir)
    # The data come from the real packaged weak model (a random tiny model writes blank turns,
    # which the build rightly rejects); the fine-tuned and evaluated model is the tiny one.
    engine = {"model": "builtin:smollm2-135m", "max_model_len": 1024, "num_cpus": 1}
    return load_config(
        PipelineConfig,
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            f"base_model={tiny}",
            "ray.address=local",
            "ray.num_cpus=8",
            f"build.sources=[{{kind: jsonl, path: {src}, field: query}}]",
            "build.clean.min_tokens=2",
            "build.dedupe.near=false",
            "build.decontaminate.enabled=false",
            f"build.weak.models=[{json.dumps(engine)}]",
            "build.weak.sampling.max_tokens=16",
            f"build.strong.model={json.dumps(engine)}",
            "build.strong.sampling.max_tokens=16",
            "build.strong.num_icl=0",
            "build.consistency.method=none",
            "build.sft.fraction=0.0",
            "train.max_length=512",
            "train.max_steps=2",
            "train.checkpoint_every=2",
            "train.scaling.num_workers=1",
            "train.deepspeed.zero_stage=1",
            "train.progress=false",
            "eval.tasks=[arc_challenge]",
            "eval.limit=3",
            "eval.rounds=2",
            "eval.engine.backend=hf",
            "eval.engine.dtype=float32",
            "eval.engine.max_model_len=1024",
            "eval.sampling.max_tokens=8",
        ],
    )


@pytest.mark.integration
def test_pipeline_end_to_end_then_resume(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from ptr_ray.pipeline import run_pipeline

    cfg = _cfg(tmp_path, tiny_model_dir)
    out = run_pipeline(cfg)
    stats = json.loads((tmp_path / "run" / "dataset" / "stats.json").read_text())
    assert stats["status"] == "finished" and stats["rows_out"] > 0
    for mode in ("ptr", "ift"):
        assert (tmp_path / "run" / f"train-{mode}" / "model" / "config.json").is_file()
    results = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    methods = {r["method"] for r in results["results"]}
    assert methods == {"base", "ptr", "ift"}
    assert (tmp_path / "run" / "eval" / "accuracy_by_round.png").is_file()
    printed = capsys.readouterr().out
    assert "ptr-ray serve" in printed and out["ptr"] in printed

    # A second run reuses every finished stage: building or training again would raise.
    def boom(*a, **k):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr("ptr_ray.datagen.dataflow.run_build", boom)
    monkeypatch.setattr("ptr_ray.train.trainer.run_train", boom)
    monkeypatch.setattr("ptr_ray.eval.runner.evaluate_task", boom)
    again = run_pipeline(cfg)
    assert again == out


def test_pipeline_config_errors_are_one_line():
    with pytest.raises(ConfigError, match="train.dataset is set by the pipeline"):
        load_config(PipelineConfig, None, ["train.dataset=x"])
    with pytest.raises(ConfigError, match="unknown config key 'train.nope'"):
        load_config(PipelineConfig, None, ["train.nope=1"])
    with pytest.raises(ConfigError, match="eval.rounds"):
        load_config(PipelineConfig, None, ["eval.rounds=0"])


def test_shipped_pipeline_configs_load():
    for name in ("pipeline_local", "pipeline_gpu"):
        cfg = load_config(PipelineConfig, f"jobs/configs/{name}.yaml")
        assert cfg.train_config("ptr").mode == "ptr"


def test_same_config_decides_reuse(tmp_path):
    from ptr_ray.config import BuildConfig, dump_config
    from ptr_ray.pipeline import same_config

    cfg = BuildConfig()
    saved = tmp_path / "config.yaml"
    assert not same_config(saved, cfg)
    dump_config(cfg, saved)
    assert same_config(saved, cfg)
    changed = cfg.model_copy(update={"seed": cfg.seed + 1})
    assert not same_config(saved, changed)
