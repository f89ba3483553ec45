"""Evaluation tasks: which items, the zero-shot prompt each model sees, and the metric.

Items come from :mod:`ptr_ray.data.benchmarks` (the packaged sets that decontamination also
reads) or from a user's own JSONL file. The prompt is round 1's query; later rounds add only
the refine instruction (:mod:`ptr_ray.prompts`), so every method sees the same conversation.

Multiple-choice prompts list the options with letters and ask for "The answer is" and the
letter *first*:
small models otherwise spend their token budget on an explanation and are cut off before
they ever name a letter (docs/environment.md measured 57/60 such replies at 64 tokens).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ptr_ray.config import EvalConfig, EvalTaskConfig
from ptr_ray.data import benchmarks
from ptr_ray.data.benchmarks import LETTERS, BenchmarkItem
from ptr_ray.errors import PtrRayValueError

log = logging.getLogger(__name__)

# No literal placeholder ("The answer is X"): SmolLM2-135M copies it verbatim.
MC_INSTRUCTION = (
    'Begin your reply with "The answer is" followed by the letter of the correct option '
    "({letters}), then explain briefly."
)
MATH_INSTRUCTION = (
    'Solve the problem step by step. End with a last line "The answer is" followed by the '
    "final number."
)
LATEX_INSTRUCTION = "Solve the problem step by step. Put the final answer in \\boxed{}."

# task name -> metric kind of the packaged tasks
PACKAGED_KINDS: dict[str, str] = {
    "gsm8k": "math",
    "math500": "math",
    "mmlu": "multiple_choice",
    "arc_challenge": "multiple_choice",
    "arc_easy": "multiple_choice",
    "commonsense_qa": "multiple_choice",
    "winogrande": "multiple_choice",
    "gpqa": "multiple_choice",
    "humaneval": "code",
    "arith": "math",  # synthetic (ptr_ray.data.synthetic): integer gold, the numeric math path
}

# config metric name -> metric kind
CUSTOM_KINDS = {
    "multiple_choice": "multiple_choice",
    "math": "math",
    "exact": "exact",
    "similarity": "similarity",
}


class TaskError(PtrRayValueError):
    """An eval task that cannot be used (unknown name, unreadable file, name clash)."""


def mc_instruction(n: int) -> str:
    """The answer-first instruction naming the valid letters ("A, B, C or D")."""
    letters = list(LETTERS[: max(1, n)])
    named = letters[0] if len(letters) == 1 else ", ".join(letters[:-1]) + " or " + letters[-1]
    return MC_INSTRUCTION.format(letters=named)


def format_options(choices: list[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))


@dataclass
class EvalTask:
    """One task: its items, how to ask, and how to score."""

    name: str
    kind: str  # multiple_choice | math | code | exact | similarity
    items: list[BenchmarkItem]
    template: str | None = None  # custom tasks: format string with {question} and {options}
    max_tokens: int | None = None
    skipped: dict[str, int] = field(default_factory=dict)  # malformed rows, by reason
    source: str = "packaged"

    @property
    def display_name(self) -> str:
        """The name to show a reader: a synthetic task says it is one."""
        return benchmarks.display_name(self.name)

    def prompt(self, item: BenchmarkItem) -> str:
        """The zero-shot round-1 query for ``item``."""
        options = format_options(item.choices) if item.choices else ""
        if self.template:
            return self.template.format(question=item.question, options=options)
        if self.kind == "multiple_choice":
            return f"{item.question}\n\n{options}\n\n{mc_instruction(len(item.choices or []))}"
        if self.kind == "math":
            instr = LATEX_INSTRUCTION if self.name == "math500" else MATH_INSTRUCTION
            return f"{item.question}\n\n{instr}"
        return item.question  # code (the item asks for a code block) and free text

    def metric_names(self, math_metric: str = "exact") -> list[str]:
        """Metric names, the headline metric first."""
        from ptr_ray.eval.metrics import METRICS

        names = list(METRICS[self.kind])
        if self.kind == "math" and math_metric in names:
            names.remove(math_metric)
            names.insert(0, math_metric)
        return names


def known_tasks(cfg: EvalConfig) -> list[str]:
    return sorted(set(benchmarks.task_names()) | {t.name for t in cfg.custom_tasks})


def check_tasks(cfg: EvalConfig) -> None:
    """Fail with one line on an unknown task, a duplicate, or a custom task's missing file."""
    if not cfg.tasks and not cfg.custom_tasks:
        raise TaskError("no tasks to evaluate: set tasks or custom_tasks")
    custom = {t.name for t in cfg.custom_tasks}
    for name in cfg.tasks:
        if name not in benchmarks.TASKS and name not in custom:
            raise TaskError(f"unknown eval task {name!r}; known: {', '.join(known_tasks(cfg))}")
        if name not in custom and name not in PACKAGED_KINDS:
            raise TaskError(f"packaged task {name!r} has no metric in ptr_ray.eval.tasks yet")
    names = task_order(cfg)
    if len(set(names)) != len(names):
        raise TaskError(f"task listed twice in {names}")
    for t in cfg.custom_tasks:
        if t.name in benchmarks.TASKS:
            raise TaskError(f"custom task {t.name!r} clashes with a packaged task; rename it")
        if not Path(t.path).expanduser().is_file():
            raise TaskError(f"custom task {t.name!r}: file {t.path} not found")
        if t.metric == "multiple_choice" and not t.choices_field:
            raise TaskError(f"custom task {t.name!r}: metric multiple_choice needs choices_field")
        if t.prompt_template is not None and "{question}" not in t.prompt_template:
            raise TaskError(f"custom task {t.name!r}: prompt_template must contain {{question}}")


