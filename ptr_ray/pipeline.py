"""``ptr-ray run``: the whole of PTR in one command (and one ``ray job submit`` on a cluster).

build dataset -> train PTR and IFT -> evaluate base / IFT / PTR over N rounds -> table + plot.

The output folder is reused: a stage whose result is already there is skipped (the dataset's
``stats.json`` says ``finished``, a training run has exported ``model/``, evaluation reuses its
per-(method, task) results), and an interrupted stage resumes on its own terms (the build
skips ids already written, training restarts from its last checkpoint).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import yaml
from pydantic import BaseModel

from ptr_ray.config import EvalMethodConfig, PipelineConfig, dump_config
from ptr_ray.errors import PtrRayValueError
from ptr_ray.records import STATS_FILE, DatasetError, data_files

log = logging.getLogger(__name__)


def same_config(saved: Path, cfg: BaseModel, ignore: tuple[str, ...] = ()) -> bool:
    """Whether a stage's saved config equals the one it would run with now. A stage is reused
    only then: a user who raises the sample size or the steps gets a new run, not a stale one.
    ``ignore`` names further top-level keys that cannot change this stage's result."""
    if not saved.is_file():
        return False
    # How the stage reaches Ray (address, CPUs, the dashboard) never changes its result.
    old, new = yaml.safe_load(saved.read_text()), cfg.model_dump(mode="json")
    if isinstance(old, dict):
        for key in ("ray", *ignore):
            old.pop(key, None)
            new.pop(key, None)
    return bool(old == new)


def dataset_finished(folder: Path) -> bool:
    stats = folder / STATS_FILE
    if not stats.is_file():
        return False
    if json.loads(stats.read_text()).get("status") != "finished":
        return False
    try:
        return bool(data_files(folder))
    except DatasetError:
        return False


def _stage(n: int, total: int, name: str) -> None:
    from ptr_ray.ray_utils import log_dashboard

    log.info("=" * 20 + f" [{n}/{total}] {name} " + "=" * 20)
    log_dashboard()  # the URL again at every stage: a long run's top lines scroll away


def run_pipeline(cfg: PipelineConfig) -> dict[str, str]:
    """Run (or resume) every stage; returns the paths a user looks at next."""
    from ptr_ray.datagen.dataflow import run_build
    from ptr_ray.eval.runner import run_eval
    from ptr_ray.ray_utils import ray_session
    from ptr_ray.train.trainer import run_train

    t0 = time.time()
    root = Path(cfg.output_dir).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, root / "pipeline_config.yaml")
    total = 2 + len(cfg.modes)
    timings: dict[str, float] = {}

    # One Ray instance for every stage: each stage finds it initialized, uses it and leaves it
    # running; it stops when the pipeline is done (unless someone else had started it).
    with ray_session(cfg.ray):
        # 1. dataset
        _stage(1, total, "build the refinement dataset (Ray Data + weak/strong vLLM)")
        dataset = root / "dataset"
        t = time.time()
        dataset_changed = False
        build = cfg.build.model_copy(
            update={"output": cfg.build.output.model_copy(update={"path": str(dataset)})}
        )
        if dataset_finished(dataset) and same_config(dataset / "config.yaml", build):
            log.info("dataset %s is finished with this config; reusing it", dataset)
        else:  # new, interrupted or reconfigured: the build resumes, skipping ids already written
            run_build(build)
            stats = json.loads((dataset / STATS_FILE).read_text())
            dataset_changed = int(stats.get("rows_out") or 0) > 0
            if not dataset_finished(dataset):
                raise PtrRayValueError(
                    f"the build wrote no records into {dataset}; see its stats.json and "
                    "rejects file for why every row was dropped"
                )
        timings["build"] = time.time() - t

        # 2. training, one run per mode
        models: dict[str, str] = {}
        for i, mode in enumerate(cfg.modes, start=2):
            _stage(i, total, f"train {mode.upper()} (Ray Train + DeepSpeed)")
            tcfg = cfg.train_config(mode)
            tcfg = tcfg.model_copy(
                update={"dataset": str(dataset), "output_dir": str(root / f"train-{mode}")}
            )
            model_dir = Path(tcfg.output_dir) / "model"
            t = time.time()
            if dataset_changed and Path(tcfg.output_dir).exists():
                # Checkpoints of a run on the old data must not be resumed on the new data.
                stale = Path(f"{tcfg.output_dir}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
                log.warning("the dataset changed; moving the old %s run to %s", mode, stale)
                Path(tcfg.output_dir).rename(stale)
            if (model_dir / "config.json").is_file() and same_config(
                Path(tcfg.output_dir) / "train_config.yaml", tcfg
            ):
                log.info("%s model %s exists for this config; reusing it", mode, model_dir)
            else:
                run_train(tcfg)
            models[mode] = str(model_dir)
            timings[f"train_{mode}"] = time.time() - t

        # 3. evaluation: the base model with the refine instruction (the Prompt baseline),
        # then each trained model, through the same refinement loop. With ``eval.ray`` unset it
        # runs in this process; with it set, as a Ray task on this same instance.
        _stage(
            total,
            total,
            "evaluate base / " + " / ".join(m.upper() for m in cfg.modes) + " round by round",
        )
        methods = [EvalMethodConfig(name="base", model=cfg.base_model)]
        methods += [EvalMethodConfig(name=mode, model=path) for mode, path in models.items()]
        ecfg = cfg.eval.model_copy(update={"methods": methods, "output_dir": str(root / "eval")})
        t = time.time()
        run_eval(ecfg)
        timings["eval"] = time.time() - t
    timings["total"] = time.time() - t0

    (root / "timings.json").write_text(json.dumps(timings, indent=2))
    ptr_model = models.get("ptr") or next(iter(models.values()))
    print(
        f"\nPipeline finished in {timings['total'] / 60:.1f} min "
        f"({', '.join(f'{k} {v:.0f}s' for k, v in timings.items() if k != 'total')})."
    )
    print(f"  dataset:  {dataset}  (stats.json: rows in/out and drops by reason)")
    for name, path in models.items():
        print(f"  {name} model: {path}")
    print(f"  report:   {root / 'eval'}  (report.md, accuracy_by_round.png)")
    print("Serve the PTR model with N refinement rounds per request:")
    print(f"  ptr-ray serve --config serve_configs/local.yaml engine.model={ptr_model}")
    return {"dataset": str(dataset), "eval": str(root / "eval"), **models}
