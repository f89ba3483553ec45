"""Evaluation results: per-item answers per round, per-round accuracy with intervals, and the
files a person reads (JSON, CSV, a Markdown table, the accuracy-by-round plot: the paper's
Figure 3).

At 20-60 items one item moves accuracy by several points, so every accuracy carries its
sample size and a 95% interval (:mod:`ptr_ray.eval.stats`: Wilson for binary metrics, a normal
interval for similarity).
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ptr_ray.eval.stats import mean_ci, wilson
from ptr_ray.fsutil import atomic_write, write_json_atomic


@dataclass
class ItemRound:
    """One item's answer in one round, and its score."""

    round: int
    answer: str
    extracted: str | None
    values: dict[str, float]
    tokens: int
    finish_reason: str
    prompt_tokens: int = 0
    cached_tokens: int = 0
    carried: bool = False  # stop_when_stable: the item had stopped; its last answer carried on
    detail: str = ""


@dataclass
class ItemResult:
    id: str
    gold: str
    prompt: str
    rounds: list[ItemRound] = field(default_factory=list)


@dataclass
class SummaryRow:
    method: str
    model: str
    task: str
    metric: str
    round: int
    n: int
    correct: float
    accuracy: float
    ci_low: float
    ci_high: float
    truncated: int  # replies cut by max_tokens (finish_reason == "length")
    mean_tokens: float
    cached_frac: float  # prompt tokens served from the prefix cache
    gen_s: float


@dataclass
class TaskResult:
    """One method on one task over all rounds (the unit of resumption)."""

    method: str
    model: str
    task: str
    kind: str
    metrics: list[str]  # headline first
    rounds: int
    items: list[ItemResult]
    fingerprint: str = ""
    round_seconds: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    skipped_rows: dict[str, int] = field(default_factory=dict)

    def summary(self) -> list[SummaryRow]:
        rows = []
        for k in range(1, self.rounds + 1):
            its = [it.rounds[k - 1] for it in self.items if len(it.rounds) >= k]
            n = len(its)
            prompt_tok = sum(r.prompt_tokens for r in its if not r.carried)
            cached = sum(r.cached_tokens for r in its if not r.carried)
            gen = [r for r in its if not r.carried]
            for metric in self.metrics:
                vals = [float(r.values.get(metric, 0.0)) for r in its]
                binary = all(v in (0.0, 1.0) for v in vals)
                acc = sum(vals) / n if n else 0.0
                lo, hi = wilson(sum(vals), n) if binary else mean_ci(vals)
                rows.append(
                    SummaryRow(
                        self.method,
                        self.model,
                        self.task,
                        metric,
                        k,
                        n,
                        sum(vals),
                        acc,
                        lo,
                        hi,
                        sum(r.finish_reason == "length" for r in gen),
                        (sum(r.tokens for r in gen) / len(gen)) if gen else 0.0,
                        (cached / prompt_tok) if prompt_tok else 0.0,
                        self.round_seconds[k - 1] if k <= len(self.round_seconds) else 0.0,
                    )
                )
        return rows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskResult:
        items = [
            ItemResult(i["id"], i["gold"], i["prompt"], [ItemRound(**r) for r in i["rounds"]])
            for i in d["items"]
        ]
        return cls(**{**d, "items": items})


@dataclass
class EvalReport:
    """Every (method, task) result of one evaluation, in config order."""

    results: list[TaskResult]
    rounds: int
    config: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    reused: int = 0  # (method, task) results taken from an earlier run (resume)

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(r.method for r in self.results))

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(r.task for r in self.results))

    def summary(self) -> list[SummaryRow]:
        return [row for r in self.results for row in r.summary()]

    def accuracy(self, method: str, task: str, metric: str | None = None) -> list[float]:
        """Headline (or named) metric of one method on one task, round by round."""
        for r in self.results:
            if r.method == method and r.task == task:
                m = metric or r.metrics[0]
                return [row.accuracy for row in r.summary() if row.metric == m]
        raise KeyError((method, task))

    def to_dict(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "wall_s": self.wall_s,
            "reused": self.reused,
            "config": self.config,
            "summary": [asdict(s) for s in self.summary()],
            "results": [r.to_dict() for r in self.results],
        }


# ------------------------------------------------------------------------------- writers


