"""``ptr-ray experiment``: the paper's comparison, run and analysed under a fixed protocol.

build (or reuse ``dataset``) -> hold out a split training never sees -> train PTR and IFT on
the rest (same TrainConfig but the mode) -> evaluate base / IFT / PTR with each refine
instruction, on the benchmarks and the held-out split -> paired tests of the hypotheses ->
``report.md``, ``accuracy_by_round.png``, ``items.csv``, ``hypotheses.json``.

Layout of ``output_dir``::

    dataset/            the built dataset (absent when ``dataset`` names an existing one)
    dataset-train/      the training split (what both training runs read) + split.json
    heldout.jsonl       the held-out items as an eval task (query -> strong answer)
    train-ptr/ train-ift/     (train-ptr/models/step-<N>/ with emergence.enabled)
    eval/instruction-1/ ... one evaluation per refine instruction (1 = primary)
    eval/emergence/         the step models, round by round (emergence.enabled)
    report.md accuracy_by_round.png items.csv hypotheses.json config.yaml
    emergence.csv emergence.png   (emergence.enabled)

Resumable like ``ptr-ray run``: a finished stage whose saved config matches is reused (the
split is rewritten only when its content changes, and then old training runs are set aside);
evaluation reuses its per-(method, task) results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from pathlib import Path

from ptr_ray.config import (
    EvalConfig,
    EvalMethodConfig,
    EvalTaskConfig,
    ExperimentConfig,
    dump_config,
)
from ptr_ray.errors import PtrRayValueError
from ptr_ray.eval.report import EvalReport
from ptr_ray.experiment.analysis import analyse
from ptr_ray.experiment.emergence import (
    EmergencePoint,
    emergence_eval_config,
    emergence_points,
    markdown_section,
    primary_ends,
    write_emergence,
)
from ptr_ray.experiment.report import InstructionRun, write_experiment_report
from ptr_ray.fsutil import atomic_dir, atomic_write
from ptr_ray.pipeline import dataset_finished, same_config
from ptr_ray.records import FORMAT_VERSION, META_FILE, STATS_FILE, Record, read_records

log = logging.getLogger(__name__)

SPLIT_FILE = "split.json"
HELDOUT_FILE = "heldout.jsonl"


class ExperimentError(PtrRayValueError):
    """An experiment that cannot run as configured; the message says why in one line."""


def _stage(n: int, total: int, name: str) -> None:
    from ptr_ray.ray_utils import log_dashboard

    log.info("=" * 20 + f" [{n}/{total}] {name} " + "=" * 20)
    log_dashboard()  # the URL again at every stage: a long run's top lines scroll away


# ----------------------------------------------------------------------------- dataset


def build_dataset(cfg: ExperimentConfig, root: Path) -> Path:
    """The built dataset: ``cfg.dataset`` as given, or ``root/dataset`` built (or reused)."""
    if cfg.dataset:
        path = Path(cfg.dataset).expanduser().resolve()
        read_records(path)  # fails now, with the file and row, if it is not a dataset
        log.info("using the existing dataset %s", path)
        return path
    from ptr_ray.datagen.dataflow import run_build

    dataset = root / "dataset"
    build = cfg.build.model_copy(
        update={"output": cfg.build.output.model_copy(update={"path": str(dataset)})}
    )
    if dataset_finished(dataset) and same_config(dataset / "config.yaml", build):
        log.info("dataset %s is finished with this config; reusing it", dataset)
        return dataset
    run_build(build)  # new, interrupted or reconfigured: the build resumes on its own terms
    if not dataset_finished(dataset):
        raise ExperimentError(
            f"the build wrote no records into {dataset}; see its {STATS_FILE} "
            "and rejects file for why every row was dropped"
        )
    return dataset


def split_records(
    records: list[Record], cfg: ExperimentConfig
) -> tuple[list[Record], list[Record]]:
    """(train, held-out): a seeded sample of the PTR rows (whose answer is the strong model's)
    is held out; SFT rows always train. Independent of file order: records are sorted by id."""
    records = sorted(records, key=lambda r: r.id)
    if not cfg.heldout.enabled:
        return records, []
    candidates = [r.id for r in records if r.kind == "ptr"]
    h = cfg.heldout
    k = h.n if h.n is not None else max(1, round((h.fraction or 0.0) * len(candidates)))
    if k >= len(records) or k > len(candidates):
        raise ExperimentError(
            f"heldout asks for {k} of {len(candidates)} PTR records ({len(records)} in all); "
            "training would be left without data. Build more, or lower heldout.n/fraction"
        )
    held = set(random.Random(h.seed).sample(candidates, k))
    return [r for r in records if r.id not in held], [r for r in records if r.id in held]


def write_split(cfg: ExperimentConfig, dataset: Path, root: Path) -> tuple[Path, Path | None, bool]:
    """Write ``dataset-train/`` and ``heldout.jsonl``; returns (train dir, held-out file, changed).

    The split is rewritten only when its content differs from what is on disk, so a resumed
    run keeps the training runs that read it; ``changed`` tells the caller they are stale.
    """
    train, held = split_records(read_records(dataset), cfg)
    train_dir, held_path = root / "dataset-train", root / HELDOUT_FILE
    rows = [json.dumps(r.model_dump(mode="json"), ensure_ascii=False) for r in train]
    items = [
        json.dumps({"id": r.id, "question": r.query, "answer": r.answer}, ensure_ascii=False)
        for r in held
    ]
    digest = hashlib.sha256("\n".join(rows + ["--"] + items).encode()).hexdigest()[:20]
    split_file = train_dir / SPLIT_FILE
    old = json.loads(split_file.read_text()).get("digest") if split_file.is_file() else None
    if old == digest and (not held or held_path.is_file()):
        log.info(
            "training split %s is up to date (%d train, %d held out)",
            train_dir,
            len(train),
            len(held),
        )
        return train_dir, held_path if held else None, False
    meta = {"format_version": FORMAT_VERSION}
    if (dataset / META_FILE).is_file():
        meta = {**json.loads((dataset / META_FILE).read_text()), **meta}
    with atomic_dir(train_dir) as tmp:
        (tmp / "data").mkdir()
        (tmp / "data" / "train.jsonl").write_text("".join(r + "\n" for r in rows))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        (tmp / SPLIT_FILE).write_text(
            json.dumps(
                {
                    "digest": digest,
                    "source": str(dataset),
                    "heldout": cfg.heldout.model_dump(),
                    "train": len(train),
                    "held_out": len(held),
                    "held_out_ids": [r.id for r in held],
                },
                indent=1,
            )
        )
    if held:
        atomic_write(held_path, "".join(i + "\n" for i in items))
    else:
        held_path.unlink(missing_ok=True)
    log.info(
        "wrote the training split %s (%d records) and %d held-out items",
        train_dir,
        len(train),
        len(held),
    )
    return train_dir, held_path if held else None, True


# ----------------------------------------------------------------------------- training


def train_models(cfg: ExperimentConfig, root: Path, split_changed: bool) -> dict[str, str]:
    """Train each mode on the training split, or reuse a finished run with the same config."""
    from ptr_ray.train.trainer import run_train

    models: dict[str, str] = {}
    for mode in cfg.modes:
        tcfg = cfg.train_config(mode)
        update: dict[str, object] = {
            "dataset": str(root / "dataset-train"),
            "output_dir": str(root / f"train-{mode}"),
        }
        if cfg.emergence.enabled and mode == cfg.emergence.mode:
            # The emergence curve's models (models/step-<N>/), written as training passes them.
            update["export_steps"] = sorted(set(tcfg.export_steps) | set(cfg.emergence.steps))
        tcfg = tcfg.model_copy(update=update)
        out = Path(tcfg.output_dir)
        if split_changed and out.exists():
            # Checkpoints of a run on other data must not be resumed on the new split.
            stale = Path(f"{out}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
            log.warning("the training split changed; moving the old %s run to %s", mode, stale)
            out.rename(stale)
        model_dir = out / "model"
        if (model_dir / "config.json").is_file() and same_config(
            out / "train_config.yaml", tcfg, tcfg.inert_keys()
        ):
            log.info("%s model %s exists for this config; reusing it", mode, model_dir)
        else:
            run_train(tcfg)
        models[mode] = str(model_dir)
    return models


# ----------------------------------------------------------------------------- evaluation


def eval_config(
    cfg: ExperimentConfig, root: Path, models: dict[str, str], heldout: Path | None, index: int
) -> EvalConfig:
    """The evaluation of one refine instruction: base + trained models, tasks + held-out."""
    methods = [EvalMethodConfig(name="base", model=cfg.base_model)]
    methods += [EvalMethodConfig(name=mode, model=models[mode]) for mode in cfg.modes]
    custom = list(cfg.eval.custom_tasks)
    if heldout is not None:
        custom.append(
            EvalTaskConfig(
                name=cfg.heldout.task,
                path=str(heldout),
                question_field="question",
                answer_field="answer",
                id_field="id",
                metric="similarity",
            )
        )
    prompt = cfg.eval.prompt.model_copy(
        update={"refine_instruction": cfg.refine_instructions[index]}
    )
    update: dict[str, object] = {
        "methods": methods,
        "custom_tasks": custom,
        "prompt": prompt,
        "output_dir": str(root / "eval" / f"instruction-{index + 1}"),
    }
    if index > 0 and cfg.robustness_tasks is not None:
        # The extra instructions only feed the descriptive prompt-robustness table.
        keep = set(cfg.robustness_tasks)
        update["tasks"] = [t for t in cfg.eval.tasks if t in keep]
        update["custom_tasks"] = [t for t in custom if t.name in keep]
    if index > 0 and cfg.robustness_limit is not None:
        update["limit"] = cfg.robustness_limit
    return cfg.eval.model_copy(update=update)


def evaluate_all(
    cfg: ExperimentConfig, root: Path, models: dict[str, str], heldout: Path | None
) -> list[InstructionRun]:
    """Every refine instruction's evaluation; the primary (first) one is tested, the others
    are reported descriptively (the protocol fixes the tests on the primary instruction)."""
    from ptr_ray.eval.runner import run_eval

    runs = []
    for index, instruction in enumerate(cfg.refine_instructions):
        log.info(
            "evaluating with refine instruction %d/%d: %r",
            index + 1,
            len(cfg.refine_instructions),
            instruction,
        )
        report = run_eval(eval_config(cfg, root, models, heldout, index))
        rows = []
        if index == 0:
            rows = analyse(
                report,
                cfg.hypotheses,
                cfg.alpha,
                cfg.correction,
                cfg.n_boot,
                cfg.seed,
                cfg.continuous_test,
            )
        runs.append(InstructionRun(index, instruction, report, rows))
    return runs


def evaluate_emergence(
    cfg: ExperimentConfig,
    root: Path,
    models: dict[str, str],
    heldout: Path | None,
    primary_report: EvalReport | None = None,
) -> list[EmergencePoint]:
    """The exported step models of the emergence run, round by round (descriptive). The base
    and final models' points come from ``primary_report`` when it answered the same items."""
    from ptr_ray.eval.runner import run_eval

    run_dir = root / f"train-{cfg.emergence.mode}"
    stats = run_dir / "encode_stats.json"
    if not stats.is_file() or not (run_dir / "model" / "config.json").is_file():
        raise ExperimentError(f"emergence: {run_dir} is not a finished training run")
    total = int(json.loads(stats.read_text())["total_steps"])
    steps = [s for s in cfg.emergence.steps if s < total]
    if len(steps) < len(cfg.emergence.steps):
        log.warning(
            "emergence: steps %s are not before the run's last step %d; the final model "
            "stands for step %d",
            sorted(set(cfg.emergence.steps) - set(steps)),
            total,
            total,
        )
    missing = [s for s in steps if not (run_dir / "models" / f"step-{s}").is_dir()]
    if missing:
        raise ExperimentError(
            f"emergence: {run_dir} has no exported model for step(s) {missing}; "
            "was it trained without emergence.enabled?"
        )
    primary = eval_config(cfg, root, models, heldout, 0)
    log.info(
        "emergence: evaluating steps %s and the final model (step %d) of the %s run",
        steps,
        total,
        cfg.emergence.mode,
    )
    ends = primary_ends(cfg, primary, primary_report, total) if primary_report else None
    if ends is None:
        return emergence_points(run_eval(emergence_eval_config(cfg, primary, run_dir, total)))
    log.info("emergence: steps 0 and %d reuse the primary evaluation's results", total)
    middle = (
        run_eval(emergence_eval_config(cfg, primary, run_dir, total, ends=False)).results
        if steps
        else []
    )
    return emergence_points(EvalReport(ends + middle, rounds=primary.rounds))


def synthetic_notes(cfg: ExperimentConfig, dataset: Path, heldout: Path | None) -> list[str]:
    """What a reader must know about where the items and references come from."""
    strong = (
        "the source's reference answers (`strong.source: references`), no strong model"
        if cfg.build.strong.source == "references"
        else f"`{cfg.build.strong.model.model}`"
    )
    source = (
        f"the existing dataset `{dataset}`"
        if cfg.dataset
        else f"the dataset built here (weak: "
        f"{', '.join(f'`{m.model}`' for m in cfg.build.weak.models)}; strong: {strong})"
    )
    notes = [
        f"Training episodes are synthetic: weak-model thoughts and the build's final answers "
        f"from {source} (its config.yaml says where the answers came from)."
    ]
    if heldout is not None:
        notes.append(
            f"Task `{cfg.heldout.task}` holds out records of that dataset (never "
            "trained on); its reference is the dataset's final answer, not a human-checked "
            "one, and its score is embedding similarity (MiniLM) to that reference: it "
            "measures agreement with the reference, not correctness."
        )
    if cfg.synthetic_tasks:
        notes.append(f"Synthetic tasks (generated items): {', '.join(cfg.synthetic_tasks)}.")
    custom = {c.name for c in cfg.eval.custom_tasks}
    packaged = [t for t in cfg.eval.tasks if t not in custom and t not in cfg.synthetic_tasks]
    if packaged:
        notes.append(
            f"Packaged benchmark tasks ({', '.join(packaged)}) are scored against "
            f"their published gold labels; {cfg.eval.limit or 'all'} items per task."
        )
    notes += [f"Custom task `{t.name}` comes from `{t.path}`." for t in cfg.eval.custom_tasks]
    return notes


def run_experiment(cfg: ExperimentConfig) -> dict[str, str]:
    """Run (or resume) the whole experiment; returns the paths a user looks at next."""
    from ptr_ray.ray_utils import ray_session

    t0 = time.time()
    root = Path(cfg.output_dir).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, root / "config.yaml")  # the protocol is on disk before any number
    total = 5
    timings: dict[str, float] = {}
    with ray_session(cfg.ray):  # one Ray instance for every stage
        t = time.time()
        _stage(1, total, "dataset (Ray Data + weak/strong vLLM)")
        dataset = build_dataset(cfg, root)
        _stage(2, total, "held-out split")
        _, heldout, changed = write_split(cfg, dataset, root)
        timings["data"] = time.time() - t
        t = time.time()
        _stage(3, total, "train " + " and ".join(m.upper() for m in cfg.modes))
        models = train_models(cfg, root, changed)
        timings["train"] = time.time() - t
        t = time.time()
        _stage(
            4,
            total,
            f"evaluate {' / '.join(cfg.methods)} with "
            f"{len(cfg.refine_instructions)} refine instruction(s)",
        )
        runs = evaluate_all(cfg, root, models, heldout)
        emergence = None
        if cfg.emergence.enabled:
            emergence = evaluate_emergence(cfg, root, models, heldout, runs[0].report)
        timings["eval"] = time.time() - t
    _stage(5, total, "paired tests and report")
    paths = write_experiment_report(
        cfg, runs, root, synthetic_notes(cfg, dataset, heldout), plot=cfg.eval.plot
    )
    if emergence:
        paths.update(write_emergence(emergence, root, plot=cfg.eval.plot))
        report_md = Path(paths["markdown"])
        atomic_write(report_md, report_md.read_text() + "\n" + markdown_section(emergence) + "\n")
    timings["total"] = time.time() - t0
    atomic_write(root / "timings.json", json.dumps(timings, indent=2))
    print(f"\nExperiment finished in {timings['total'] / 60:.1f} min.")
    for row in runs[0].rows:
        print(
            f"  {row.hypothesis} {row.task:>16}: {row.a} vs {row.b}  effect {row.effect:+.3f}  "
            f"p_adj {row.p_adj if row.p_adj is not None else float('nan'):.4g}  {row.verdict}"
        )
    print(f"  report: {paths['markdown']}")
    return {
        "dataset": str(dataset),
        "eval": str(root / "eval"),
        **{k: str(v) for k, v in paths.items()},
        **models,
    }
