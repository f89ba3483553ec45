"""The GPU job configs describe one experiment: the model train_gpu.yaml fine-tunes is the one
the eval's base method (the Prompt baseline) and the pipeline start from, the dataset the
build writes is the one training reads, and the eval and serve configs read what training wrote.
A mismatch here makes every comparison meaningless without failing any job, so it is tested."""

from __future__ import annotations

from pathlib import Path

from ptr_ray.config import (
    BuildConfig,
    EvalConfig,
    PipelineConfig,
    ServeConfig,
    TrainConfig,
    load_config,
)

ROOT = Path(__file__).resolve().parents[1]
JOBS = ROOT / "jobs" / "configs"


def _short(model: str) -> str:
    """``Qwen/Qwen2.5-0.5B-Instruct`` -> ``qwen2.5-0.5b``: how a folder of its fine-tune is named."""
    name = model.rsplit("/", 1)[-1].lower()
    return name.removesuffix("-instruct")


def test_gpu_configs_share_one_base_model_and_dataset():
    train = load_config(TrainConfig, JOBS / "train_gpu.yaml")
    evalc = load_config(EvalConfig, JOBS / "eval_gpu.yaml")
    pipeline = load_config(PipelineConfig, JOBS / "pipeline_gpu.yaml")
    build = load_config(BuildConfig, JOBS / "build_gpu.yaml")

    methods = {m.name: m.model for m in evalc.methods}
    assert methods["base"] == train.model  # the Prompt baseline is the trained model's base
    assert pipeline.base_model == train.model
    assert build.weak.models[0].model == train.model  # weak thoughts: the base model's own
    assert pipeline.build.weak.models[0].model == train.model
    assert build.output.path == train.dataset
    # the eval's fine-tuned methods are what `ptr-ray train` writes (<output_dir>/model)
    assert methods[train.mode] == f"{train.output_dir}/model"
    assert Path(methods["ift"]).parent.name.endswith("ift")


def test_gpu_serve_config_serves_a_finetune_of_that_base():
    train = load_config(TrainConfig, JOBS / "train_gpu.yaml")
    serve = load_config(ServeConfig, ROOT / "serve_configs" / "gpu.yaml")
    model = serve.engine.model
    assert model == train.model or _short(train.model) in Path(model).name.lower(), (
        f"serve_configs/gpu.yaml serves {model!r}, not a fine-tune of {train.model!r}"
    )