def task_order(cfg: EvalConfig) -> list[str]:
    """Packaged tasks in the order given, then custom tasks not already listed."""
    return list(cfg.tasks) + [t.name for t in cfg.custom_tasks if t.name not in cfg.tasks]


def _custom(tc: EvalTaskConfig, cfg: EvalConfig) -> EvalTask:
    items, skipped = benchmarks.load_jsonl(
        tc.path, tc.name, tc.question_field, tc.answer_field, tc.choices_field, tc.id_field
    )
    if skipped:
        log.warning(
            "task %s: skipped %d malformed rows of %s: %s",
            tc.name,
            sum(skipped.values()),
            tc.path,
            ", ".join(f"{k} ({v})" for k, v in skipped.items()),
        )
    items = benchmarks.sample_items(items, cfg.limit, cfg.seed)
    return EvalTask(
        tc.name,
        CUSTOM_KINDS[tc.metric],
        items,
        tc.prompt_template,
        tc.max_tokens,
        skipped,
        source=str(tc.path),
    )


def load_tasks(cfg: EvalConfig) -> list[EvalTask]:
    """Every task of the config, with its items sampled (``limit``, ``seed``)."""
    check_tasks(cfg)
    custom = {t.name: t for t in cfg.custom_tasks}
    out = []
    for name in task_order(cfg):
        if name in custom:
            out.append(_custom(custom[name], cfg))
        else:
            out.append(packaged_task(name, cfg.limit, cfg.seed))
    return out


def packaged_task(name: str, limit: int | None = None, seed: int | None = None) -> EvalTask:
    """A packaged benchmark as a task: its items (sampled), its prompt and its metric kind."""
    items = benchmarks.load_task(name, limit, seed)  # an unknown name fails here, listing all
    if name not in PACKAGED_KINDS:
        raise TaskError(f"packaged task {name!r} has no metric in ptr_ray.eval.tasks yet")
    source = "synthetic" if name in benchmarks.SYNTHETIC_TASKS else "packaged"
    return EvalTask(name, PACKAGED_KINDS[name], items, source=source)
