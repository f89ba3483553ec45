"""Emergence (the paper's Figure 2): when during training does refinement appear?

The PTR run exports a vLLM-loadable model at each of ``emergence.steps``
(``TrainConfig.export_steps`` writes ``train-<mode>/models/step-<N>/``). Each of those models,
with the base model as step 0, answers the emergence tasks over N rounds with the primary
refine instruction, through the ordinary evaluation stage (so results resume like any other
evaluation). The output is a table and a plot of the headline metric by training step, one
line per round: refinement has "emerged" once the later rounds' line sits above round 1's.
Descriptive only: no hypothesis is tested on these curves (the protocol tests the final model).
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

from ptr_ray.config import EvalConfig, EvalMethodConfig, ExperimentConfig
from ptr_ray.eval.report import EvalReport, TaskResult

log = logging.getLogger(__name__)


@dataclass
class EmergencePoint:
    """The headline metric of one (step, task, round)."""

    step: int
    task: str
    metric: str
    round: int
    n: int
    value: float
    ci_low: float
    ci_high: float


def step_method(step: int) -> str:
    """The evaluation method name of a step's model (step 0 is the base model)."""
    return f"step-{step}"


def emergence_eval_config(
    cfg: ExperimentConfig,
    primary: EvalConfig,
    run_dir: Path,
    total_steps: int | None = None,
    ends: bool = True,
) -> EvalConfig:
    """The evaluation of every exported step model, the base model as step 0 and, given the
    run's ``total_steps``, its final ``model/`` as the last point (steps past the end, which
    training never reached, are left out), so the curve always ends at the model that the
    hypotheses were tested on, whatever the built dataset's size made the step count.
    ``ends=False`` leaves the base and final models out: the caller takes their results from
    the primary evaluation (:func:`primary_ends`), which already answered the same items."""
    em = cfg.emergence
    steps = [s for s in em.steps if total_steps is None or s < total_steps]
    methods = [EvalMethodConfig(name=step_method(0), model=cfg.base_model)] if ends else []
    methods += [
        EvalMethodConfig(name=step_method(s), model=str(run_dir / "models" / f"step-{s}"))
        for s in steps
    ]
    if total_steps is not None and ends:
        methods.append(
            EvalMethodConfig(name=step_method(total_steps), model=str(run_dir / "model"))
        )
    update: dict[str, object] = {
        "methods": methods,
        "output_dir": str(Path(primary.output_dir).parent / "emergence"),
    }
    if em.tasks is not None:
        keep = set(em.tasks)
        update["tasks"] = [t for t in primary.tasks if t in keep]
        update["custom_tasks"] = [t for t in primary.custom_tasks if t.name in keep]
    if em.limit is not None:
        update["limit"] = em.limit
    return primary.model_copy(update=update)


def primary_ends(
    cfg: ExperimentConfig, primary: EvalConfig, report: EvalReport, total_steps: int
) -> list[TaskResult] | None:
    """The base model (step 0) and the final model (the last step) on the emergence tasks, taken
    from the primary instruction's evaluation instead of being generated again (two of the
    curve's points, a third of its cost at the default three steps). Only when that evaluation
    answered the very same items (same limit; prompt, sampling and rounds are the primary's by
    construction); ``None`` when anything is missing, and the caller evaluates them itself."""
    em = cfg.emergence
    if em.limit is not None and em.limit != primary.limit:
        return None
    tasks = [t for t in report.tasks if em.tasks is None or t in em.tasks]
    found = {(r.method, r.task): r for r in report.results}
    ends = [("base", 0), (em.mode, total_steps)]
    if not tasks or any((m, t) not in found for m, _ in ends for t in tasks):
        return None
    return [replace(found[(m, t)], method=step_method(step)) for m, step in ends for t in tasks]


def emergence_points(report: EvalReport) -> list[EmergencePoint]:
    """Headline metric per (step, task, round), in step order."""
    points = []
    for res in report.results:
        step = int(res.method.removeprefix("step-"))
        headline = res.metrics[0]
        for row in res.summary():
            if row.metric == headline:
                points.append(
                    EmergencePoint(
                        step,
                        res.task,
                        headline,
                        row.round,
                        row.n,
                        row.accuracy,
                        row.ci_low,
                        row.ci_high,
                    )
                )
    return sorted(points, key=lambda p: (p.task, p.step, p.round))


def markdown_section(points: list[EmergencePoint]) -> str:
    """The report's emergence section: one table per task, steps as rows, rounds as columns."""
    lines = [
        "## Emergence (Figure 2 analogue, descriptive)",
        "",
        "The PTR run's exported models (step 0 = the base model) over the refinement rounds, "
        "with the primary refine instruction; 95% intervals in brackets.",
        "",
    ]
    for task in dict.fromkeys(p.task for p in points):
        tp = [p for p in points if p.task == task]
        rounds = sorted({p.round for p in tp})
        lines += [
            f"**{task}** ({tp[0].metric}, n={tp[0].n})",
            "",
            "| step | " + " | ".join(f"round {r}" for r in rounds) + " |",
            "|---|" + "---|" * len(rounds),
        ]
        for step in sorted({p.step for p in tp}):
            cells = {p.round: p for p in tp if p.step == step}
            lines.append(
                f"| {step} | "
                + " | ".join(
                    f"{cells[r].value:.3f} [{cells[r].ci_low:.2f}, {cells[r].ci_high:.2f}]"
                    if r in cells
                    else "-"
                    for r in rounds
                )
                + " |"
            )
        lines.append("")
    return "\n".join(lines)


def write_emergence(
    points: list[EmergencePoint], out_dir: Path, plot: bool = True
) -> dict[str, Path]:
    """``emergence.csv`` and (with ``plot``) ``emergence.png``: metric by step, a line per round."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"emergence_csv": out_dir / "emergence.csv"}
    with open(paths["emergence_csv"], "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["step", "task", "metric", "round", "n", "value", "ci_low", "ci_high"])
        for p in points:
            w.writerow([p.step, p.task, p.metric, p.round, p.n, p.value, p.ci_low, p.ci_high])
    if plot and points:
        paths["emergence_png"] = _plot(points, out_dir / "emergence.png")
    return paths


def _plot(points: list[EmergencePoint], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(p.task for p in points))
    ncols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.4 * nrows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        tp = [p for p in points if p.task == task]
        for r in sorted({p.round for p in tp}):
            rp = sorted((p for p in tp if p.round == r), key=lambda p: p.step)
            ax.errorbar(
                [p.step for p in rp],
                [p.value for p in rp],
                yerr=[
                    [max(0.0, p.value - p.ci_low) for p in rp],
                    [max(0.0, p.ci_high - p.value) for p in rp],
                ],
                marker="o",
                capsize=3,
                label=f"round {r}",
            )
        ax.set_title(f"{task} (n={tp[0].n})")
        ax.set_xlabel("training step (0 = base model)")
        ax.set_ylabel(tp[0].metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    fig.suptitle("Refinement by training step (PTR run)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
