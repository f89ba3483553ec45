"""The experiment's files: report.md, accuracy_by_round.png, items.csv, hypotheses.json, config.yaml.

``report.md`` is ordered the way a pre-registered study is read: the protocol first (the
hypotheses, their tests and what each verdict means, as fixed in the config before any
number), then the per-round results with sample sizes and intervals, then the hypothesis
table, then the prompt-robustness section (the paper's Table 2: one part per refine
instruction), then what in the run is synthetic.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptr_ray.errors import PtrRayValueError
from ptr_ray.eval.report import EvalReport, SummaryRow, plot_accuracy
from ptr_ray.experiment.analysis import SEMANTICS, VerdictRow, headline_rows
from ptr_ray.fsutil import atomic_write

if TYPE_CHECKING:
    from ptr_ray.config import ExperimentConfig

ANSWER_CHARS = 500  # answers are cut to this many characters in items.csv


@dataclass
class InstructionRun:
    """One refine instruction's evaluation and its hypothesis rows.

    The first run (index 0) is the primary instruction: its rows are the tested family and
    carry the verdicts. The others are descriptive (prompt robustness) and have no rows.
    """

    index: int
    instruction: str
    report: EvalReport
    rows: list[VerdictRow] = field(default_factory=list)

    @property
    def primary(self) -> bool:
        return self.index == 0


def _num(x: float | None, fmt: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return format(x, fmt)


def _p(x: float | None) -> str:
    return _num(x, ".4g")


def _effect(r: VerdictRow) -> str:
    if math.isnan(r.effect):
        return "—"
    return f"{r.effect:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(cells) + " |" for cells in rows]
    return out


def task_label(task: str, synthetic: set[str]) -> str:
    """A task's name as every table prints it: synthetic tasks say so."""
    return f"{task} (synthetic)" if task in synthetic else task


def _continuous_test_text(cfg: ExperimentConfig) -> str:
    if cfg.continuous_test == "bootstrap":
        return (
            f"paired bootstrap of the mean difference ({cfg.n_boot} resamples of the items, "
            f"seed {cfg.seed}; one-sided p = (1 + #{{resampled mean <= 0}}) / (1 + {cfg.n_boot}))"
        )
    return (
        "sign-flip permutation test of the mean paired difference (exact when "
        f"2^n <= {cfg.n_boot}, else {cfg.n_boot} random sign patterns with the +1 correction)"
    )


def protocol_section(cfg: ExperimentConfig) -> list[str]:
    """The hypotheses and how they are decided, straight from the config."""
    rows = []
    for h in cfg.hypotheses:
        tasks = h.task if isinstance(h.task, str) else ", ".join(h.task)
        a, b = f"{h.a.method} r{h.a.round}", f"{h.b.method} r{h.b.round}"
        rows.append([h.id, h.statement, a, b, h.relation, tasks, h.metric or "headline"])
    out = [
        "## Protocol",
        "",
        "Fixed in the config before any result was computed (`config.yaml` beside this file).",
        "",
        *_table(["id", "statement", "A", "B", "relation", "tasks", "metric"], rows),
        "",
        "Relations:",
        "",
    ]
    out += [f"- `{rel}`: {text}" for rel, text in SEMANTICS.items()]
    n_tests = "every (hypothesis, task) test"
    correction = (
        f"Holm-Bonferroni over {n_tests} of the primary instruction"
        if cfg.correction == "holm"
        else "none (raw p-values decide)"
    )
    out += [
        "",
        f"alpha = {cfg.alpha}; multiplicity correction: {correction}.",
        "Items are paired by id between A and B (same items, same task). Binary metrics: "
        "exact McNemar test on the discordant pairs; effect = difference in proportions "
        "A - B with Newcombe's paired 95% interval. Continuous metrics (similarity): "
        f"{_continuous_test_text(cfg)}; effect = mean A - B with a percentile bootstrap 95% "
        "interval; Wilcoxon signed-rank (zero_method zsplit) as a secondary check. The "
        "effect is always A - B, whichever direction is tested.",
        f'Verdicts use the primary refine instruction: "{cfg.refine_instructions[0]}". The '
        "other instructions are descriptive only (no tests). Round 1 is the plain query; "
        "round k follows k-1 refine instructions.",
        "",
    ]
    return out


def _cell(s: SummaryRow) -> str:
    return f"{s.accuracy:.3f} [{s.ci_low:.2f}, {s.ci_high:.2f}]"


def rounds_section(report: EvalReport, synthetic: set[str]) -> list[str]:
    """Per task: one row per method, the headline metric by round with n and a 95% interval."""
    summary = headline_rows(report)
    out: list[str] = []
    for task in report.tasks:
        rows = [s for s in summary if s.task == task]
        if not rows:
            continue
        head = ["method", "n"] + [f"round {k}" for k in range(1, report.rounds + 1)]
        cells = []
        for method in report.methods:
            mr = sorted((s for s in rows if s.method == method), key=lambda s: s.round)
            if mr:
                cells.append([method, str(mr[0].n)] + [_cell(s) for s in mr])
        title = f"### {task_label(task, synthetic)}: {rows[0].metric}"
        out += [title, "", *_table(head, cells), ""]
    return out