def markdown_table(report: EvalReport) -> str:
    """Round-by-round table: one row per method, task and metric (headline metric first)."""
    R = report.rounds
    head = ["method", "task", "metric", "n"] + [f"round {k}" for k in range(1, R + 1)]
    head += [f"Δ r{R}−r1"] if R > 1 else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in report.results:
        rows = res.summary()
        for metric in res.metrics:
            mr = [r for r in rows if r.metric == metric]
            cells = [res.method, res.task, metric, str(mr[0].n if mr else 0)]
            cells += [f"{r.accuracy:.3f} [{r.ci_low:.2f}, {r.ci_high:.2f}]" for r in mr]
            if R > 1 and mr:
                cells.append(f"{mr[-1].accuracy - mr[0].accuracy:+.3f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def generation_table(report: EvalReport) -> str:
    """Per-round generation statistics: length cut-offs, tokens, prefix-cache hits, time."""
    head = ["method", "task", "round", "mean tokens", "cut at max_tokens", "cached prompt", "time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in report.results:
        for r in res.summary():
            if r.metric != res.metrics[0]:
                continue
            lines.append(
                f"| {r.method} | {r.task} | {r.round} | {r.mean_tokens:.0f} | "
                f"{r.truncated}/{r.n} | {100 * r.cached_frac:.0f}% | {r.gen_s:.1f}s |"
            )
    return "\n".join(lines)


def markdown_report(report: EvalReport) -> str:
    models = {r.method: r.model for r in report.results}
    parts = [
        "# Accuracy by refinement round",
        "",
        f"{report.rounds} rounds; accuracy with its 95% interval (Wilson for 0/1 metrics); "
        "n items per task. Round k answers after k−1 refine instructions.",
        "",
        "Methods: " + "; ".join(f"`{m}` = `{src}`" for m, src in models.items()),
        "",
        markdown_table(report),
        "",
        "## Generation",
        "",
        generation_table(report),
        "",
        f"Wall time: {report.wall_s:.0f}s"
        + (
            f" ({report.reused} of {len(report.results)} method/task results reused from an "
            "earlier run; their per-round times above are from that run)."
            if report.reused
            else "."
        ),
        "",
    ]
    return "\n".join(parts)


def plot_accuracy(report: EvalReport, path: Path) -> Path:
    """Accuracy by round, one panel per task, one line per method, 95% intervals as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = report.tasks
    ncols = min(3, max(1, len(tasks)))
    nrows = math.ceil(len(tasks) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    xs = list(range(1, report.rounds + 1))
    for ax, task in zip(axes.flat, tasks, strict=False):
        metric_label = ""
        for i, res in enumerate(r for r in report.results if r.task == task):
            rows = [s for s in res.summary() if s.metric == res.metrics[0]]
            metric_label = res.metrics[0]
            acc = [s.accuracy for s in rows]
            err = [
                [max(0.0, s.accuracy - s.ci_low) for s in rows],
                [max(0.0, s.ci_high - s.accuracy) for s in rows],
            ]
            ax.errorbar(
                [x + 0.04 * (i - 1) for x in xs[: len(acc)]],
                acc,
                yerr=err,
                marker="o",
                capsize=3,
                label=res.method,
            )
        n = next((r.summary()[0].n for r in report.results if r.task == task), 0)
        ax.set_title(f"{task} (n={n})")
        ax.set_xlabel("round")
        ax.set_ylabel(metric_label)
        ax.set_xticks(xs)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    fig.suptitle("Accuracy by refinement round")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def write_report(report: EvalReport, out_dir: str | Path, plot: bool = True) -> dict[str, Path]:
    """Write results.json, summary.csv, items.csv, report.md and accuracy_by_round.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "results.json",
        "summary_csv": out / "summary.csv",
        "items_csv": out / "items.csv",
        "markdown": out / "report.md",
    }
    write_json_atomic(paths["json"], report.to_dict(), indent=1)
    summary = report.summary()
    fields = list(SummaryRow.__dataclass_fields__)
    with open(paths["summary_csv"], "w", newline="", encoding="utf-8") as f:
        dw = csv.DictWriter(f, fieldnames=fields)
        dw.writeheader()
        for s in summary:
            dw.writerow(asdict(s))
    with open(paths["items_csv"], "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        metric_cols = list(dict.fromkeys(m for r in report.results for m in r.metrics))
        w.writerow(
            [
                "method",
                "task",
                "item_id",
                "round",
                "gold",
                "extracted",
                *metric_cols,
                "tokens",
                "finish_reason",
                "carried",
                "answer",
            ]
        )
        for res in report.results:
            for it in res.items:
                for r in it.rounds:
                    w.writerow(
                        [
                            res.method,
                            res.task,
                            it.id,
                            r.round,
                            it.gold[:200],
                            r.extracted,
                            *[r.values.get(m, "") for m in metric_cols],
                            r.tokens,
                            r.finish_reason,
                            r.carried,
                            r.answer,
                        ]
                    )
    atomic_write(paths["markdown"], markdown_report(report))
    if plot and report.results:
        paths["plot"] = plot_accuracy(report, out / "accuracy_by_round.png")
    return paths