def hypothesis_table(rows: list[VerdictRow], synthetic: set[str]) -> list[str]:
    head = ["hyp.", "task", "metric", "A vs B", "n", "mean A", "mean B", "test", "statistic"]
    head += ["p raw", "p adj.", "effect A−B [95% CI]", "discordant A/B", "secondary", "verdict"]
    cells = []
    for r in rows:
        disc = f"{r.discordant_a}/{r.discordant_b}" if r.discordant_a is not None else "—"
        stat = _num(r.statistic, ".0f" if r.kind == "binary" else "+.4f")
        n = str(r.n) + (f" (+{r.unpaired} unpaired)" if r.unpaired else "")
        cells.append(
            [r.hypothesis, task_label(r.task, synthetic), f"{r.metric} ({r.kind})"]
            + [f"{r.a} vs {r.b}", n, _num(r.mean_a), _num(r.mean_b), r.test, stat]
            + [_p(r.p_raw), _p(r.p_adj), _effect(r), disc, r.secondary or "—", f"**{r.verdict}**"]
        )
    return _table(head, cells)


def robustness_section(runs: list[InstructionRun], synthetic: set[str]) -> list[str]:
    """The paper's Table 2: every refine instruction's headline metric by round (descriptive)."""
    out = [
        "## Prompt robustness (refine instructions)",
        "",
        "Descriptive only: no tests. Round 1 does not depend on the instruction; rounds 2+ do. "
        "Cells: mean [95% interval].",
        "",
    ]
    for run in runs:
        R = run.report.rounds
        head = ["method", "task", "n"] + [f"r{k}" for k in range(1, R + 1)]
        head += [f"Δ r{R}−r1"] if R > 1 else []
        cells = []
        for res in run.report.results:
            mr = [s for s in res.summary() if s.metric == res.metrics[0]]
            row = [res.method, task_label(res.task, synthetic), str(mr[0].n if mr else 0)]
            row += [_cell(s) for s in mr]
            if R > 1 and mr:
                row.append(f"{mr[-1].accuracy - mr[0].accuracy:+.3f}")
            cells.append(row)
        label = " (primary)" if run.primary else ""
        out += [f"### Instruction {run.index + 1}{label}", "", f"> {run.instruction}", ""]
        out += [*_table(head, cells), ""]
    return out


def markdown(cfg: ExperimentConfig, runs: list[InstructionRun], notes: list[str]) -> str:
    primary = runs[0]
    models = {r.method: r.model for r in primary.report.results}
    out = [
        "# PTR experiment: Prompt baseline vs IFT vs PTR, round by round",
        "",
        f"Base model `{cfg.base_model}`; methods: "
        + "; ".join(f"`{m}` = `{src}`" for m, src in models.items())
        + ".",
        "",
    ]
    out += protocol_section(cfg)
    if names := sorted(cfg.synthetic):
        out += [f"Synthetic tasks (labelled in every table): {', '.join(names)}.", ""]
    out += [
        "## Results by round",
        "",
        "Headline metric per task; mean with its 95% interval (Wilson for 0/1 metrics, "
        "normal for continuous ones); n = items. Plot: `accuracy_by_round.png`.",
        "",
    ]
    synthetic = cfg.synthetic
    out += rounds_section(primary.report, synthetic)
    out += ["## Hypotheses", "", *hypothesis_table(primary.rows, synthetic), ""]
    counts: dict[str, int] = {}
    for r in primary.rows:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
    out += ["Verdicts: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + ".", ""]
    out += robustness_section(runs, synthetic)
    out += ["## What is synthetic", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)


def _jsonable(row: VerdictRow, instruction: int) -> dict[str, Any]:
    d = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(row).items()}
    return {"instruction": instruction, **d}


def write_items_csv(runs: list[InstructionRun], path: Path) -> Path:
    """Every item, method, round and instruction with its metric values and (cut) answer."""
    metrics = list(dict.fromkeys(m for run in runs for r in run.report.results for m in r.metrics))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "instruction",
                "method",
                "task",
                "item_id",
                "round",
                *metrics,
                "extracted",
                "finish_reason",
                "carried",
                "answer",
            ]
        )
        for run in runs:
            for res in run.report.results:
                for it in res.items:
                    for r in it.rounds:
                        w.writerow(
                            [
                                run.index + 1,
                                res.method,
                                res.task,
                                it.id,
                                r.round,
                                *[r.values.get(m, "") for m in metrics],
                                r.extracted,
                                r.finish_reason,
                                r.carried,
                                r.answer[:ANSWER_CHARS],
                            ]
                        )
    tmp.replace(path)
    return path


def write_experiment_report(
    cfg: ExperimentConfig,
    runs: list[InstructionRun],
    out_dir: str | Path,
    notes: list[str] | None = None,
    plot: bool = True,
) -> dict[str, Path]:
    """Write every file of the experiment's report; returns their paths by kind."""
    from ptr_ray.config import dump_config

    if not runs:
        raise PtrRayValueError(
            "no evaluation runs to report: runs is empty (one run per entry of refine_instructions)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out / "report.md",
        "items_csv": out / "items.csv",
        "hypotheses": out / "hypotheses.json",
        "config": out / "config.yaml",
    }
    dump_config(cfg, paths["config"])
    atomic_write(paths["markdown"], markdown(cfg, runs, list(notes or [])))
    write_items_csv(runs, paths["items_csv"])
    rows = [_jsonable(r, run.index + 1) for run in runs for r in run.rows]
    atomic_write(paths["hypotheses"], json.dumps(rows, indent=1, ensure_ascii=False))
    if plot and runs[0].report.results:
        paths["plot"] = plot_accuracy(runs[0].report, out / "accuracy_by_round.png")
    return paths
